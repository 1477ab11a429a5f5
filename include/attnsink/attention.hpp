// attnsink/attention.hpp — an attention operator as a type.
//
//   using my_attn = attnsink::attention<score::scaled_dot, norm::sigmoid, bias::alibi, pos::rope, mask::causal>;
//   using same    = attnsink::attention_of<norm::sigmoid, pos::rope, bias::alibi>;   // any order, rest defaulted
//
// An attention value holds one value of each policy (their run-time
// parameters: a window, sink logits, k*/v* ...). Backends (backend/*.hpp) run it:
//   attnsink::forward(attnsink::backend::cpu{}, attn, q, k, v, out, stats);
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>

#include "bias.hpp"
#include "mask.hpp"
#include "norm.hpp"
#include "pos.hpp"
#include "score.hpp"
#include "tensor.hpp"

namespace attnsink {

template <score_policy Score = score::scaled_dot, norm_policy Norm = norm::softmax, bias_policy Bias = bias::none,
          pos_policy Pos = pos::nope, mask_policy Mask = mask::causal>
struct attention {
  using score_type = Score;
  using norm_type = Norm;
  using bias_type = Bias;
  using pos_type = Pos;
  using mask_type = Mask;

  Score score{};
  Norm norm{};
  Bias bias{};
  Pos pos{};
  Mask mask{};
};

template <class A>
concept attention_type = requires {
  typename A::score_type;
  typename A::norm_type;
  typename A::bias_type;
  typename A::pos_type;
  typename A::mask_type;
} && std::same_as<A, attention<typename A::score_type, typename A::norm_type, typename A::bias_type,
                               typename A::pos_type, typename A::mask_type>>;

namespace detail {

template <class P>
concept has_axis = requires { typename P::axis; };

template <class Axis, class Default, class... Ps>
struct pick {
  static constexpr int count = (0 + ... + int(std::is_same_v<typename Ps::axis, Axis>));
  template <class P, class... Rest>
  struct first {
    using type = std::conditional_t<std::is_same_v<typename P::axis, Axis>, P,
                                    typename first<Rest...>::type>;
  };
  template <class P>
  struct first<P> {
    using type = std::conditional_t<std::is_same_v<typename P::axis, Axis>, P, Default>;
  };
  using type = typename std::conditional_t<(sizeof...(Ps) > 0), first<Ps..., Default>,
                                           std::type_identity<Default>>::type;
};

template <class... Ps>
struct attention_of_impl {
  static_assert((has_axis<Ps> && ...),
                "attnsink::attention_of: every argument must be a policy with a nested `axis` alias "
                "(score, norm, bias, pos or mask).");
  static_assert(pick<axis::score, score::scaled_dot, Ps...>::count <= 1,
                "attnsink::attention_of: more than one score policy given.");
  static_assert(pick<axis::norm, norm::softmax, Ps...>::count <= 1,
                "attnsink::attention_of: more than one normalization policy given.");
  static_assert(pick<axis::bias, bias::none, Ps...>::count <= 1,
                "attnsink::attention_of: more than one bias policy given.");
  static_assert(pick<axis::pos, pos::nope, Ps...>::count <= 1,
                "attnsink::attention_of: more than one positional policy given.");
  static_assert(pick<axis::mask, mask::causal, Ps...>::count <= 1,
                "attnsink::attention_of: more than one mask policy given.");
  using type = attention<typename pick<axis::score, score::scaled_dot, Ps...>::type,
                         typename pick<axis::norm, norm::softmax, Ps...>::type,
                         typename pick<axis::bias, bias::none, Ps...>::type,
                         typename pick<axis::pos, pos::nope, Ps...>::type,
                         typename pick<axis::mask, mask::causal, Ps...>::type>;
};

}  // namespace detail

// attention<...> from policies in any order; a slot left out takes its default
// (scaled_dot, softmax, no bias, no positions, causal).
template <class... Policies>
using attention_of = typename detail::attention_of_impl<Policies...>::type;

// The extents of a call, read from its operands.
template <class T>
problem problem_of(const tensor4<const T>& q, const tensor4<const T>& k, const tensor4<const T>& v) {
  return {q.batch, q.heads, k.heads, q.tokens, k.tokens, q.dim, v.dim};
}

namespace detail {
inline std::string shape_str(std::size_t b, std::size_t h, std::size_t t, std::size_t d) {
  return "(" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(t) + ", " + std::to_string(d) +
         ")";
}
template <class T>
std::string shape_str(const tensor4<T>& x) {
  return shape_str(x.batch, x.heads, x.tokens, x.dim);
}
// Throws shape_error(argument, message) unless ok. `message` is text, or a
// callable returning it: a message built from the operands' extents is then
// built only when the check fails, not on every call (forming the strings
// cost about 1.7 µs a forward call, a decode step's fixed cost).
template <class Message>
inline void require(bool ok, const char* argument, Message&& message) {
  if (ok) return;
  if constexpr (std::is_invocable_v<Message>) throw shape_error(argument, std::string(message()));
  else throw shape_error(argument, std::string(message));
}
}  // namespace detail

// Validates a forward call before anything is written: operand extents,
// grouped-query divisibility, and every policy's parameters. Throws
// shape_error / value_error naming the argument.
template <attention_type A, class T>
problem check_forward(const A& a, const tensor4<const T>& q, const tensor4<const T>& k, const tensor4<const T>& v,
                      const tensor4<T>& out) {
  using detail::require;
  using detail::shape_str;
  require(q.data != nullptr || q.size() == 0, "q", "expected data");
  require(q.dim >= 1, "q", [&] { return "expected head_dim >= 1, got shape " + shape_str(q); });
  require(q.heads >= 1 && q.batch >= 1 && q.tokens >= 1, "q", [&] { return "expected non-empty extents, got shape " + shape_str(q); });
  require(k.batch == q.batch, "k", [&] { return "expected batch " + std::to_string(q.batch) + " (as q), got shape " + shape_str(k); });
  require(k.heads >= 1 && q.heads % k.heads == 0, "k",
          [&] { return "kv heads (" + std::to_string(k.heads) + ") must divide the query heads (" + std::to_string(q.heads) + ")"; });
  require(k.tokens >= 1, "k", [&] { return "expected at least one key, got shape " + shape_str(k); });
  require(k.dim == q.dim, "k", [&] { return "expected head_dim " + std::to_string(q.dim) + " (as q), got shape " + shape_str(k); });
  require(v.batch == k.batch && v.heads == k.heads && v.tokens == k.tokens, "v",
          [&] { return "expected (batch, kv heads, tokens) as k " + shape_str(k) + ", got shape " + shape_str(v); });
  require(v.dim >= 1, "v", [&] { return "expected value dim >= 1, got shape " + shape_str(v); });
  require(out.batch == q.batch && out.heads == q.heads && out.tokens == q.tokens && out.dim == v.dim, "out",
          [&] { return "expected shape " + shape_str(q.batch, q.heads, q.tokens, v.dim) + ", got " + shape_str(out); });
  require(k.data && v.data && out.data, k.data ? (v.data ? "out" : "v") : "k", "expected data, got a null pointer");
  const problem p = problem_of(q, k, v);
  a.score.check(p);
  a.norm.check(p);
  a.bias.check(p);
  a.pos.check(p);
  a.mask.check(p);
  return p;
}

}  // namespace attnsink
