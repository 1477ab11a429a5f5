// attnsink/norm.hpp — row normalizations, written for one streaming pass.
//
// Over the keys j a query row sees (and the kv_bias key, if any) a
// normalization keeps a state (m, l): m a running maximum (only when
// tracks_max), l a running denominator. Each score s contributes
//   numerator   weight(s, m)      to the output accumulator (· v_j),
//   denominator mass(s, m)        to l,
// and when m grows to m' both are rescaled by e^{m - m'} (tracks_max only).
// At the end the output is acc · finish(m, l), so p_ij = weight(s_ij, m) · finish(m, l).
// init(head) gives the state before any key (the "1" of off-by-one, the sink
// logit of gpt-oss). A row that sees no key ends with acc = 0, so o_i = 0.
//
// A normalization is a plain struct:
//   using axis = axis::norm;  static constexpr const char* name;
//   static constexpr bool tracks_max, has_denominator, sums_to_one;
//   static constexpr bool non_negative;   // weights are >= 0 (for sink proxies)
//   row_init init(head); T weight(T s, T m); T mass(T s, T m); T finish(T m, T l);
//   void check(const problem&)
//
// Backward (a differentiable_norm adds, beside each forward member):
//   T weight_derivative(T s, T m)     // d weight / d s
//   T mass_derivative(T s, T m)       // d mass / d s
//   T finish_log_derivative(T m, T l) // g = d log finish / d l
// With p_j = weight(s_j)·f and l = init + Σ_k mass(s_k), the chain rule gives,
// for f = finish(m, l) and D = Σ_k p_k dP_k = dO·O (the kv_bias value included),
//   dS_j = weight'(s_j)·f·dP_j + mass'(s_j)·g·D.
// The shift by m cancels in p, so m is held fixed. A learned init (the sink
// logit) adds init_gradient(head, m, l, D): its mass e^{b - m} enters l only.
#pragma once

#include <concepts>
#include <cstddef>
#include <string>

#include "axis.hpp"
#include "fn.hpp"

