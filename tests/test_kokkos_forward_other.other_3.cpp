// test_kokkos_forward_other (see test_kokkos_forward_other.cpp): the third slice.
#include <catch2/catch_template_test_macros.hpp>

#include <attnsink/kokkos.hpp>

#include "forward_cases.hpp"
#include "test_kokkos_slices.hpp"

TEMPLATE_TEST_CASE("kokkos forward matches the reference", "[forward][kokkos]", ATTNSINK_KOKKOS_OTHER_SLICE_3) {
  attnsink::test::run_forward_cases<TestType>(attnsink::backend::kokkos<Kokkos::DefaultExecutionSpace>{});
}
