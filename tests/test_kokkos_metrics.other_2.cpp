// "kokkos streamed alpha equals alpha of the materialized weights" for one
// slice of the named variants (test_kokkos_slices.hpp); part of the
// test_kokkos_metrics program. The two routes agree (metrics_cases.hpp), as
// test_metrics.cpp checks for the cpu backend.
#include <catch2/catch_template_test_macros.hpp>

#include "test_kokkos_metrics.hpp"
#include "test_kokkos_slices.hpp"

TEMPLATE_TEST_CASE("kokkos streamed alpha equals alpha of the materialized weights", "[metrics][kokkos]",
                   ATTNSINK_KOKKOS_OTHER_SLICE_2) {
  attnsink::test::streamed_alpha_matches_reference<TestType, attnsink::test::kokkos_route>(14000);
}
