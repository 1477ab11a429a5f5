// attnsink/bias.hpp — score biases and the learnable key/value bias.
//
// A bias policy is a plain struct:
//   using axis = axis::bias;  static constexpr const char* name;
//   static constexpr bool additive;   // value(site) is added to s_ij
//   static constexpr bool has_kv;     // an extra key k*, value v* every query sees
//   T value(const site&)              // when additive
//   double kstar(kv_head, c), vstar(kv_head, c)   // when has_kv
//   void check(const problem&)
//
// Backward: an additive bias whose value reads a learnable array says which
// element through param_index(site) (-1: nothing learnable there); since
// value(site) = param[param_index(site)], d param[idx] = Σ dS over the sites
// that read idx. param_count(problem) is that array's length. The key/value
// bias's gradients (DESIGN §2, with u* = c·map(q_i)·map(k*), s* = post(u*)):
//   d map(k*) = Σ_i post'(u*_i) dS_i* · c map(q_i),   dv* = Σ_i p_i* dO_i,
// summed over batch, rows and the query heads sharing the kv head.
#pragma once

#include <concepts>
#include <cstddef>
#include <string>

#include "axis.hpp"

namespace attnsink {

template <class B>
concept bias_policy = std::same_as<typename B::axis, axis::bias> && requires(const B& b, const site& s, const problem& p) {
  { B::name } -> std::convertible_to<const char*>;
  { B::additive } -> std::convertible_to<bool>;
  { B::has_kv } -> std::convertible_to<bool>;
  { b.value(s) } -> std::convertible_to<double>;
  b.check(p);
};

// A bias the backward passes can differentiate (see the top of this file).
template <class B>
concept differentiable_bias = bias_policy<B> && requires(const B& b, const site& s, const problem& p) {
  { b.param_index(s) } -> std::convertible_to<std::ptrdiff_t>;
  { b.param_count(p) } -> std::convertible_to<std::size_t>;
};

namespace bias {

struct none {
  using axis = axis::bias;
  static constexpr const char* name = "none";
  static constexpr bool additive = false;
  static constexpr bool has_kv = false;
  ATTNSINK_HD double value(const site&) const { return 0.0; }
  ATTNSINK_HD std::ptrdiff_t param_index(const site&) const { return -1; }
  std::size_t param_count(const problem&) const { return 0; }
  void check(const problem&) const {}
};

// ALiBi (Press et al. 2022): bias_ij = -m_h (i - j), m_h = 2^{-8h/H} for h = 1..H.
struct alibi {
  using axis = axis::bias;
  static constexpr const char* name = "alibi";
  static constexpr bool additive = true;
  static constexpr bool has_kv = false;
  double max_bias = 8.0;
  ATTNSINK_HD double slope(std::size_t h, std::size_t heads) const {
    return math::pow(2.0, -max_bias * double(h + 1) / double(heads));
  }
  ATTNSINK_HD double value(const site& s) const { return -slope(s.head, s.heads) * double(s.qpos - s.kpos); }
  // fixed slopes: nothing to learn
  ATTNSINK_HD std::ptrdiff_t param_index(const site&) const { return -1; }
  std::size_t param_count(const problem&) const { return 0; }
  void check(const problem&) const {
    if (!(max_bias > 0) || !math::isfinite(max_bias)) throw value_error("bias.max_bias", "expected a finite value > 0");
  }
};

// T5 relative position buckets (Raffel et al. 2020): 32 buckets, max distance 128,
// unidirectional when the mask is causal, else half the buckets per direction.
// With a table g (heads × buckets) the bias is g_h(bucket); without one the
// fixed form adds the bucket index itself.
struct t5_relative {
  using axis = axis::bias;
  static constexpr const char* name = "t5_relative";
  static constexpr bool additive = true;
  static constexpr bool has_kv = false;
  std::size_t buckets = 32;
  std::size_t max_distance = 128;
  param_ref table;  // heads × buckets, optional

