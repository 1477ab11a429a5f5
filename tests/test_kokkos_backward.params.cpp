// test_kokkos_backward (see test_kokkos_backward.cpp): small tiles, learnable
// biases and feature maps.
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include "test_kokkos_backward.hpp"

TEST_CASE("kokkos backward with small tiles, learnable biases and feature maps", "[backward][kokkos]") {
  // Tiles smaller than the problem both ways: partial, skipped and several tiles per row and per key.
  test::expect_learnable_params_match(kokkos_be{space{}, 8, 8}, {5u, 37u}, 1700);
}
