// The Kokkos backend against the reference on Kokkos' default execution
// space: the other named variants (sigmoid, elu, kernel, softpick), every mask, the forward_cases.hpp shapes. The variants are
// split over two programs so that they build in parallel.
#include <catch2/catch_template_test_macros.hpp>

#include <tuple>

#include <attnsink/kokkos.hpp>

#include "forward_cases.hpp"
#include "test_kokkos_main.hpp"

using namespace attnsink;

using other_variants = std::tuple<variants::sigmoid, variants::sigmoid_normalized, variants::elu1, variants::elu1_normalized, variants::kernel_elu1, variants::kernel_elu1_normalized, variants::kernel_identity, variants::kernel_identity_abs_clamped, variants::softpick>;

TEMPLATE_LIST_TEST_CASE("kokkos forward matches the reference", "[forward][kokkos]", other_variants) {
  test::run_forward_cases<TestType>(backend::kokkos<Kokkos::DefaultExecutionSpace>{});
}
