// tests/test_kokkos_metrics.hpp — what the translation units of the
// test_kokkos_metrics program share: the Kokkos route of metrics_cases.hpp.
#pragma once

#include <catch2/catch_test_macros.hpp>

#include <attnsink/kokkos.hpp>
#include <attnsink/metrics.hpp>
#include <attnsink/metrics/kokkos.hpp>

#include "metrics_cases.hpp"

namespace attnsink::test {

using kokkos_space = Kokkos::DefaultExecutionSpace;
using kokkos_be = backend::kokkos<kokkos_space>;

// The Kokkos forward's row state for `a` over p in T (poisoned first), and α streamed from it on Kokkos.
struct kokkos_route {
  template <class T, class A>
  static metrics::alpha_map alphas(const A& a, const operands& p, const metrics::options& opt) {
    result<T> got(p);
    forward(kokkos_be{}, a, p.Q<T>(), p.K<T>(), p.V<T>(), got.O(p), got.stats());
    REQUIRE(all_finite(got.l));
    return metrics::alphas_streamed(kokkos_be{}, a, p.Q<T>(), p.K<T>(), got.stats(), opt);
  }
};

}  // namespace attnsink::test
