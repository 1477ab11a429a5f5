// attnsink/pos.hpp — positional transforms applied to q and k before the score.
//
// A positional policy is a plain struct:
//   using axis = axis::pos;  static constexpr const char* name;
//   bool rotates() const;                       // apply() changes vectors
//   void apply(T* x, d, pos, sign)              // in place; sign -1 rotates back (backward)
//   void check(const problem&)
// ALiBi and T5 relative positions are biases (bias.hpp); absolute embeddings
// live at the model level (the trainer).
#pragma once

#include <concepts>
#include <cstddef>
#include <string>
#include <vector>

#include "axis.hpp"

namespace attnsink {

template <class P>
concept pos_policy = std::same_as<typename P::axis, axis::pos> && requires(const P& p, float* xf, double* xd,
                                                                          std::size_t d, const problem& pr) {
  { P::name } -> std::convertible_to<const char*>;
  { p.rotates() } -> std::convertible_to<bool>;
  p.apply(xf, d, std::ptrdiff_t{}, 1);
  p.apply(xd, d, std::ptrdiff_t{}, 1);
  p.check(pr);
};

namespace pos {

// No positional encoding.
struct nope {
  using axis = axis::pos;
  static constexpr const char* name = "nope";
  ATTNSINK_HD constexpr bool rotates() const { return false; }
  template <class T> ATTNSINK_HD void apply(T*, std::size_t, std::ptrdiff_t, int) const {}
  void check(const problem&) const {}
};

// RoPE, rotate-half (LLaMA / GPT-NeoX) form: for c < d/2, θ_c = base^{-2c/d},
//   x'_c       = x_c cos(pθ_c) - x_{c+d/2} sin(pθ_c)
//   x'_{c+d/2} = x_{c+d/2} cos(pθ_c) + x_c sin(pθ_c)
// at position p (0-based). The angle is formed in double so that long
// sequences keep float accuracy. Backward rotates by -pθ_c (sign = -1): the
// rotation is orthogonal, so its transpose (what the chain rule applies to the
// gradient of the rotated vector) is the inverse rotation.
struct rope {
  using axis = axis::pos;
  static constexpr const char* name = "rope";
  double base = 10000.0;
  bool enabled = true;  // a run-time off switch, so one type serves "rope on or off"
  // Optional precomputed angles (rope_table below): (cos, sin) of p·θ_c for
  // p < table_positions and c < table_dim/2. It saves the trigonometry when
  // the same positions are rotated again and again (a training step rotates
  // every q and k several times); apply() gives bit-identical results with or
  // without it. It must outlive the calls and be readable where they run.
  const double* table = nullptr;
  std::size_t table_positions = 0, table_dim = 0;

  ATTNSINK_HD bool rotates() const { return enabled; }
  template <class T> ATTNSINK_HD void apply(T* x, std::size_t d, std::ptrdiff_t p, int sign) const {
    if (!enabled) return;
    const std::size_t half = d / 2;
    const bool cached = table && d == table_dim && p >= 0 && std::size_t(p) < table_positions;
    for (std::size_t c = 0; c < half; ++c) {
      double cs, sn;
      if (cached) {
        cs = table[(std::size_t(p) * half + c) * 2];
        sn = table[(std::size_t(p) * half + c) * 2 + 1] * double(sign);
      } else {
        const double a = double(p) * theta(c, d) * double(sign);
        cs = math::cos(a);
        sn = math::sin(a);
      }
      const double x0 = double(x[c]), x1 = double(x[c + half]);
      x[c] = T(x0 * cs - x1 * sn);
      x[c + half] = T(x1 * cs + x0 * sn);
    }
  }
  // θ_c = base^{-2c/d}
  ATTNSINK_HD double theta(std::size_t c, std::size_t d) const { return math::pow(base, -2.0 * double(c) / double(d)); }
  void check(const problem& p) const {
    if (!enabled) return;
    if (p.dim % 2 != 0) throw shape_error("q", "rope needs an even head_dim, got " + std::to_string(p.dim));
    if (!(base > 1) || !math::isfinite(base)) throw value_error("pos.base", "expected a finite value > 1");
  }
};

// The (cos, sin) table rope::table reads, for positions [0, positions) and head_dim d.
inline std::vector<double> rope_table(const rope& r, std::size_t positions, std::size_t d) {
  std::vector<double> t(positions * (d / 2) * 2);
  for (std::size_t p = 0; p < positions; ++p)
    for (std::size_t c = 0; c < d / 2; ++c) {
      const double a = double(p) * r.theta(c, d);
      t[(p * (d / 2) + c) * 2] = math::cos(a);
      t[(p * (d / 2) + c) * 2 + 1] = math::sin(a);
    }
  return t;
}

}  // namespace pos
}  // namespace attnsink
