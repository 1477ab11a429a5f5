// tests/test_kokkos_slices.hpp — the named variants (variants::all) in five
// slices of three or four, one slice per translation unit of a Kokkos test
// program: every variant's kernels instantiated in one file took too long to
// compile under CUDA (each backward launch instantiates three head-dim
// capacities), and files build in parallel. The slices follow the forward's
// two families (softmax-like, then the rest); the static_assert below fails
// when a variant is added to variants::all and not to a slice, or is listed twice.
// Each slice is a macro (the type list a TEMPLATE_TEST_CASE takes, so the test
// names carry the variant) and a std::tuple.
#pragma once

#include <cstddef>
#include <tuple>
#include <type_traits>

#include <attnsink/variants.hpp>

#define ATTNSINK_KOKKOS_SOFTMAX_SLICE_1 \
  attnsink::variants::softmax, attnsink::variants::softmax_off_by_one, attnsink::variants::sink_logit, \
      attnsink::variants::scaled_softmax
#define ATTNSINK_KOKKOS_SOFTMAX_SLICE_2 \
  attnsink::variants::softcap, attnsink::variants::alibi, attnsink::variants::t5_relative, attnsink::variants::kv_bias
#define ATTNSINK_KOKKOS_OTHER_SLICE_1 \
  attnsink::variants::sigmoid, attnsink::variants::sigmoid_normalized, attnsink::variants::elu1
#define ATTNSINK_KOKKOS_OTHER_SLICE_2 \
  attnsink::variants::elu1_normalized, attnsink::variants::kernel_elu1, attnsink::variants::kernel_elu1_normalized
#define ATTNSINK_KOKKOS_OTHER_SLICE_3 \
  attnsink::variants::kernel_identity, attnsink::variants::kernel_identity_abs_clamped, attnsink::variants::softpick

namespace attnsink::test::kokkos_slices {

using softmax_1 = std::tuple<ATTNSINK_KOKKOS_SOFTMAX_SLICE_1>;
using softmax_2 = std::tuple<ATTNSINK_KOKKOS_SOFTMAX_SLICE_2>;
using other_1 = std::tuple<ATTNSINK_KOKKOS_OTHER_SLICE_1>;
using other_2 = std::tuple<ATTNSINK_KOKKOS_OTHER_SLICE_2>;
using other_3 = std::tuple<ATTNSINK_KOKKOS_OTHER_SLICE_3>;

template <class V, class... Ts>
constexpr std::size_t count(std::tuple<Ts...>*) {
  return (std::size_t(std::is_same_v<V, Ts>) + ... + 0);
}
using slices = decltype(std::tuple_cat(softmax_1{}, softmax_2{}, other_1{}, other_2{}, other_3{}));
template <class... Vs>
constexpr bool each_once(std::tuple<Vs...>*) {
  return ((count<Vs>(static_cast<slices*>(nullptr)) == 1) && ...) &&
         std::tuple_size_v<slices> == sizeof...(Vs);
}
static_assert(each_once(static_cast<variants::all*>(nullptr)),
              "tests/test_kokkos_slices.hpp: the slices must hold every variant of variants::all exactly once");

}  // namespace attnsink::test::kokkos_slices
