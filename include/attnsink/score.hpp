// attnsink/score.hpp — score policies: s_ij = post(c · map(q_i) · map(k_j)).
//
// A score policy is a plain struct:
//   using axis = axis::score;  static constexpr const char* name;
//   static constexpr bool maps_features;   // map() changes q and k
//   static constexpr bool has_post;        // post() is not the identity
//   std::size_t feature_dim(d)             // length of map(x)
//   void map(const T* x, T* out, d)        // feature map, applied to q and k alike
//   double scale(d)                        // c
//   T post(T s), T post_derivative(T s)    // applied to c · map(q)·map(k)
//   void check(const problem&)             // throws for bad parameters
// map() is applied after the positional transform; post() before any bias.
//
// Backward (a differentiable_score adds, beside each forward member):
//   std::size_t param_count(d)            // learnable map weights (0: none)
//   void map_backward(x, dphi, dx, d, dparams)
//       dx = (d map / d x)ᵀ · dphi at x; adds d map / d weights into
//       dparams[0..param_count) when dparams is not null
// and post_derivative(u) above. With u = c·map(q)·map(k) and s = post(u),
//   d map(q_i) = c Σ_j post'(u_ij) dS_ij map(k_j), d map(k_j) likewise.
#pragma once

#include <concepts>
#include <cstddef>
#include <string>

#include "axis.hpp"
#include "fn.hpp"

namespace attnsink {

template <class S>
concept score_policy = std::same_as<typename S::axis, axis::score> && requires(const S& s, const float* xf, float* of,
                                                                              const double* xd, double* od, double v,
                                                                              std::size_t d, const problem& p) {
  { S::name } -> std::convertible_to<const char*>;
  { S::maps_features } -> std::convertible_to<bool>;
  { S::has_post } -> std::convertible_to<bool>;
  { s.feature_dim(d) } -> std::convertible_to<std::size_t>;
  s.map(xf, of, d);
  s.map(xd, od, d);
  { s.scale(d) } -> std::convertible_to<double>;
  { s.post(v) } -> std::same_as<double>;
  { s.post_derivative(v) } -> std::same_as<double>;
  s.check(p);
};

// A score the backward passes can differentiate (see the top of this file).
template <class S>
concept differentiable_score = score_policy<S> && requires(const S& s, const float* xf, float* of, const double* xd,
                                                          double* od, std::size_t d) {
  { s.param_count(d) } -> std::convertible_to<std::size_t>;
  s.map_backward(xf, xf, of, d, od);
  s.map_backward(xd, xd, od, d, od);
};

namespace score {

// s = c q·k, c = 1/sqrt(d) unless `factor` is set (> 0).
struct scaled_dot {
  using axis = axis::score;
  static constexpr const char* name = "scaled_dot";
  static constexpr bool maps_features = false;
  static constexpr bool has_post = false;
  double factor = 0.0;  // 0: 1/sqrt(head_dim)

  ATTNSINK_HD std::size_t feature_dim(std::size_t d) const { return d; }
  template <class T> ATTNSINK_HD void map(const T* x, T* out, std::size_t d) const {
    for (std::size_t c = 0; c < d; ++c) out[c] = x[c];
  }
  ATTNSINK_HD double scale(std::size_t d) const { return factor > 0 ? factor : 1.0 / math::sqrt(double(d)); }
  template <class T> ATTNSINK_HD T post(T s) const { return s; }
  // d post / d s = 1
  template <class T> ATTNSINK_HD T post_derivative(T) const { return T(1); }
  ATTNSINK_HD std::size_t param_count(std::size_t) const { return 0; }
  // map is the identity: dx = dphi
  template <class T> ATTNSINK_HD void map_backward(const T*, const T* dphi, T* dx, std::size_t d, double*) const {
    for (std::size_t c = 0; c < d; ++c) dx[c] = dphi[c];
  }
  void check(const problem&) const {
    if (!(factor >= 0) || !math::isfinite(factor)) throw value_error("score.factor", "expected a finite value >= 0");
  }
};

// Logit soft-capping (Gemma 2, Grok): s = cap · tanh(inner(s) / cap).
template <score_policy Inner = scaled_dot>
struct softcap {
  using axis = axis::score;
  static constexpr const char* name = "softcap";
  static constexpr bool maps_features = Inner::maps_features;
  static constexpr bool has_post = true;
  Inner inner{};
  double cap = 50.0;

  ATTNSINK_HD std::size_t feature_dim(std::size_t d) const { return inner.feature_dim(d); }
  template <class T> ATTNSINK_HD void map(const T* x, T* out, std::size_t d) const { inner.map(x, out, d); }
  ATTNSINK_HD double scale(std::size_t d) const { return inner.scale(d); }
  template <class T> ATTNSINK_HD T post(T s) const { return T(cap) * math::tanh(inner.post(s) / T(cap)); }
  // d/ds cap·tanh(u/cap) = (1 - tanh²(u/cap)) · du/ds
  template <class T> ATTNSINK_HD T post_derivative(T s) const {
    const T t = math::tanh(inner.post(s) / T(cap));
    return (T(1) - t * t) * inner.post_derivative(s);
  }
  ATTNSINK_HD std::size_t param_count(std::size_t d) const { return inner.param_count(d); }
  template <class T> ATTNSINK_HD void map_backward(const T* x, const T* dphi, T* dx, std::size_t d, double* dp) const {
    inner.map_backward(x, dphi, dx, d, dp);
  }
  void check(const problem& p) const {
    inner.check(p);
    if (!(cap > 0) || !math::isfinite(cap)) throw value_error("score.cap", "expected a finite value > 0");
  }
};

// Linear-attention kernel form: s = φ(q)·φ(k) (· 1/sqrt(d) when `scaled`).
template <fn::elementwise Phi>
struct kernel {
  using axis = axis::score;
  using phi = Phi;
  static constexpr const char* name = "kernel";
  static constexpr bool maps_features = !std::same_as<Phi, fn::identity>;
  static constexpr bool has_post = false;
  bool scaled = false;

