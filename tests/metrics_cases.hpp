// The sink-metric test bodies every backend runs (test_metrics.cpp for the
// cpu backend, test_kokkos_metrics.cpp for Kokkos): α streamed from a
// backend's row state against α of the reference's materialized weights.
// A backend enters as a Route: a type with
//   template <class T, class A> static M::alpha_map alphas(const A&, const test::operands&, const M::options&);
// that runs its forward in T (row state poisoned first) and streams α from it.
#pragma once

#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include <attnsink/metrics.hpp>
#include <attnsink/variants.hpp>

#include "forward_cases.hpp"

namespace attnsink::test {

namespace M = attnsink::metrics;

// The reference backend's weights of `a` over p (double), and the α they give.
template <class A>
M::alpha_map reference_alphas(const A& a, const operands& p, const M::options& opt,
                              std::vector<double>* probs_out = nullptr) {
  constexpr bool kv = A::bias_type::has_kv;
  std::vector<double> probs(p.batch * p.heads * p.tq * (p.tk + kv));
  poison(probs);
  result<double> ref(p);
  forward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), ref.O(p), ref.stats(),
          probs_view<double>{probs.data()});
  REQUIRE(all_finite(probs));
  if (probs_out) *probs_out = probs;
  return M::alphas(a, M::weights_view<double>{probs.data(), p.batch, p.heads, p.tq, kv}, opt);
}

// |got - want| <= rel·|want| + abs for every α (and α_*), and the same layout.
inline void expect_close(const M::alpha_map& got, const M::alpha_map& want, double rel, double abs = 1e-15) {
  REQUIRE(got.samples == want.samples);
  REQUIRE(got.heads == want.heads);
  REQUIRE(got.has_bias() == want.has_bias());
  REQUIRE(got.weights == want.weights);
  double worst = 0;
  std::size_t bad = 0;
  auto cmp = [&](const std::vector<double>& g, const std::vector<double>& w) {
    REQUIRE(g.size() == w.size());
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double err = std::abs(g[i] - w[i]);
      worst = std::max(worst, err / std::max(std::abs(w[i]), 1e-300));
      bad += !(err <= rel * std::abs(w[i]) + abs) || !std::isfinite(g[i]);
    }
  };
  cmp(got.alpha, want.alpha);
  cmp(got.alpha_bias, want.alpha_bias);
  INFO("worst relative difference " << worst);
  CHECK(bad == 0);
}

// Named variant V × every mask × RoPE off/on, two shapes (one grouped-query,
// one with odd head_dim), k = 1 and a later k: α streamed from the route's
// double row state equals α of the reference's weights to 1e-6.
template <class V, class Route>
void streamed_alpha_matches_reference(std::uint64_t seed) {
  const std::vector<shape> shapes = {{2, 4, 2, 37, 37, 16, 16}, {1, 3, 1, 50, 50, 17, 9}};
  const auto none = [](const shape&, const mask::dynamic&, bool) { return false; };
  for_each_case(shapes, seed, none,
                [](const shape& s, const mask::dynamic& m, bool rope, const operands& p, const variant_params& vp,
                   variants::settings& st, std::uint64_t) {
                  st.vstar = param_ref(vp.vstar.data(), s.kv_heads * s.vdim);
                  const auto a = variants::make<V>(st);
                  for (std::size_t k : {std::size_t(1), s.tk / 3}) {
                    M::options opt;
                    opt.k = k;
                    INFO(V::name << " " << describe(s, m, rope) << " k=" << k);
                    expect_close(Route::template alphas<double>(a, p, opt), reference_alphas(a, p, opt), 1e-6);
                  }
                });
}

// α streamed from float32 row state, five normalizations: within 2e-5 of the double reference.
template <class Route>
void float_streamed_alpha_is_close(std::uint64_t seed) {
  const shape s{2, 4, 2, 64, 64, 32, 32};
  const operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, seed);
  const variant_params vp(s, seed);
  const M::options opt;
  auto check = [&](auto v) {
    using V = decltype(v);
    INFO(V::name);
    const auto a = variants::make<V>(vp.settings());
    expect_close(Route::template alphas<float>(a, p, opt), reference_alphas(a, p, opt), 2e-5, 1e-9);
  };
  check(variants::softmax{});
  check(variants::sigmoid{});
  check(variants::kv_bias{});
  check(variants::softpick{});
  check(variants::kernel_identity_abs_clamped{});
}

}  // namespace attnsink::test
