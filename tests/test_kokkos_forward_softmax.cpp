// The Kokkos backend against the reference on Kokkos' default execution
// space: the exponential (softmax-family) named variants, every mask, the forward_cases.hpp shapes. The variants are
// split over two programs so that they build in parallel.
#include <catch2/catch_template_test_macros.hpp>

#include <tuple>

#include <attnsink/kokkos.hpp>

#include "forward_cases.hpp"
#include "test_kokkos_main.hpp"

using namespace attnsink;

using softmax_family_variants = std::tuple<variants::softmax, variants::softmax_off_by_one, variants::sink_logit, variants::scaled_softmax, variants::softcap, variants::alibi, variants::t5_relative, variants::kv_bias>;

TEMPLATE_LIST_TEST_CASE("kokkos forward matches the reference", "[forward][kokkos]", softmax_family_variants) {
  test::run_forward_cases<TestType>(backend::kokkos<Kokkos::DefaultExecutionSpace>{});
}