  ATTNSINK_HD std::size_t bucket(std::ptrdiff_t qpos, std::ptrdiff_t kpos, bool causal) const {
    std::ptrdiff_t n = qpos - kpos;  // -(memory - query)
    std::size_t nb = buckets, ret = 0;
    if (!causal) {
      nb /= 2;
      if (n < 0) ret += nb;
      n = n < 0 ? -n : n;
    } else if (n < 0) {
      n = 0;
    }
    const std::size_t exact = nb / 2;
    if (std::size_t(n) < exact) return ret + std::size_t(n);
    const double large = double(exact) + math::log(double(n) / double(exact)) /
                                              math::log(double(max_distance) / double(exact)) * double(nb - exact);
    std::size_t b = std::size_t(large);
    if (b > nb - 1) b = nb - 1;
    return ret + b;
  }
  ATTNSINK_HD double value(const site& s) const {
    const std::size_t b = bucket(s.qpos, s.kpos, s.causal);
    return table.empty() ? double(b) : table[s.head * buckets + b];
  }
  // d g_h(bucket) = Σ dS over the sites in that bucket; the fixed form learns nothing
  ATTNSINK_HD std::ptrdiff_t param_index(const site& s) const {
    return table.empty() ? -1 : std::ptrdiff_t(s.head * buckets + bucket(s.qpos, s.kpos, s.causal));
  }
  std::size_t param_count(const problem& p) const { return table.empty() ? 0 : p.heads * buckets; }
  void check(const problem& p) const {
    if (buckets < 4) throw value_error("bias.buckets", "expected at least 4 buckets");
    if (max_distance <= buckets / 2) throw value_error("bias.max_distance", "expected more than buckets/2");
    if (!table.empty()) table.check("t5_table", p.heads * buckets);
  }
};

// An extra key k*_h and value v*_h per kv head that every query sees; never
// rotated by RoPE, not touched by additive biases or the mask. With no v*
// array the value is the constant `vconst` (0 by default).
struct kv_bias {
  using axis = axis::bias;
  static constexpr const char* name = "kv_bias";
  static constexpr bool additive = false;
  static constexpr bool has_kv = true;
  param_ref k;  // kv_heads × head_dim
  param_ref v;  // kv_heads × value_dim, optional
  double vconst = 0.0;

  ATTNSINK_HD double value(const site&) const { return 0.0; }
  ATTNSINK_HD std::ptrdiff_t param_index(const site&) const { return -1; }
  std::size_t param_count(const problem&) const { return 0; }
  // v* is learnable only when given as an array; the constant has no gradient
  ATTNSINK_HD bool learns_vstar() const { return !v.empty(); }
  ATTNSINK_HD double kstar(std::size_t hk, std::size_t c, std::size_t d) const { return k[hk * d + c]; }
  ATTNSINK_HD double vstar(std::size_t hk, std::size_t c, std::size_t dv) const {
    return v.empty() ? vconst : v[hk * dv + c];
  }
  void check(const problem& p) const {
    k.check("kstar", p.kv_heads * p.dim);
    if (!v.empty()) v.check("vstar", p.kv_heads * p.vdim);
    if (!math::isfinite(vconst)) throw value_error("bias.vconst", "expected a finite value");
  }
};

// A user-supplied additive bias tensor B (batch, heads, tq, tk), contiguous.
struct tensor {
  using axis = axis::bias;
  static constexpr const char* name = "tensor";
  static constexpr bool additive = true;
  static constexpr bool has_kv = false;
  param_ref b;
  ATTNSINK_HD double value(const site& s) const {
    return b[index(s)];
  }
  // dB_ij = dS_ij
  ATTNSINK_HD std::ptrdiff_t param_index(const site& s) const { return std::ptrdiff_t(index(s)); }
  std::size_t param_count(const problem& p) const { return p.batch * p.heads * p.tq * p.tk; }
  ATTNSINK_HD std::size_t index(const site& s) const {
    return ((s.batch * s.heads + s.head) * s.tq + s.qrow) * s.tk + std::size_t(s.kpos);
  }
  void check(const problem& p) const {
    b.check("bias", p.batch * p.heads * p.tq * p.tk);
  }
};

}  // namespace bias
}  // namespace attnsink
