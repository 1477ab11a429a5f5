// attnsink/variants.hpp — the named variants: the paper's attention
// operations and the common sink-related ones, each an attention type with a
// run-time positional switch (RoPE on/off) and a run-time mask, so that one
// instantiation per variant serves every mask. Used by the CLI and the tests;
// users normally write their own attention<...> types directly.
#pragma once

#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "attention.hpp"

namespace attnsink::variants {

// Run-time settings a named variant is built from.
struct settings {
  pos::rope rope{10000.0, false};
  mask::dynamic mask{};
  param_ref sink;        // sink_logit: one logit per query head
  param_ref kstar;       // kv_bias: kv_heads × head_dim
  param_ref vstar;       // kv_bias: kv_heads × value_dim (absent: zeros)
  param_ref t5_table;    // t5_relative: heads × 32 (absent: the fixed form, + bucket index)
  double alpha = 1.0;    // scaled_softmax
  double cap = 50.0;     // softcap
  double sigmoid_bias = 0.0;
};

template <class Score, class Norm, class Bias = bias::none>
using named = attention<Score, Norm, Bias, pos::rope, mask::dynamic>;

#define ATTNSINK_VARIANT(ID, NAME, FORMULA, ...)           \
  struct ID {                                              \
    static constexpr const char* name = NAME;              \
    static constexpr const char* formula = FORMULA;        \
    using type = named<__VA_ARGS__>;                       \
  };

ATTNSINK_VARIANT(softmax, "softmax", "p = softmax(q·k/√d)", score::scaled_dot, norm::softmax)
ATTNSINK_VARIANT(sigmoid, "sigmoid", "p = σ(q·k/√d + b), no normalization (b = --sigmoid-bias, default 0)",
                 score::scaled_dot, norm::sigmoid)
ATTNSINK_VARIANT(sigmoid_normalized, "sigmoid_normalized", "p = σ(s) / (Σ_j σ(s_j) + 1e-8), s = q·k/√d",
                 score::scaled_dot, norm::normalized<fn::sigmoid>)
ATTNSINK_VARIANT(elu1, "elu1", "p = elu(q·k/√d) + 1, no normalization", score::scaled_dot, norm::elu_plus_one)
ATTNSINK_VARIANT(elu1_normalized, "elu1_normalized", "p = (elu(s)+1) / (Σ_j (elu(s_j)+1) + 1e-8), s = q·k/√d",
                 score::scaled_dot, norm::normalized<fn::elu_plus_one>)
ATTNSINK_VARIANT(kernel_elu1, "kernel_elu1", "p = (elu(q)+1)·(elu(k)+1), no normalization",
                 score::kernel<fn::elu_plus_one>, norm::identity)
ATTNSINK_VARIANT(kernel_elu1_normalized, "kernel_elu1_normalized",
                 "p = s / (Σ_j s_j + 1e-8), s = (elu(q)+1)·(elu(k)+1) >= 0", score::kernel<fn::elu_plus_one>,
                 norm::normalized<fn::relu>)
ATTNSINK_VARIANT(kernel_identity, "kernel_identity", "p = q·k, no normalization", score::kernel<fn::identity>,
                 norm::identity)
ATTNSINK_VARIANT(kernel_identity_abs_clamped, "kernel_identity_abs_clamped", "p = q·k / max(|Σ_j q·k_j|, 1)",
                 score::kernel<fn::identity>, norm::abs_clamped)
ATTNSINK_VARIANT(softmax_off_by_one, "softmax_off_by_one", "p = e^s / (1 + Σ_j e^{s_j}), s = q·k/√d",
                 score::scaled_dot, norm::softmax_off_by_one)
ATTNSINK_VARIANT(sink_logit, "sink_logit", "p = e^s / (e^{b_h} + Σ_j e^{s_j}), b_h from --sink (heads)",
                 score::scaled_dot, norm::sink_logit)
ATTNSINK_VARIANT(softpick, "softpick", "p = relu(e^s - 1) / (Σ_j |e^{s_j} - 1| + 1e-6), s = q·k/√d",
                 score::scaled_dot, norm::softpick)
ATTNSINK_VARIANT(scaled_softmax, "scaled_softmax", "p = α · softmax(q·k/√d)_j (α = --alpha)", score::scaled_dot,
                 norm::scaled_softmax)
ATTNSINK_VARIANT(softcap, "softcap", "p = softmax(c · tanh(q·k/√d / c)) (c = --cap, default 50)",
                 score::softcap<score::scaled_dot>, norm::softmax)
ATTNSINK_VARIANT(alibi, "alibi", "p = softmax(q·k/√d - m_h (i - j)), m_h = 2^{-8h/H}", score::scaled_dot,
                 norm::softmax, bias::alibi)
ATTNSINK_VARIANT(t5_relative, "t5_relative",
                 "p = softmax(q·k/√d + g_h(bucket(i - j))), 32 buckets, max distance 128; "
                 "g from --t5-table (heads × 32), else + bucket index",
                 score::scaled_dot, norm::softmax, bias::t5_relative)
ATTNSINK_VARIANT(kv_bias, "kv_bias",
                 "p = softmax over [q·k*/√d, q·k_j/√d]; o = p* v* + Σ_j p_j v_j (k* --kstar, v* --vstar or 0)",
                 score::scaled_dot, norm::softmax, bias::kv_bias)
#undef ATTNSINK_VARIANT

using all = std::tuple<softmax, sigmoid, sigmoid_normalized, elu1, elu1_normalized, kernel_elu1,
                       kernel_elu1_normalized, kernel_identity, kernel_identity_abs_clamped, softmax_off_by_one,
                       sink_logit, softpick, scaled_softmax, softcap, alibi, t5_relative, kv_bias>;

// Builds the attention value of variant V from run-time settings.
template <class V>
typename V::type make(const settings& s) {
  typename V::type a{};
  a.pos = s.rope;
  a.mask = s.mask;
  using A = typename V::type;
  if constexpr (std::is_same_v<typename A::norm_type, norm::sink_logit>) a.norm.logits = s.sink;
  if constexpr (std::is_same_v<typename A::norm_type, norm::scaled_softmax>) a.norm.alpha = s.alpha;
  if constexpr (std::is_same_v<typename A::norm_type, norm::sigmoid>) a.norm.bias = s.sigmoid_bias;
  if constexpr (std::is_same_v<typename A::score_type, score::softcap<score::scaled_dot>>) a.score.cap = s.cap;
  if constexpr (std::is_same_v<typename A::bias_type, bias::kv_bias>) {
    a.bias.k = s.kstar;
    a.bias.v = s.vstar;
  }
  if constexpr (std::is_same_v<typename A::bias_type, bias::t5_relative>) a.bias.table = s.t5_table;
  return a;
}

// Calls fn(V{}) for every named variant V, in catalogue order.
template <class Fn>
void for_each(Fn&& fn) {
  std::apply([&](auto... v) { (fn(v), ...); }, all{});
}

// Calls fn(attention value) for the variant called `name`; false if none is.
template <class Fn>
bool visit(std::string_view name, const settings& s, Fn&& fn) {
  bool found = false;
  for_each([&](auto v) {
    using V = decltype(v);
    if (!found && name == V::name) {
      found = true;
      fn(make<V>(s));
    }
  });
  return found;
}

// The variant names, for messages.
inline std::string names() {
  std::string out;
  for_each([&](auto v) { out += (out.empty() ? "" : ", ") + std::string(decltype(v)::name); });
  return out;
}

}  // namespace attnsink::variants
