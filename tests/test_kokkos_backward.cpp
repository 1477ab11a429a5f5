// The Kokkos backward (float) against the reference backward (double) on
// Kokkos' default execution space — the checks of test_backward_cpu.cpp:
// every named variant, every mask, RoPE off/on, GQA, tokens = 1, fully masked
// rows, small tiles, learnable parameters (sink logits, k*, v*, a T5 table, a
// bias tensor, MLP feature-map weights), and bit-identical gradients whatever
// the tiles and team sizes. Shapes are fewer than the cpu test's (the
// Trilinos Serial build runs them on one core); tokens 257 and 1000 run
// for a few variants only.
//
// The program's cases are spread over several files so that they compile in
// parallel (under CUDA each backward launch instantiates three head-dim
// capacities): this one (main, the edge cases), test_kokkos_backward.<slice>.cpp
// (the named variants, test_kokkos_slices.hpp), .params.cpp (small tiles and
// learnable parameters), .long.cpp (long rows, the document mask), .state.cpp
// (determinism, saved forward state, device operands).
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include "test_kokkos_backward.hpp"
#include "test_kokkos_main.hpp"

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