namespace attnsink {

// Normalizer state before the first key.
struct row_init {
  double m;
  double l;
};

template <class N>
concept norm_policy = std::same_as<typename N::axis, axis::norm> && requires(const N& n, double s, float sf,
                                                                            std::size_t h, const problem& p) {
  { N::name } -> std::convertible_to<const char*>;
  { N::tracks_max } -> std::convertible_to<bool>;
  { N::has_denominator } -> std::convertible_to<bool>;
  { N::sums_to_one } -> std::convertible_to<bool>;
  { N::non_negative } -> std::convertible_to<bool>;
  { n.init(h) } -> std::same_as<row_init>;
  { n.weight(s, s) } -> std::same_as<double>;
  { n.weight(sf, sf) } -> std::same_as<float>;
  { n.mass(s, s) } -> std::same_as<double>;
  { n.finish(s, s) } -> std::same_as<double>;
  n.check(p);
};

// A normalization the backward passes can differentiate (see the top of this file).
template <class N>
concept differentiable_norm = norm_policy<N> && requires(const N& n, double s, float sf) {
  { n.weight_derivative(s, s) } -> std::same_as<double>;
  { n.weight_derivative(sf, sf) } -> std::same_as<float>;
  { n.mass_derivative(s, s) } -> std::same_as<double>;
  { n.finish_log_derivative(s, s) } -> std::same_as<double>;
};

namespace norm {

// Shared by the exponential family: weight = mass = e^{s - m}, rescaled by e^{m - m'}.
struct exp_family {
  using axis = axis::norm;
  static constexpr bool tracks_max = true;
  static constexpr bool has_denominator = true;
  static constexpr bool non_negative = true;
  template <class T> ATTNSINK_HD T weight(T s, T m) const { return math::exp(s - m); }
  template <class T> ATTNSINK_HD T mass(T s, T m) const { return math::exp(s - m); }
  // d/ds e^{s - m} = e^{s - m}, for both
  template <class T> ATTNSINK_HD T weight_derivative(T s, T m) const { return math::exp(s - m); }
  template <class T> ATTNSINK_HD T mass_derivative(T s, T m) const { return math::exp(s - m); }
};

// p_ij = e^{s_ij} / Σ_j e^{s_ij}
struct softmax : exp_family {
  static constexpr const char* name = "softmax";
  static constexpr bool sums_to_one = true;
  ATTNSINK_HD row_init init(std::size_t) const { return {math::neg_inf<double>(), 0.0}; }
  template <class T> ATTNSINK_HD T finish(T, T l) const { return l > T(0) ? T(1) / l : T(0); }
  // d log(1/l) / dl = -1/l; an empty row (l = 0) has nothing to differentiate
  template <class T> ATTNSINK_HD T finish_log_derivative(T, T l) const { return l > T(0) ? T(-1) / l : T(0); }
  void check(const problem&) const {}
};

// p_ij = e^{s_ij} / (1 + Σ_j e^{s_ij})  (Miller 2023): the "1" is a key with logit 0 and no value.
struct softmax_off_by_one : exp_family {
  static constexpr const char* name = "softmax_off_by_one";
  static constexpr bool sums_to_one = false;
  ATTNSINK_HD row_init init(std::size_t) const { return {0.0, 1.0}; }
  template <class T> ATTNSINK_HD T finish(T, T l) const { return T(1) / l; }
  // d log(1/l) / dl = -1/l (l >= 1 always: the "1" is in it)
  template <class T> ATTNSINK_HD T finish_log_derivative(T, T l) const { return T(-1) / l; }
  void check(const problem&) const {}
};

// p_ij = e^{s_ij} / (e^{b_h} + Σ_j e^{s_ij}) with a learned logit b_h per query head (gpt-oss).
struct sink_logit : exp_family {
  static constexpr const char* name = "sink_logit";
  static constexpr bool sums_to_one = false;
  param_ref logits;  // one per query head
  ATTNSINK_HD row_init init(std::size_t h) const { return {logits[h], 1.0}; }
  template <class T> ATTNSINK_HD T finish(T, T l) const { return T(1) / l; }
  template <class T> ATTNSINK_HD T finish_log_derivative(T, T l) const { return T(-1) / l; }
  // init: l = e^{b_h - m} at the final m, so d l / d b_h = e^{b_h - m} and
  // d b_h = e^{b_h - m} · g · D = -p_sink · D (DESIGN §2), summed over rows.
  template <class T> ATTNSINK_HD T init_gradient(std::size_t h, T m, T l, T D) const {
    return -math::exp(T(logits[h]) - m) / l * D;
  }
  void check(const problem& p) const { logits.check("sink", p.heads); }
};

// p_ij = α · softmax(s_i)_j
struct scaled_softmax : exp_family {
  static constexpr const char* name = "scaled_softmax";
  static constexpr bool sums_to_one = false;
  double alpha = 1.0;
  ATTNSINK_HD row_init init(std::size_t) const { return {math::neg_inf<double>(), 0.0}; }
  template <class T> ATTNSINK_HD T finish(T, T l) const { return l > T(0) ? T(alpha) / l : T(0); }
  // d log(α/l) / dl = -1/l: α cancels in g and stays in f
  template <class T> ATTNSINK_HD T finish_log_derivative(T, T l) const { return l > T(0) ? T(-1) / l : T(0); }
  void check(const problem&) const {
    if (!math::isfinite(alpha)) throw value_error("norm.alpha", "expected a finite value");
  }
};

// Pointwise weights with no row state: p_ij = f(s_ij).
template <class F>
struct pointwise {
  using axis = axis::norm;
  static constexpr bool tracks_max = false;
  static constexpr bool has_denominator = false;
  static constexpr bool sums_to_one = false;
  static constexpr bool non_negative = F::non_negative;
  ATTNSINK_HD row_init init(std::size_t) const { return {0.0, 0.0}; }
  template <class T> ATTNSINK_HD T mass(T, T) const { return T(0); }
  template <class T> ATTNSINK_HD T finish(T, T) const { return T(1); }
  // no denominator: dS = weight'(s) · dP
  template <class T> ATTNSINK_HD T mass_derivative(T, T) const { return T(0); }
  template <class T> ATTNSINK_HD T finish_log_derivative(T, T) const { return T(0); }
};

// p_ij = σ(s_ij + b), no normalization (Ramapuram et al. 2024 use b = -log n).
struct sigmoid : pointwise<fn::sigmoid> {
  static constexpr const char* name = "sigmoid";
  double bias = 0.0;
  template <class T> ATTNSINK_HD T weight(T s, T) const { return fn::sigmoid::value(s + T(bias)); }
  // σ'(s + b) = σ(1 - σ)
  template <class T> ATTNSINK_HD T weight_derivative(T s, T) const { return fn::sigmoid::derivative(s + T(bias)); }
  void check(const problem&) const {
    if (!math::isfinite(bias)) throw value_error("norm.bias", "expected a finite value");
  }
};

// p_ij = elu(s_ij) + 1, no normalization.
struct elu_plus_one : pointwise<fn::elu_plus_one> {
  static constexpr const char* name = "elu_plus_one";
  template <class T> ATTNSINK_HD T weight(T s, T) const { return fn::elu_plus_one::value(s); }
  template <class T> ATTNSINK_HD T weight_derivative(T s, T) const { return fn::elu_plus_one::derivative(s); }
  void check(const problem&) const {}
};

// p_ij = s_ij, no normalization (linear attention with a kernel score).
struct identity : pointwise<fn::identity> {
  static constexpr const char* name = "identity";
  template <class T> ATTNSINK_HD T weight(T s, T) const { return s; }
  template <class T> ATTNSINK_HD T weight_derivative(T, T) const { return T(1); }
  void check(const problem&) const {}
};

// p_ij = f(s_ij) / (Σ_j f(s_ij) + 1e-8) for a non-negative f.
template <fn::elementwise F>
struct normalized {
  static_assert(F::non_negative,
                "attnsink::norm::normalized<F> needs a non-negative F (fn::sigmoid, fn::elu_plus_one, fn::relu).");
  using axis = axis::norm;
  using function = F;
  static constexpr const char* name = "normalized";
  static constexpr bool tracks_max = false;
  static constexpr bool has_denominator = true;
  static constexpr bool sums_to_one = true;
  static constexpr bool non_negative = true;
  static constexpr double eps = 1e-8;
  ATTNSINK_HD row_init init(std::size_t) const { return {0.0, 0.0}; }
  template <class T> ATTNSINK_HD T weight(T s, T) const { return F::value(s); }
  template <class T> ATTNSINK_HD T mass(T s, T) const { return F::value(s); }
  template <class T> ATTNSINK_HD T finish(T, T l) const { return T(1) / (l + T(eps)); }
  // f'(s) for both; d log(1/(l + eps)) / dl = -1/(l + eps)
  template <class T> ATTNSINK_HD T weight_derivative(T s, T) const { return F::derivative(s); }
  template <class T> ATTNSINK_HD T mass_derivative(T s, T) const { return F::derivative(s); }
  template <class T> ATTNSINK_HD T finish_log_derivative(T, T l) const { return T(-1) / (l + T(eps)); }
  void check(const problem&) const {}
};

// p_ij = s_ij / max(|Σ_j s_ij|, 1), for signed kernel scores.
struct abs_clamped {
  using axis = axis::norm;
  static constexpr const char* name = "abs_clamped";
  static constexpr bool tracks_max = false;
  static constexpr bool has_denominator = true;
  static constexpr bool sums_to_one = false;
  static constexpr bool non_negative = false;
  ATTNSINK_HD row_init init(std::size_t) const { return {0.0, 0.0}; }
  template <class T> ATTNSINK_HD T weight(T s, T) const { return s; }
  template <class T> ATTNSINK_HD T mass(T s, T) const { return s; }
  template <class T> ATTNSINK_HD T finish(T, T l) const { return T(1) / math::max(math::fabs(l), T(1)); }
  // quotient rule: d log(1/|l|) / dl = -1/l while |l| > 1; the clamp is flat
  template <class T> ATTNSINK_HD T weight_derivative(T, T) const { return T(1); }
  template <class T> ATTNSINK_HD T mass_derivative(T, T) const { return T(1); }
  template <class T> ATTNSINK_HD T finish_log_derivative(T, T l) const {
    return math::fabs(l) > T(1) ? T(-1) / l : T(0);
  }
  void check(const problem&) const {}
};

// Softpick (Zuhri et al. 2025): p_ij = relu(e^{s_ij} - 1) / (Σ_j |e^{s_ij} - 1| + eps).
// Kept shifted by the running max m >= 0: numerator relu(e^{s-m} - e^{-m}),
// denominator Σ|e^{s-m} - e^{-m}| + eps·e^{-m}; both rescale by e^{m - m'}.
struct softpick {
  using axis = axis::norm;
  static constexpr const char* name = "softpick";
  static constexpr bool tracks_max = true;
  static constexpr bool has_denominator = true;
  static constexpr bool sums_to_one = false;
  static constexpr bool non_negative = true;
  double eps = 1e-6;
  ATTNSINK_HD row_init init(std::size_t) const { return {0.0, 0.0}; }
  template <class T> ATTNSINK_HD T weight(T s, T m) const {
    const T x = math::exp(s - m) - math::exp(-m);
    return x > T(0) ? x : T(0);
  }
  template <class T> ATTNSINK_HD T mass(T s, T m) const { return math::fabs(math::exp(s - m) - math::exp(-m)); }
  template <class T> ATTNSINK_HD T finish(T m, T l) const { return T(1) / (l + T(eps) * math::exp(-m)); }
  // d/ds relu(e^{s-m} - e^{-m}) = e^{s-m} where s > 0; d/ds |e^{s-m} - e^{-m}| = sign(s) e^{s-m}
  template <class T> ATTNSINK_HD T weight_derivative(T s, T m) const { return s > T(0) ? math::exp(s - m) : T(0); }
  template <class T> ATTNSINK_HD T mass_derivative(T s, T m) const {
    return s > T(0) ? math::exp(s - m) : -math::exp(s - m);
  }
  template <class T> ATTNSINK_HD T finish_log_derivative(T m, T l) const { return T(-1) / (l + T(eps) * math::exp(-m)); }
  void check(const problem&) const {
    if (!(eps > 0) || !math::isfinite(eps)) throw value_error("norm.eps", "expected a finite value > 0");
  }
};

}  // namespace norm
}  // namespace attnsink
