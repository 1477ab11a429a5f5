// "kokkos backward matches the reference backward" for one slice of the named
// variants (test_kokkos_slices.hpp); part of the test_kokkos_backward program.
#include <catch2/catch_template_test_macros.hpp>

#include "test_kokkos_backward.hpp"
#include "test_kokkos_slices.hpp"

TEMPLATE_TEST_CASE("kokkos backward matches the reference backward", "[backward][kokkos]",
                   ATTNSINK_KOKKOS_SOFTMAX_SLICE_2) {
  attnsink::test::kokkos_backward_matches_reference<TestType>();
}
