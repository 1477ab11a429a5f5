// test_kokkos_backward (see test_kokkos_backward.cpp): tokens 257 and 1000,
// head dims 80 and 128; the document mask.
#include <cstdint>
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include "test_kokkos_backward.hpp"

TEST_CASE("kokkos backward at tokens 257 and 1000, head_dim 80 and 128", "[backward][kokkos]") {
  const test::shape s{1, 3, 1, 257, 257, 80, 80};
  const test::operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, 19500);
  test::variant_params vp(s, 19500);
  variants::settings st = vp.settings();
  st.rope.enabled = true;
  const auto a = variants::make<variants::softmax>(st);
  expect_backward_matches(kokkos_be{}, a, p, {}, 19501);
  const auto b = variants::make<variants::sigmoid>(st);
  expect_backward_matches(kokkos_be{}, b, p, {}, 19502);
  const test::operands big(1, 2, 1, 1000, 1000, 128, 128, 19503);
  expect_backward_matches(kokkos_be{}, attention<score::scaled_dot, norm::softmax, bias::alibi, pos::rope>{}, big, {},
                          19504);
}

TEST_CASE("kokkos backward: document mask", "[backward][kokkos]") {
  test::expect_document_mask_matches(kokkos_be{space{}, 8, 16}, 1800);
}
