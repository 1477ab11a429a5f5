// tests/test_kokkos_backward.hpp — what the translation units of the
// test_kokkos_backward program share: the backend under test and the body of
// "kokkos backward matches the reference backward", which each
// test_kokkos_backward.<slice>.cpp instantiates for one slice of the named
// variants (test_kokkos_slices.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include <attnsink/kokkos.hpp>
#include <attnsink/backend/kokkos_backward.hpp>

#include "test_backward_common.hpp"

namespace attnsink::test {

using kokkos_space = Kokkos::DefaultExecutionSpace;
using kokkos_be = backend::kokkos<kokkos_space>;

// tokens ∈ {1, 5, 64, 300 keys}, head_dim ∈ {4, 17, 64}, value dims ≠ head dims, GQA ratios 1..3.
inline const std::vector<shape>& kokkos_shapes() {
  static const std::vector<shape> s = {
      {2, 4, 2, 1, 1, 17, 17}, {2, 4, 2, 5, 5, 4, 3}, {1, 6, 2, 64, 64, 17, 33}, {1, 4, 2, 7, 300, 64, 48},
  };
  return s;
}

// Named variant V × every mask × RoPE off/on × kokkos_shapes(), learnable parameters included.
template <class V>
void kokkos_backward_matches_reference() {
  const auto none = [](const shape&, const mask::dynamic&, bool) { return false; };
  for_each_case(kokkos_shapes(), 19000, none,
                [](const shape& s, const mask::dynamic& m, bool rope, const operands& p, variant_params& vp,
                   const variants::settings& st, std::uint64_t seed) {
                  const auto a = variants::make<V>(st);
                  const auto slots = variant_slots(vp, a);
                  round_params(slots);
                  INFO(V::name << " " << describe(s, m, rope));
                  expect_backward_matches(kokkos_be{}, a, p, slots, seed);
                });
}

}  // namespace attnsink::test

// The names the test_kokkos_backward files use unqualified (this header is theirs alone).
using namespace attnsink;
using test::expect_backward_matches;
using test::grads;
using test::kokkos_be;
using test::round_params;
using space = test::kokkos_space;
