// test_kokkos_metrics (see test_kokkos_metrics.cpp): α streamed from float32 row state.
#include <catch2/catch_test_macros.hpp>

#include "test_kokkos_metrics.hpp"

TEST_CASE("kokkos alpha streamed from float32 row state is close to the double reference", "[metrics][kokkos]") {
  attnsink::test::float_streamed_alpha_is_close<attnsink::test::kokkos_route>(177);
}
