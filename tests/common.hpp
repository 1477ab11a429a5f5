// tests/common.hpp — inputs, poisoning and error measures shared by the tests.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <random>
#include <vector>

#include <attnsink/attnsink.hpp>

namespace attnsink::test {

// Fresh random values, never zero and never all equal: N(0, scale²) with a
// seed that differs per call site.
inline std::vector<double> random_vector(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 gen(seed * 0x9E3779B97F4A7C15ull + 12345);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> x(n);
  for (auto& e : x) {
    do e = normal(gen);
    while (e == 0.0);
  }
  return x;
}

template <class T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// Values as float32 would hold them, kept in double: the reference then sees
// exactly what a float backend sees.
inline std::vector<double> round_to_float(const std::vector<double>& x) {
  std::vector<double> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = double(float(x[i]));
  return y;
}

template <class T>
void poison(std::vector<T>& x) {
  for (auto& e : x) e = std::numeric_limits<T>::quiet_NaN();
}

template <class T>
bool all_finite(const std::vector<T>& x) {
  for (auto e : x)
    if (!std::isfinite(double(e))) return false;
  return true;
}

// ||a - b|| / max(||b||, tiny): the relative L2 error of a against reference b.
template <class T, class U>
double rel_l2(const std::vector<T>& a, const std::vector<U>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// One problem's operands, in double (rounded to float precision) and float.
struct operands {
  std::size_t batch, heads, kv_heads, tq, tk, dim, vdim;
  std::vector<double> q, k, v;
  std::vector<float> qf, kf, vf;

  operands(std::size_t b, std::size_t h, std::size_t hk, std::size_t tq_, std::size_t tk_, std::size_t d,
           std::size_t dv, std::uint64_t seed, double scale = 1.0)
      : batch(b), heads(h), kv_heads(hk), tq(tq_), tk(tk_), dim(d), vdim(dv),
        q(round_to_float(random_vector(b * h * tq_ * d, seed, scale))),
        k(round_to_float(random_vector(b * hk * tk_ * d, seed + 1, scale))),
        v(round_to_float(random_vector(b * hk * tk_ * dv, seed + 2))),
        qf(cast<float>(q)), kf(cast<float>(k)), vf(cast<float>(v)) {}

  template <class T>
  tensor4<const T> Q() const {
    if constexpr (std::is_same_v<T, float>) return {qf.data(), batch, heads, tq, dim};
    else return {q.data(), batch, heads, tq, dim};
  }
  template <class T>
  tensor4<const T> K() const {
    if constexpr (std::is_same_v<T, float>) return {kf.data(), batch, kv_heads, tk, dim};
    else return {k.data(), batch, kv_heads, tk, dim};
  }
  template <class T>
  tensor4<const T> V() const {
    if constexpr (std::is_same_v<T, float>) return {vf.data(), batch, kv_heads, tk, vdim};
    else return {v.data(), batch, kv_heads, tk, vdim};
  }
  std::size_t out_size() const { return batch * heads * tq * vdim; }
  std::size_t rows() const { return batch * heads * tq; }
};

// Output, row stats, all poisoned with NaN before a run.
template <class T>
struct result {
  std::vector<T> out, m, l;
  explicit result(const operands& p) : out(p.out_size()), m(p.rows()), l(p.rows()) {
    poison(out);
    poison(m);
    poison(l);
  }
  tensor4<T> O(const operands& p) { return {out.data(), p.batch, p.heads, p.tq, p.vdim}; }
  row_stats<T> stats() { return {m.data(), l.data()}; }
};

}  // namespace attnsink::test
