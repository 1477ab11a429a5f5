// The Kokkos backward (float) against the reference backward (double) on
// Kokkos' default execution space — the checks of test_backward_cpu.cpp:
// every named variant, every mask, RoPE off/on, GQA, tokens = 1, fully masked
// rows, small tiles, learnable parameters (sink logits, k*, v*, a T5 table, a
// bias tensor, MLP feature-map weights), and bit-identical gradients whatever
// the tiles and team sizes. Shapes are fewer than the cpu test's (the
// Trilinos Serial build runs them on one core); tokens 257 and 1000 run
// for a few variants only.
#include <cstring>
#include <tuple>

#include <catch2/catch_template_test_macros.hpp>

#include <attnsink/kokkos.hpp>
#include <attnsink/backend/kokkos_backward.hpp>

#include "test_backward_common.hpp"
#include "test_kokkos_main.hpp"

using namespace attnsink;
using test::expect_backward_matches;
using test::grads;
using test::round_params;
using space = Kokkos::DefaultExecutionSpace;
using kokkos_be = backend::kokkos<space>;

namespace {

// tokens ∈ {1, 5, 64, 300 keys}, head_dim ∈ {4, 17, 64}, value dims ≠ head dims, GQA ratios 1..3.
const std::vector<test::shape>& kokkos_shapes() {
  static const std::vector<test::shape> s = {
      {2, 4, 2, 1, 1, 17, 17}, {2, 4, 2, 5, 5, 4, 3}, {1, 6, 2, 64, 64, 17, 33}, {1, 4, 2, 7, 300, 64, 48},
  };
  return s;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("kokkos backward matches the reference backward", "[backward][kokkos]", variants::all) {
  std::uint64_t seed = 19000;
  for (const test::shape& s : kokkos_shapes())
    for (const mask::dynamic& m : test::masks_for(s.tk))
      for (int rope = 0; rope < 2; ++rope) {
        if (rope && s.dim % 2) continue;
        ++seed;
        const test::operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, seed);
        test::variant_params vp(s, seed);
        variants::settings st = vp.settings();
        st.mask = m;
        st.rope.enabled = rope != 0;
        const auto a = variants::make<TestType>(st);
        const auto slots = test::variant_slots(vp, a);
        round_params(slots);
        INFO(TestType::name << " " << test::describe(s, m, rope));
        expect_backward_matches(kokkos_be{}, a, p, slots, seed);
      }
}

TEST_CASE("kokkos backward at tokens 257 and 1000, head_dim 80 and 128", "[backward][kokkos]") {
  const test::shape s{1, 3, 1, 257, 257, 80, 80};
  const test::operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, 19500);
  test::variant_params vp(s, 19500);
  variants::settings st = vp.settings();
  st.rope.enabled = true;
  const auto a = variants::make<variants::softmax>(st);
  expect_backward_matches(kokkos_be{}, a, p, {}, 19501);
  const auto b = variants::make<variants::sigmoid>(st);
  expect_backward_matches(kokkos_be{}, b, p, {}, 19502);
  const test::operands big(1, 2, 1, 1000, 1000, 128, 128, 19503);
  expect_backward_matches(kokkos_be{}, attention<score::scaled_dot, norm::softmax, bias::alibi, pos::rope>{}, big, {},
                          19504);
}

