// attnsink/train/optim.hpp — AdamW with global-norm clipping and a warmup
// schedule (linear warmup, then constant or cosine to 10% of the peak).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include <tbb/parallel_for.h>

#include "../error.hpp"

namespace attnsink::train {

enum class schedule { constant, cosine };

struct optim_config {
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, clip = 1.0;
  std::size_t warmup = 100, steps = 1000;
  schedule sched = schedule::constant;
  bool operator==(const optim_config&) const = default;

  void check() const {
    if (!(lr > 0) || !std::isfinite(lr)) throw value_error("--lr", "expected a finite learning rate > 0");
    if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) throw value_error("--wd", "expected a finite value >= 0");
    if (!(clip >= 0) || !std::isfinite(clip)) throw value_error("--clip", "expected a finite value >= 0 (0: no clipping)");
    if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1)) throw value_error("betas", "expected values in [0, 1)");
  }
  // The learning rate at step s (0-based).
  double rate(std::size_t s) const {
    if (warmup > 0 && s < warmup) return lr * double(s + 1) / double(warmup);
    if (sched == schedule::constant || steps <= warmup) return lr;
    const double t = std::min(1.0, double(s - warmup) / double(steps - warmup));
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(3.14159265358979323846 * t)));
  }
};

// AdamW state: first and second moments, and the step count.
template <class T>
struct adamw {
  std::vector<T> m, v;
  std::size_t t = 0;

  explicit adamw(std::size_t n = 0) : m(n, T(0)), v(n, T(0)) {}

  // Both passes run over fixed chunks of parameters on TBB's threads; the
  // norm adds the chunks' sums in chunk order, so nothing depends on the
  // thread count.
  static constexpr std::size_t chunk = std::size_t(1) << 14;
  template <class F>
  static void chunks(std::size_t n, F&& f) {
    tbb::parallel_for(std::size_t(0), (n + chunk - 1) / chunk,
                      [&](std::size_t c) { f(c, c * chunk, std::min(n, (c + 1) * chunk)); });
  }

  // Clips g to global norm `clip` (0: off) and returns its norm before clipping.
  static double clip_norm(std::vector<T>& g, double clip) {
    std::vector<double> part((g.size() + chunk - 1) / chunk, 0.0);
    chunks(g.size(), [&](std::size_t c, std::size_t i0, std::size_t i1) {
      double s = 0;
      for (std::size_t i = i0; i < i1; ++i) s += double(g[i]) * double(g[i]);
      part[c] = s;
    });
    double ss = 0;
    for (double s : part) ss += s;
    const double norm = std::sqrt(ss);
    if (clip > 0 && norm > clip) {
      const T f = T(clip / (norm + 1e-6));
      chunks(g.size(), [&](std::size_t, std::size_t i0, std::size_t i1) {
        for (std::size_t i = i0; i < i1; ++i) g[i] *= f;
      });
    }
    return norm;
  }

  // One decoupled-weight-decay Adam step (Loshchilov & Hutter) at learning rate lr.
  void step(std::vector<T>& p, const std::vector<T>& g, const optim_config& c, double lr) {
    ++t;
    const double b1 = c.beta1, b2 = c.beta2;
    const double c1 = 1.0 - std::pow(b1, double(t)), c2 = 1.0 - std::pow(b2, double(t));
    chunks(p.size(), [&](std::size_t, std::size_t i0, std::size_t i1) {
      for (std::size_t i = i0; i < i1; ++i) {
        m[i] = T(b1 * m[i] + (1 - b1) * g[i]);
        v[i] = T(b2 * v[i] + (1 - b2) * double(g[i]) * g[i]);
        const double mh = m[i] / c1, vh = v[i] / c2;
        p[i] = T(p[i] - lr * (mh / (std::sqrt(vh) + c.eps) + c.weight_decay * p[i]));
      }
    });
  }
};

}  // namespace attnsink::train
