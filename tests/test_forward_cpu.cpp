// The cpu backend against the reference: every named variant, every mask,
// the forward_cases.hpp shapes.
#include <catch2/catch_template_test_macros.hpp>

#include <attnsink/cpu.hpp>

#include "forward_cases.hpp"

using namespace attnsink;

TEMPLATE_LIST_TEST_CASE("cpu forward matches the reference", "[forward][cpu]", variants::all) {
  test::run_forward_cases<TestType>(backend::cpu{});
}

TEST_CASE("cpu forward with small tiles matches the reference", "[forward][cpu]") {
  // Tiles smaller than the problem in both directions, so partial tiles,
  // skipped tiles and several key tiles per row are all exercised.
  const backend::cpu small{8, 16};
  for (std::size_t t : {5u, 37u, 100u}) {
    const test::operands p(2, 4, 2, t, t, 12, 12, 900 + t);
    for (const auto& m : test::masks_for(t)) {
      INFO("tokens " << t << " mask kind " << int(m.which) << ":" << m.param);
      test::expect_matches_reference(small, attention<score::scaled_dot, norm::softmax, bias::alibi, pos::nope, mask::dynamic>{{}, {}, {}, {}, m}, p);
      test::expect_matches_reference(small, attention<score::scaled_dot, norm::sigmoid, bias::none, pos::rope, mask::dynamic>{{}, {}, {}, {}, m}, p);
    }
  }
}

TEST_CASE("cpu forward with query tiles grouped over key spans matches the reference and the ungrouped tiles",
          "[forward][cpu]") {
  // tile_group query tiles per task, run side by side over spans of
  // group_keys keys. Automatic only when the keys and values a row sees, on
  // average, fill L2, so never at test sizes: forced here, with spans of one and of three
  // key tiles and groups that leave a partial group. The key chunks do not
  // move, so the output is the one-tile-per-task output bit for bit.
  for (std::size_t t : {37u, 100u, 130u}) {
    const test::operands p(2, 4, 2, t, t, 32, 32, 3100 + t);
    const test::variant_params vp({2, 4, 2, t, t, 32, 32}, 3100 + t);
    for (const auto& m : test::masks_for(t))
      for (std::size_t keys : {16u, 48u}) {
        INFO("tokens " << t << " mask kind " << int(m.which) << ":" << m.param << " group keys " << keys);
        const backend::cpu one{16, 16};
        backend::cpu grouped = one;
        grouped.tile_group = 3;
        grouped.group_keys = keys;
        variants::settings st = vp.settings();
        st.mask = m;
        const auto check = [&](const auto& a) {
          test::expect_matches_reference(grouped, a, p);
          test::result<float> x(p), y(p);
          forward(one, a, p.Q<float>(), p.K<float>(), p.V<float>(), x.O(p), x.stats());
          forward(grouped, a, p.Q<float>(), p.K<float>(), p.V<float>(), y.O(p), y.stats());
          CHECK(x.out == y.out);
          CHECK(x.m == y.m);
          CHECK(x.l == y.l);
        };
        check(variants::make<variants::softmax>(st));
        check(variants::make<variants::sigmoid>(st));
        check(variants::make<variants::alibi>(st));
        check(variants::make<variants::kv_bias>(st));
        check(variants::make<variants::sink_logit>(st));
      }
  }
}

TEST_CASE("cpu forward sigmoid with saturating scores matches the reference", "[forward][cpu]") {
  // Scores of a few tens (q, k scaled by 6): the vectorized sigmoid's clamps of
  // e^{-(s+b)} (far below 2^-150 and above 2^115) are taken on many lanes.
  for (std::size_t t : {37u, 200u}) {
    const test::operands p(1, 4, 2, t, t, 64, 64, 1300 + t, 6.0);
    for (const auto& m : test::masks_for(t)) {
      INFO("tokens " << t << " mask kind " << int(m.which) << ":" << m.param);
      for (double bias : {-1.5, 0.0, 40.0}) {
        attention<score::scaled_dot, norm::sigmoid, bias::none, pos::nope, mask::dynamic> a{{}, {}, {}, {}, m};
        a.norm.bias = bias;
        test::expect_matches_reference(backend::cpu{}, a, p);
      }
    }
  }
}

TEST_CASE("cpu forward decode (one query, grouped heads) matches the reference", "[forward][cpu]") {
  // The row-major kernel with feature dims a multiple of the vector width:
  // 4 keys × 4 rows per dot-product block, and key counts that leave 1 to 3
  // keys over for the one-key path; several key tiles per row. d = 112 (on
  // AVX-512: 64 + 32 + 16) takes every feature-block width of P·V.
  for (std::size_t tk : {203u, 1001u, 1026u})
    for (std::size_t d : {64u, 112u, 128u}) {
      const test::operands p(2, 8, 2, 1, tk, d, d, 2000 + tk + d);
      const test::variant_params vp({2, 8, 2, 1, tk, d, d}, 2000 + tk + d);
      for (const auto& m : test::masks_for(tk)) {
        INFO("tk " << tk << " d " << d << " mask kind " << int(m.which) << ":" << m.param);
        variants::settings st = vp.settings();
        st.mask = m;
        st.rope.enabled = false;
        test::expect_matches_reference(backend::cpu{}, variants::make<variants::softmax>(st), p);
        test::expect_matches_reference(backend::cpu{}, variants::make<variants::sink_logit>(st), p);
        test::expect_matches_reference(backend::cpu{}, variants::make<variants::kv_bias>(st), p);
        test::expect_matches_reference(backend::cpu{}, variants::make<variants::sigmoid>(st), p);
      }
    }
}

TEMPLATE_LIST_TEST_CASE("cpu forward decode with each tile's keys split into parts matches the reference",
                        "[forward][cpu]", variants::all) {
  // backend::cpu::key_splits: decode tiles (fewer rows than a SIMD vector
  // even at 4 lanes) whose keys are cut into parts of whole key tiles, run as
  // separate tasks and merged. Automatic only when tiles are fewer than twice
  // the threads and there are at least 2048 keys, so forced here: parts of
  // one to several key tiles, a last part shorter than the rest, parts
  // beyond a row's keys (causal, window), the bias key in the first part.
  const std::vector<test::shape> shapes{{2, 2, 1, 1, 203, 64, 48}, {1, 3, 3, 3, 100, 17, 17}};
  test::for_each_case(shapes, 5200, [](const auto&, const auto&, bool) { return false; },
                      [](const auto& s, const auto& m, bool rope, const auto& p, const auto&, const auto& st, auto) {
                        for (std::size_t parts : {2u, 5u}) {
                          INFO(test::describe(s, m, rope) << " parts " << parts);
                          backend::cpu be{};
                          be.key_tile = 16;
                          be.key_splits = parts;
                          test::expect_matches_reference(be, variants::make<TestType>(st), p);
                        }
                      });
}