TEST_CASE("kokkos backward with small tiles, learnable biases and feature maps", "[backward][kokkos]") {
  // Tiles smaller than the problem both ways: partial, skipped and several tiles per row and per key.
  const kokkos_be small{space{}, 8, 8};
  for (std::size_t t : {5u, 37u}) {
    const test::operands p(2, 4, 2, t, t, 12, 12, 1700 + t);
    std::vector<double> table = test::round_to_float(test::random_vector(4 * 32, 1701 + t, 0.5));
    std::vector<double> B = test::round_to_float(test::random_vector(2 * 4 * t * t, 1702 + t));
    std::vector<double> w = test::round_to_float(test::random_vector(8 * 12 + 6 * 8, 1703 + t, 0.5));
    std::vector<double> sink = test::round_to_float(test::random_vector(4, 1704 + t));
    std::vector<double> ks = test::round_to_float(test::random_vector(2 * 12, 1705 + t));
    std::vector<double> vs = test::round_to_float(test::random_vector(2 * 12, 1706 + t));
    for (const auto& m : test::masks_for(t)) {
      INFO("tokens " << t << " mask kind " << int(m.which) << ":" << m.param);
      using t5_attn = attention<score::softcap<>, norm::softmax, bias::t5_relative, pos::rope, mask::dynamic>;
      t5_attn a1{{{}, 3.0}, {}, {32, 128, param_ref(table.data(), table.size())}, {}, m};
      expect_backward_matches(small, a1, p, {{"dt5", &table, &param_grads<double>::bias}}, t);
      using tensor_attn = attention<score::scaled_dot, norm::sigmoid, bias::tensor, pos::nope, mask::dynamic>;
      tensor_attn a2{{}, {{}, -1.0}, {param_ref(B.data(), B.size())}, {}, m};
      expect_backward_matches(small, a2, p, {{"dbias", &B, &param_grads<double>::bias}}, t + 1);
      using mlp_attn =
          attention<score::mlp_kernel, norm::normalized<fn::elu_plus_one>, bias::none, pos::rope, mask::dynamic>;
      mlp_attn a3{{param_ref(w.data(), 8 * 12), param_ref(w.data() + 8 * 12, 6 * 8), 8, 6, true}, {}, {}, {}, m};
      expect_backward_matches(small, a3, p, {{"dW1,dW2", &w, &param_grads<double>::score}}, t + 2);
      using sink_kv = attention<score::scaled_dot, norm::sink_logit, bias::kv_bias, pos::rope, mask::dynamic>;
      sink_kv a4{{}, {{}, param_ref(sink.data(), 4)}, {param_ref(ks.data(), ks.size()), param_ref(vs.data(), vs.size())}, {}, m};
      expect_backward_matches(small, a4, p,
                              {{"dsink", &sink, &param_grads<double>::sink},
                               {"dkstar", &ks, &param_grads<double>::kstar},
                               {"dvstar", &vs, &param_grads<double>::vstar}},
                              t + 3);
    }
  }
}

TEST_CASE("kokkos backward: document mask", "[backward][kokkos]") {
  const test::operands p(2, 2, 1, 50, 50, 16, 16, 1800);
  std::vector<std::int32_t> ids(100);
  for (std::size_t i = 0; i < 100; ++i) ids[i] = std::int32_t((i % 50) / 13 + (i / 50) * 10);
  const auto starts = mask::document_starts(ids.data(), 2, 50);
  attention<score::scaled_dot, norm::softpick, bias::alibi, pos::rope, mask::document> a{};
  a.mask.start = starts.data();
  expect_backward_matches(kokkos_be{space{}, 8, 16}, a, p, {}, 1801);
}

