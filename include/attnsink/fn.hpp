// attnsink/fn.hpp — elementwise functions shared by kernel feature maps
// (score::kernel<Phi>) and non-negative normalizations (norm::normalized<F>).
// Each keeps its value and its derivative side by side.
#pragma once

#include <concepts>

#include "config.hpp"

namespace attnsink::fn {

// f(x) = x
struct identity {
  static constexpr const char* name = "identity";
  static constexpr bool non_negative = false;
  template <class T> ATTNSINK_INLINE static T value(T x) { return x; }
  // d/dx x = 1
  template <class T> ATTNSINK_INLINE static T derivative(T) { return T(1); }
};

// f(x) = max(x, 0)
struct relu {
  static constexpr const char* name = "relu";
  static constexpr bool non_negative = true;
  template <class T> ATTNSINK_INLINE static T value(T x) { return x > T(0) ? x : T(0); }
  // d/dx relu(x) = 1[x > 0]
  template <class T> ATTNSINK_INLINE static T derivative(T x) { return x > T(0) ? T(1) : T(0); }
};

// f(x) = elu(x) + 1 = x + 1 (x > 0), e^x (x <= 0)
struct elu_plus_one {
  static constexpr const char* name = "elu+1";
  static constexpr bool non_negative = true;
  template <class T> ATTNSINK_INLINE static T value(T x) { return x > T(0) ? x + T(1) : math::exp(x); }
  // d/dx = 1 (x > 0), e^x (x <= 0)
  template <class T> ATTNSINK_INLINE static T derivative(T x) { return x > T(0) ? T(1) : math::exp(x); }
};

// f(x) = 1 / (1 + e^{-x}), evaluated without overflow for large |x|.
struct sigmoid {
  static constexpr const char* name = "sigmoid";
  static constexpr bool non_negative = true;
  template <class T> ATTNSINK_INLINE static T value(T x) {
    if (x >= T(0)) return T(1) / (T(1) + math::exp(-x));
    const T e = math::exp(x);
    return e / (T(1) + e);
  }
  // d/dx σ(x) = σ(x)(1 - σ(x))
  template <class T> ATTNSINK_INLINE static T derivative(T x) {
    const T s = value(x);
    return s * (T(1) - s);
  }
};

// An elementwise function: value and derivative, host and device callable.
template <class F>
concept elementwise = requires(double x, float y) {
  { F::name } -> std::convertible_to<const char*>;
  { F::non_negative } -> std::convertible_to<bool>;
  { F::value(x) } -> std::same_as<double>;
  { F::derivative(x) } -> std::same_as<double>;
  { F::value(y) } -> std::same_as<float>;
};

}  // namespace attnsink::fn
