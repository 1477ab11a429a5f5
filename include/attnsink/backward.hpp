// attnsink/backward.hpp — what a backward pass takes and returns, and the
// checks every backend's backward runs before writing anything.
//
//   attnsink::gradients<float> g{dq, dk, dv};
//   g.params.sink = dsink.data();                  // optional, per learnable parameter
//   attnsink::backward(attnsink::backend::cpu{}, attn, q, k, v, dout, g);
//
// The loss is any L with dO = dL/dO given; dq, dk, dv (same shapes as q, k, v;
// with grouped-query attention dk, dv sum over the query heads sharing a kv
// head) and every requested parameter gradient are overwritten, not added to.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>

#include "attention.hpp"

namespace attnsink {

// One buffer per learnable policy parameter, each optional (null: not wanted).
// Layouts are those of the parameters themselves.
template <class T>
struct param_grads {
  T* sink = nullptr;   // norm::sink_logit: (heads)
  T* kstar = nullptr;  // bias::kv_bias: (kv_heads, head_dim)
  T* vstar = nullptr;  // bias::kv_bias with a v* array: (kv_heads, value_dim)
  T* bias = nullptr;   // bias::t5_relative with a table: (heads, buckets); bias::tensor: (batch, heads, tq, tk)
  T* score = nullptr;  // score::mlp_kernel: dW1 (hidden × head_dim) then dW2 (features × hidden)
};

template <class T>
struct gradients {
  tensor4<T> dq, dk, dv;
  param_grads<T> params{};
};

// An attention type whose every policy has a derivative.
template <class A>
concept differentiable = attention_type<A> && differentiable_score<typename A::score_type> &&
                         differentiable_norm<typename A::norm_type> && differentiable_bias<typename A::bias_type>;

namespace detail {

template <class N>
concept learns_init = requires(const N& n, double x) {
  { n.init_gradient(std::size_t{}, x, x, x) } -> std::same_as<double>;
};

template <attention_type A>
constexpr void assert_differentiable() {
  static_assert(differentiable_score<typename A::score_type>,
                "attnsink::backward: the score policy has no derivative (needs param_count and map_backward).");
  static_assert(differentiable_norm<typename A::norm_type>,
                "attnsink::backward: the normalization has no derivative (needs weight_derivative, "
                "mass_derivative and finish_log_derivative).");
  static_assert(differentiable_bias<typename A::bias_type>,
                "attnsink::backward: the bias policy has no derivative (needs param_index and param_count).");
}

}  // namespace detail

// Validates a backward call before anything is written: the forward's checks
// (with dout in the place of out), the gradient shapes, and that each requested
// parameter gradient belongs to a parameter the attention learns.
template <attention_type A, class T>
problem check_backward(const A& a, const tensor4<const T>& q, const tensor4<const T>& k, const tensor4<const T>& v,
                       const tensor4<const T>& dout, const gradients<T>& g) {
  using detail::require;
  using detail::shape_str;
  // check_forward reads only out's extents and pointer.
  const tensor4<T> dout_shape(const_cast<T*>(dout.data), dout.batch, dout.heads, dout.tokens, dout.dim);
  require(dout.data != nullptr, "dout", "expected data, got a null pointer");
  require(dout.batch == q.batch && dout.heads == q.heads && dout.tokens == q.tokens && dout.dim == v.dim, "dout",
          [&] { return "expected shape " + shape_str(q.batch, q.heads, q.tokens, v.dim) + ", got " + shape_str(dout); });
  const problem p = check_forward(a, q, k, v, dout_shape);
  auto same = [&](const tensor4<T>& x, const auto& ref, const char* name) {
    require(x.data != nullptr, name, "expected data, got a null pointer");
    require(x.shape() == ref.shape(), name, [&] { return "expected shape " + shape_str(ref) + ", got " + shape_str(x); });
  };
  same(g.dq, q, "dq");
  same(g.dk, k, "dk");
  same(g.dv, v, "dv");
  using N = typename A::norm_type;
  using B = typename A::bias_type;
  auto unwanted = [&](const T* ptr, bool learnable, const char* name, const char* why) {
    if (ptr && !learnable) throw value_error(name, why);
  };
  unwanted(g.params.sink, detail::learns_init<N>, "dsink", "this attention has no sink logits (norm::sink_logit)");
  bool kv = false, kv_v = false;
  if constexpr (B::has_kv) {
    kv = true;
    kv_v = a.bias.learns_vstar();
  }
  unwanted(g.params.kstar, kv, "dkstar", "this attention has no key/value bias (bias::kv_bias)");
  unwanted(g.params.vstar, kv_v, "dvstar", "this attention has no learnable v* (bias::kv_bias with a v array)");
  unwanted(g.params.bias, a.bias.param_count(p) > 0, "dbias",
           "this attention's bias learns nothing (t5_relative without a table, alibi or none)");
  unwanted(g.params.score, a.score.param_count(p.dim) > 0, "dscore", "this score's feature map learns nothing");
  return p;
}

// What the forward kept for the backward: its output and the row state (m, l).
// Empty (the default): the backward runs the forward itself first. A
// backend reads it where it reads its operands (host memory for backward(),
// the execution space's memory for the Kokkos backward_device()).
template <class T>
struct saved_forward {
  tensor4<const T> out{};
  const T* max = nullptr;
  const T* sum = nullptr;
  bool empty() const { return out.data == nullptr; }
};

// Normalizations whose float backward cannot reach 1e-4 of the double oracle,
// so float calls run in double (measured, not bugs):
// - a signed denominator (abs_clamped) can cancel below float's resolution of its terms;
// - softpick's gradient jumps at s = 0: a score within float rounding of zero
//   lands on either side (one such score in a 1000-token causal row moved dq by 2e-4);
// - normalized<F> (and softpick) rows with one visible key have p ≈ 1 and
//   dS = f'·f·(dP − p·dP) cancels to (1 − p), ~2e-4 relative in float.
template <class N>
inline constexpr bool float_too_coarse =
    (N::has_denominator && !N::non_negative) || std::is_same_v<N, norm::softpick> ||
    requires { typename N::function; };  // norm::normalized<F>

}  // namespace attnsink
