// attnsink/metrics/reduce.hpp — the reductions every sink metric is made of.
//
// Each is shaped like a Kokkos reduction functor and a oneTBB reduction:
//   using value_type = ...;                 // a small trivially copyable partial result
//   void init(value_type&) const;           // the identity
//   void join(value_type& dst, const value_type& src) const;   // associative, commutative
//   R final(const value_type&) const;       // the metric from the joined partials
// plus an add(...) that folds one element in. Partials can be joined in any
// order, so a metric computed by tbb::parallel_reduce or Kokkos::parallel_reduce
// over any split equals the serial one up to rounding.
#pragma once

#include <concepts>
#include <cstddef>
#include <limits>

#include "../config.hpp"

namespace attnsink::metrics {

// The reducer shape above: init, join and final on a value_type.
template <class R>
concept reducer = requires(const R& r, typename R::value_type& v, const typename R::value_type& w) {
  r.init(v);
  r.join(v, w);
  r.final(w);
};

// A running sum and the number of terms in it.
struct sum_count {
  double sum = 0;
  double count = 0;
};

// The mean of the values added. α_k is one: the mean of A_{t,k} over t ≥ k,
// with the positions the mask hides adding 0.
struct mean {
  using value_type = sum_count;
  ATTNSINK_HD void init(value_type& v) const { v = {0.0, 0.0}; }
  ATTNSINK_HD void join(value_type& dst, const value_type& src) const {
    dst.sum += src.sum;
    dst.count += src.count;
  }
  ATTNSINK_HD void add(value_type& v, double x) const {
    v.sum += x;
    v.count += 1;
  }
  // NaN for an empty mean: no value is a better answer than a made-up 0.
  ATTNSINK_HD double final(const value_type& v) const {
    return v.count > 0 ? v.sum / v.count : std::numeric_limits<double>::quiet_NaN();
  }
};

// The fraction of values strictly above eps: Sink_k^ε is this over the α_k of
// every (sample, layer, head). Strict, so α = ε is not a sink.
struct exceed_rate {
  using value_type = sum_count;
  double eps = 0.3;
  ATTNSINK_HD void init(value_type& v) const { v = {0.0, 0.0}; }
  ATTNSINK_HD void join(value_type& dst, const value_type& src) const {
    dst.sum += src.sum;
    dst.count += src.count;
  }
  ATTNSINK_HD void add(value_type& v, double x) const {
    v.sum += x > eps ? 1.0 : 0.0;
    v.count += 1;
  }
  ATTNSINK_HD double final(const value_type& v) const {
    return v.count > 0 ? v.sum / v.count : std::numeric_limits<double>::quiet_NaN();
  }
};

// ‖x‖₂ of the components added.
struct l2_norm {
  using value_type = double;  // the sum of squares
  ATTNSINK_HD void init(value_type& v) const { v = 0.0; }
  ATTNSINK_HD void join(value_type& dst, const value_type& src) const { dst += src; }
  ATTNSINK_HD void add(value_type& v, double x) const { v += x * x; }
  ATTNSINK_HD double final(const value_type& v) const { return math::sqrt(v); }
};

// The massive-activation ratio ‖h_1‖ / mean_{t≠1} ‖h_t‖ from per-token norms
// (token 0 here is the paper's h_1).
struct massive_ratio {
  struct value_type {
    double first = 0;   // ‖h_1‖, once seen
    double others = 0;  // Σ_{t≠1} ‖h_t‖
    double count = 0;   // how many t ≠ 1
  };
  ATTNSINK_HD void init(value_type& v) const { v = {0.0, 0.0, 0.0}; }
  ATTNSINK_HD void join(value_type& dst, const value_type& src) const {
    dst.first += src.first;  // exactly one partial holds token 0; the others hold 0
    dst.others += src.others;
    dst.count += src.count;
  }
  ATTNSINK_HD void add(value_type& v, std::size_t token, double norm) const {
    if (token == 0) {
      v.first += norm;
    } else {
      v.others += norm;
      v.count += 1;
    }
  }
  ATTNSINK_HD double final(const value_type& v) const {
    return v.count > 0 && v.others > 0 ? v.first / (v.others / v.count) : std::numeric_limits<double>::quiet_NaN();
  }
};

}  // namespace attnsink::metrics