TEST_CASE("kokkos backward edge cases: fully masked rows, extreme logits, one token", "[backward][kokkos]") {
  SECTION("rows that see no key get zero gradient, and no NaN anywhere") {
    // More queries than keys under a causal mask: the first rows sit before every key.
    const test::operands p(1, 2, 1, 9, 5, 8, 8, 1810);
    using A = attention<score::scaled_dot, norm::softmax, bias::none, pos::rope, mask::causal>;
    expect_backward_matches(kokkos_be{space{}, 4, 4}, A{}, p, {}, 1811);
    std::vector<float> dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), dO(p.out_size(), 1.0f);
    test::poison(dq);
    test::poison(dk);
    test::poison(dv);
    backward(kokkos_be{}, A{}, p.Q<float>(), p.K<float>(), p.V<float>(), tensor4<const float>(dO.data(), 1, 2, 9, 8),
             gradients<float>{{dq.data(), 1, 2, 9, 8}, {dk.data(), 1, 1, 5, 8}, {dv.data(), 1, 1, 5, 8}});
    for (std::size_t h = 0; h < 2; ++h)
      for (std::size_t i = 0; i < 4; ++i)
        for (std::size_t e = 0; e < 8; ++e) CHECK(dq[(h * 9 + i) * 8 + e] == 0.0f);
    CHECK(test::all_finite(dq));
    CHECK(test::all_finite(dk));
    CHECK(test::all_finite(dv));
  }
  SECTION("extreme logits") {
    // Scores of several hundred: every row is nearly one-hot.
    const test::operands p(1, 4, 2, 40, 40, 32, 32, 1820, 6.0);
    std::vector<double> sink = {60.0, -60.0, 0.0, 25.0};
    using A = attention<score::scaled_dot, norm::sink_logit, bias::none, pos::nope, mask::causal>;
    const A a{{}, {{}, param_ref(sink.data(), 4)}};
    // float scores of ~300 carry ~1e-5 absolute error, which e^s turns into relative error (as the cpu test)
    expect_backward_matches(kokkos_be{}, a, p, {{"dsink", &sink, &param_grads<double>::sink}}, 1821, 2e-3);
    using C = attention<score::softcap<>, norm::softmax_off_by_one, bias::none, pos::nope, mask::none>;
    expect_backward_matches(kokkos_be{}, C{{{}, 30.0}}, p, {}, 1822, 2e-3);
  }
  SECTION("one token") {
    const test::operands p(3, 4, 1, 1, 1, 16, 8, 1830);
    expect_backward_matches(kokkos_be{}, attention<score::scaled_dot, norm::softmax, bias::none, pos::rope>{}, p, {},
                            1831);
  }
}

TEST_CASE("kokkos backward is bit-identical whatever the tiles and team sizes", "[backward][kokkos][determinism]") {
  const test::operands p(2, 4, 2, 150, 150, 32, 32, 1840);
  std::vector<double> sink = test::round_to_float(test::random_vector(4, 1841));
  std::vector<double> ks = test::round_to_float(test::random_vector(2 * 32, 1842));
  std::vector<double> vs = test::round_to_float(test::random_vector(2 * 32, 1843));
  std::vector<double> table = test::round_to_float(test::random_vector(4 * 32, 1844));
  const std::vector<test::param_slot> slots = {{"dsink", &sink, &param_grads<double>::sink},
                                               {"dkstar", &ks, &param_grads<double>::kstar},
                                               {"dvstar", &vs, &param_grads<double>::vstar}};
  using A = attention<score::scaled_dot, norm::sink_logit, bias::kv_bias, pos::rope, mask::causal>;
  const A a{{}, {{}, param_ref(sink.data(), 4)}, {param_ref(ks.data(), ks.size()), param_ref(vs.data(), vs.size())}};
  using B = attention<score::scaled_dot, norm::softmax, bias::t5_relative, pos::nope, mask::none>;
  const B bt{{}, {}, {32, 128, param_ref(table.data(), table.size())}};
  const std::vector<float> dO = test::cast<float>(test::random_vector(p.out_size(), 1845));
  const tensor4<const float> dout(dO.data(), 2, 4, 150, 32);
  auto run = [&](const kokkos_be& be, const auto& attn, const std::vector<test::param_slot>& sl) {
    grads<float> r(p, sl);
    backward(be, attn, p.Q<float>(), p.K<float>(), p.V<float>(), dout, r.g);
    return r;
  };
  auto same_bits = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  const auto r1 = run(kokkos_be{}, a, slots);
  const std::vector<test::param_slot> tslot = {{"dt5", &table, &param_grads<double>::bias}};
  const auto t1 = run(kokkos_be{}, bt, tslot);
  for (std::size_t rows : {1u, 32u, 64u})
    for (std::size_t tile : {8u, 24u}) {
      INFO("team_rows " << rows << ", key_tile " << tile);
      const kokkos_be be{space{}, rows, tile};
      const auto rn = run(be, a, slots);
      CHECK(same_bits(r1.dq, rn.dq));
      CHECK(same_bits(r1.dk, rn.dk));
      CHECK(same_bits(r1.dv, rn.dv));
      for (std::size_t i = 0; i < slots.size(); ++i) CHECK(same_bits(r1.params[i], rn.params[i]));
      const auto tn = run(be, bt, tslot);
      CHECK(same_bits(t1.params[0], tn.params[0]));
      CHECK(same_bits(t1.dq, tn.dq));
    }
}

