// The cpu backward (float) against the reference backward (double): every
// named variant, every mask, RoPE off/on, tokens up to 1000 and head_dim up to
// 128; small tiles; learnable parameters; edge cases; bit-identical gradients
// whatever the thread count.
#include <cstring>

#include <catch2/catch_template_test_macros.hpp>
#include <tbb/global_control.h>

#include <attnsink/backend/cpu_backward.hpp>
#include <attnsink/cpu.hpp>

#include "test_backward_common.hpp"

using namespace attnsink;
using test::expect_backward_matches;
using test::grads;
using test::round_params;

namespace {

// tokens ∈ {1, 5, 64, 257, 1000}, head_dim ∈ {4, 17, 64, 80, 128}, grouped-query ratios 1..3.
const std::vector<test::shape>& cpu_shapes() {
  static const std::vector<test::shape> s = {
      {2, 4, 2, 1, 1, 17, 17},  {2, 4, 2, 5, 5, 4, 3},     {2, 4, 1, 64, 64, 64, 64},
      {1, 6, 2, 64, 64, 17, 33}, {2, 4, 2, 7, 300, 64, 48}, {1, 3, 1, 257, 257, 80, 80},
      {1, 2, 1, 1000, 1000, 128, 128},
  };
  return s;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("cpu backward matches the reference backward", "[backward][cpu]", variants::all) {
  // the largest shapes: the reference's time is bounded by fewer masks
  const auto large_fewer = [](const test::shape& s, const mask::dynamic& m, bool rope) {
    return s.tk >= 257 && (m.which != mask::dynamic::kind::causal || rope != (s.tk == 257));
  };
  test::for_each_case(cpu_shapes(), 9000, large_fewer,
                      [](const test::shape& s, const mask::dynamic& m, bool rope, const test::operands& p,
                         test::variant_params& vp, const variants::settings& st, std::uint64_t seed) {
                        const auto a = variants::make<TestType>(st);
                        const auto slots = test::variant_slots(vp, a);
                        round_params(slots);
                        INFO(TestType::name << " " << test::describe(s, m, rope));
                        expect_backward_matches(backend::cpu{}, a, p, slots, seed);
                      });
}

TEST_CASE("cpu backward with small tiles, learnable biases and feature maps", "[backward][cpu]") {
  // Tiles smaller than the problem both ways: partial, skipped and several
  // key tiles per row in both passes.
  test::expect_learnable_params_match(backend::cpu{8, 16}, {5u, 37u, 100u}, 700);
}

TEST_CASE("cpu backward, fused schedule with query operands made per block", "[backward][cpu]") {
  // prep_budget 0: no pair's query operands are kept (the long-context path).
  const test::operands p(2, 4, 2, 150, 150, 32, 32, 760);
  using A = attention<score::scaled_dot, norm::softmax, bias::alibi, pos::nope, mask::causal>;
  using S = attention<score::scaled_dot, norm::sigmoid, bias::none, pos::nope, mask::dynamic>;
  for (std::size_t threads : {1u, 2u}) {
    tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
    expect_backward_matches(backend::cpu{16, 32, 0}, A{}, p, {}, 761);
    expect_backward_matches(backend::cpu{16, 32, 0}, S{{}, {{}, -1.0}, {}, {}, {mask::dynamic::kind::window, 20}}, p,
                            {}, 762);
  }
}

TEST_CASE("cpu backward: document mask", "[backward][cpu]") {
  test::expect_document_mask_matches(backend::cpu{8, 16}, 800);
}

TEST_CASE("cpu backward edge cases: fully masked rows, extreme logits, one token", "[backward][cpu]") {
  SECTION("rows that see no key get zero gradient, and no NaN anywhere") {
    // More queries than keys under a causal mask: the first rows sit before every key.
    const test::operands p(1, 2, 1, 9, 5, 8, 8, 810);
    using A = attention<score::scaled_dot, norm::softmax, bias::none, pos::rope, mask::causal>;
    expect_backward_matches(backend::cpu{4, 8}, A{}, p, {}, 811);
    std::vector<float> dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), dO(p.out_size(), 1.0f);
    test::poison(dq);
    backward(backend::cpu{}, A{}, p.Q<float>(), p.K<float>(), p.V<float>(),
             tensor4<const float>(dO.data(), 1, 2, 9, 8),
             gradients<float>{{dq.data(), 1, 2, 9, 8}, {dk.data(), 1, 1, 5, 8}, {dv.data(), 1, 1, 5, 8}});
    for (std::size_t h = 0; h < 2; ++h)
      for (std::size_t i = 0; i < 4; ++i)
        for (std::size_t e = 0; e < 8; ++e) CHECK(dq[(h * 9 + i) * 8 + e] == 0.0f);
    CHECK(test::all_finite(dk));
    CHECK(test::all_finite(dv));
  }
  SECTION("extreme logits") {
    // Scores of several hundred: every row is nearly one-hot.
    const test::operands p(1, 4, 2, 40, 40, 32, 32, 820, 6.0);
    std::vector<double> sink = {60.0, -60.0, 0.0, 25.0};
    using A = attention<score::scaled_dot, norm::sink_logit, bias::none, pos::nope, mask::causal>;
    const A a{{}, {{}, param_ref(sink.data(), 4)}};
    // float scores of ~300 carry ~1e-5 absolute error, which e^s turns into relative error
    expect_backward_matches(backend::cpu{}, a, p, {{"dsink", &sink, &param_grads<double>::sink}}, 821, 2e-3);
    using C = attention<score::softcap<>, norm::softmax_off_by_one, bias::none, pos::nope, mask::none>;
    expect_backward_matches(backend::cpu{}, C{{{}, 30.0}}, p, {}, 822, 2e-3);
  }
  SECTION("one token") {
    const test::operands p(3, 4, 1, 1, 1, 16, 8, 830);
    expect_backward_matches(backend::cpu{}, attention<score::scaled_dot, norm::softmax, bias::none, pos::rope>{}, p, {}, 831);
  }
}

TEST_CASE("cpu backward is bit-identical whatever the thread count and schedule", "[backward][cpu][determinism]") {
  const test::determinism_case dc(300, 840);
  const auto& p = dc.p;
  const auto& slots = dc.slots;
  const auto& a = dc.a;
  const auto& dout = dc.dout;
  const auto same_bits = test::determinism_case::same_bits;
  using cpu_bwd::schedule;
  auto run = [&](std::size_t threads, const auto& attn, const std::vector<test::param_slot>& sl,
                 schedule sched = schedule::two_pass) {
    tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
    grads<float> r(p, sl);
    backward(backend::cpu{16, 32}, attn, p.Q<float>(), p.K<float>(), p.V<float>(), dout, r.g, {}, sched);
    return r;
  };
  const auto r1 = run(1, a, slots);
  for (std::size_t threads : {1u, 2u, 3u, 8u})
    for (schedule sched : {schedule::two_pass, schedule::fused}) {
      INFO(threads << " threads, schedule " << int(sched));
      const auto rn = run(threads, a, slots, sched);
      CHECK(same_bits(r1.dq, rn.dq));
      CHECK(same_bits(r1.dk, rn.dk));
      CHECK(same_bits(r1.dv, rn.dv));
      for (std::size_t i = 0; i < slots.size(); ++i) CHECK(same_bits(r1.params[i], rn.params[i]));
    }
  // The fused schedule re-making query operands per block (no room kept for a
  // pair's: prep_budget 0) equals the two-pass schedule bit for bit.
  using C = attention<score::scaled_dot, norm::softmax, bias::alibi, pos::nope, mask::causal>;
  auto run_budget = [&](std::size_t threads, schedule sched, std::size_t budget) {
    tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
    grads<float> r(p, {});
    backward(backend::cpu{16, 32, budget}, C{}, p.Q<float>(), p.K<float>(), p.V<float>(), dout, r.g, {}, sched);
    return r;
  };
  const auto c1 = run_budget(1, schedule::two_pass, 0);
  for (std::size_t threads : {1u, 3u}) {
    const auto cn = run_budget(threads, schedule::fused, 0);
    INFO(threads << " threads, fused, operands per block");
    CHECK(same_bits(c1.dq, cn.dq));
    CHECK(same_bits(c1.dk, cn.dk));
    CHECK(same_bits(c1.dv, cn.dv));
  }
  const auto t1 = run(1, dc.bt, dc.tslot), t2 = run(2, dc.bt, dc.tslot, schedule::fused);
  CHECK(same_bits(t1.params[0], t2.params[0]));
  CHECK(same_bits(t1.dq, t2.dq));
}

TEST_CASE("cpu backward with the forward's saved state equals the one that recomputes it", "[backward][cpu]") {
  test::expect_saved_forward_matches(backend::cpu{}, 850);
}
