// The Kokkos backend against the reference on Kokkos' default execution
// space: the exponential (softmax-family) named variants, every mask, the
// forward_cases.hpp shapes. The other variants are test_kokkos_forward_other;
// the variants are split over two programs, and over files within each
// (test_kokkos_slices.hpp), so that they build in parallel. This file: main
// and the first slice; test_kokkos_forward_softmax.softmax_2.cpp the second.
#include <catch2/catch_template_test_macros.hpp>

#include <attnsink/kokkos.hpp>

#include "forward_cases.hpp"
#include "test_kokkos_main.hpp"
#include "test_kokkos_slices.hpp"

TEMPLATE_TEST_CASE("kokkos forward matches the reference", "[forward][kokkos]", ATTNSINK_KOKKOS_SOFTMAX_SLICE_1) {
  attnsink::test::run_forward_cases<TestType>(attnsink::backend::kokkos<Kokkos::DefaultExecutionSpace>{});
}