  ATTNSINK_HD std::size_t feature_dim(std::size_t d) const { return d; }
  template <class T> ATTNSINK_HD void map(const T* x, T* out, std::size_t d) const {
    for (std::size_t c = 0; c < d; ++c) out[c] = Phi::value(x[c]);
  }
  ATTNSINK_HD double scale(std::size_t d) const { return scaled ? 1.0 / math::sqrt(double(d)) : 1.0; }
  template <class T> ATTNSINK_HD T post(T s) const { return s; }
  template <class T> ATTNSINK_HD T post_derivative(T) const { return T(1); }
  ATTNSINK_HD std::size_t param_count(std::size_t) const { return 0; }
  // out_c = φ(x_c): dx_c = φ'(x_c) dphi_c
  template <class T> ATTNSINK_HD void map_backward(const T* x, const T* dphi, T* dx, std::size_t d, double*) const {
    for (std::size_t c = 0; c < d; ++c) dx[c] = Phi::derivative(x[c]) * dphi[c];
  }
  void check(const problem&) const {}
};

// Learnable MLP feature map shared by q and k: φ(x) = W2 relu(W1 x), with
// W1 (hidden × d) and W2 (features × hidden) row-major; s = φ(q)·φ(k).
struct mlp_kernel {
  using axis = axis::score;
  static constexpr const char* name = "mlp_kernel";
  static constexpr bool maps_features = true;
  static constexpr bool has_post = false;
  static constexpr std::size_t max_hidden = 512;
  param_ref w1, w2;
  std::size_t hidden = 0, features = 0;
  bool scaled = false;

  ATTNSINK_HD std::size_t feature_dim(std::size_t) const { return features; }
  template <class T> ATTNSINK_HD void map(const T* x, T* out, std::size_t d) const {
    T h[max_hidden];
    for (std::size_t r = 0; r < hidden; ++r) {
      double a = 0;
      for (std::size_t c = 0; c < d; ++c) a += w1[r * d + c] * double(x[c]);
      h[r] = T(a > 0 ? a : 0);
    }
    for (std::size_t r = 0; r < features; ++r) {
      double a = 0;
      for (std::size_t c = 0; c < hidden; ++c) a += w2[r * hidden + c] * double(h[c]);
      out[r] = T(a);
    }
  }
  ATTNSINK_HD double scale(std::size_t) const { return scaled ? 1.0 / math::sqrt(double(features)) : 1.0; }
  template <class T> ATTNSINK_HD T post(T s) const { return s; }
  template <class T> ATTNSINK_HD T post_derivative(T) const { return T(1); }
  // dparams: dW1 (hidden × d) then dW2 (features × hidden), the layout of w1, w2.
  ATTNSINK_HD std::size_t param_count(std::size_t d) const { return hidden * d + features * hidden; }
  template <class T> ATTNSINK_HD void map_backward(const T* x, const T* dphi, T* dx, std::size_t d, double* dp) const {
    double a[max_hidden], da[max_hidden];
    // a = W1 x; h = relu(a)
    for (std::size_t r = 0; r < hidden; ++r) {
      double acc = 0;
      for (std::size_t c = 0; c < d; ++c) acc += w1[r * d + c] * double(x[c]);
      a[r] = acc;
      da[r] = 0;
    }
    // out = W2 h: dW2 += dphi ⊗ h, dh = W2ᵀ dphi
    for (std::size_t r = 0; r < features; ++r) {
      const double g = double(dphi[r]);
      for (std::size_t c = 0; c < hidden; ++c) {
        const double h = a[c] > 0 ? a[c] : 0;
        if (dp) dp[hidden * d + r * hidden + c] += g * h;
        da[c] += w2[r * hidden + c] * g;
      }
    }
    // h = relu(a): da = dh ⊙ 1[a > 0]; a = W1 x: dW1 += da ⊗ x, dx = W1ᵀ da
    for (std::size_t r = 0; r < hidden; ++r) da[r] = a[r] > 0 ? da[r] : 0;
    if (dp)
      for (std::size_t r = 0; r < hidden; ++r)
        for (std::size_t c = 0; c < d; ++c) dp[r * d + c] += da[r] * double(x[c]);
    for (std::size_t c = 0; c < d; ++c) {
      double acc = 0;
      for (std::size_t r = 0; r < hidden; ++r) acc += w1[r * d + c] * da[r];
      dx[c] = T(acc);
    }
  }
  void check(const problem& p) const {
    const std::size_t d = p.dim;
    if (hidden == 0 || hidden > max_hidden)
      throw value_error("score.hidden", "expected 1.." + std::to_string(max_hidden) + ", got " + std::to_string(hidden));
    if (features == 0) throw value_error("score.features", "expected at least 1 feature");
    w1.check("score.w1", hidden * d);
    w2.check("score.w2", features * hidden);
  }
};

}  // namespace score
}  // namespace attnsink