TEST_CASE("kokkos backward with the forward's saved state equals the one that recomputes it", "[backward][kokkos]") {
  const test::operands p(1, 4, 2, 100, 100, 32, 32, 1850);
  using A = attention<score::scaled_dot, norm::softmax, bias::alibi, pos::rope, mask::causal>;
  const std::vector<float> dO = test::cast<float>(test::random_vector(p.out_size(), 1851));
  const tensor4<const float> dout(dO.data(), 1, 4, 100, 32);
  test::result<float> fwd(p);
  forward(kokkos_be{}, A{}, p.Q<float>(), p.K<float>(), p.V<float>(), fwd.O(p), fwd.stats());
  grads<float> with(p, {}), without(p, {});
  backward(kokkos_be{}, A{}, p.Q<float>(), p.K<float>(), p.V<float>(), dout, with.g,
           saved_forward<float>{tensor4<const float>(fwd.out.data(), 1, 4, 100, 32), fwd.m.data(), fwd.l.data()});
  backward(kokkos_be{}, A{}, p.Q<float>(), p.K<float>(), p.V<float>(), dout, without.g);
  CHECK(with.dq == without.dq);
  CHECK(with.dk == without.dk);
  CHECK(with.dv == without.dv);
}

TEST_CASE("kokkos backward_device runs on operands in the execution space's memory", "[backward][kokkos]") {
  using M = space::memory_space;
  const std::size_t B = 1, H = 4, Hk = 2, T = 70, d = 32;
  const test::operands p(B, H, Hk, T, T, d, d, 1860);
  std::vector<double> sink = test::round_to_float(test::random_vector(H, 1861));
  const std::vector<float> sinkf = test::cast<float>(sink);
  const std::vector<double> dO = test::round_to_float(test::random_vector(p.out_size(), 1862));
  const std::vector<float> dOf = test::cast<float>(dO);
  using host = Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  auto put = [&](const std::vector<float>& x) {
    Kokkos::View<float*, M> v("x", x.size());
    Kokkos::deep_copy(v, host(x.data(), x.size()));
    return v;
  };
  const auto q = put(p.qf), k = put(p.kf), v = put(p.vf), go = put(dOf), sd = put(sinkf);
  Kokkos::View<float*, M> dq("dq", q.size()), dk("dk", k.size()), dv("dv", v.size()), dsink("dsink", H);
  attention<score::scaled_dot, norm::sink_logit, bias::none, pos::rope, mask::causal> a;
  a.norm.logits = param_ref(sd.data(), H);
  gradients<float> g{{dq.data(), B, H, T, d}, {dk.data(), B, Hk, T, d}, {dv.data(), B, Hk, T, d}};
  g.params.sink = dsink.data();
  backward_device(kokkos_be{}, a, tensor4<const float>(q.data(), B, H, T, d), tensor4<const float>(k.data(), B, Hk, T, d),
                  tensor4<const float>(v.data(), B, Hk, T, d), tensor4<const float>(go.data(), B, H, T, d), g);
  auto get = [](const Kokkos::View<float*, M>& x) {
    std::vector<float> y(x.size());
    Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(y.data(), y.size()), x);
    return y;
  };
  attention<score::scaled_dot, norm::sink_logit, bias::none, pos::rope, mask::causal> ah;
  ah.norm.logits = param_ref(sink.data(), H);
  std::vector<test::param_slot> slots = {{"dsink", &sink, &param_grads<double>::sink}};
  grads<double> ref(p, slots);
  backward(backend::reference{}, ah, p.Q<double>(), p.K<double>(), p.V<double>(),
           tensor4<const double>(dO.data(), B, H, T, d), ref.g);
  CHECK(test::rel_l2(get(dq), ref.dq) <= 1e-4);
  CHECK(test::rel_l2(get(dk), ref.dk) <= 1e-4);
  CHECK(test::rel_l2(get(dv), ref.dv) <= 1e-4);
  CHECK(test::rel_l2(get(dsink), ref.params[0]) <= 1e-4);
}
