// attnsink/backend/reference.hpp — the oracle: plain loops in double.
//
// Materializes each row's scores, accumulates in double whatever the input
// type, and can return the full weight tensor. Every other backend is tested
// against it. Slow by design; never the fast path.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "../attention.hpp"

namespace attnsink {
namespace backend {
// Tag: the reference backend.
struct reference {};
}  // namespace backend

// Weights as the reference backend returns them: contiguous
// (batch, heads, tq, tk + has_kv); with a kv_bias the bias key is column 0.
template <class T>
struct probs_view {
  T* data = nullptr;
  bool empty() const { return data == nullptr; }
};

namespace detail {

// One row normalized in one shot, as the reference backends do it: w[col] =
// norm.weight(s[col], m) for visible columns (0 elsewhere), and the final
// state (m, l) and finish factor f, so that p[col] = w[col] · f.
struct row_result {
  double m, l, f;
};
template <class N, class Visible>
row_result normalize_row(const N& norm, std::size_t head, const std::vector<double>& s, std::vector<double>& w,
                         std::size_t cols, Visible visible) {
  const row_init init = norm.init(head);
  double m = init.m, l = init.l;
  if constexpr (N::tracks_max) {
    for (std::size_t col = 0; col < cols; ++col)
      if (visible(col)) m = std::max(m, s[col]);
    if (m != init.m) l *= math::exp(init.m - m);
  }
  for (std::size_t col = 0; col < cols; ++col) {
    w[col] = 0;
    if (!visible(col)) continue;
    w[col] = norm.weight(s[col], m);
    l += norm.mass(s[col], m);
  }
  return {m, l, norm.finish(m, l)};
}

// Query position i (row) of a call with tq queries and tk keys.
inline std::ptrdiff_t query_position(std::size_t row, std::size_t tq, std::size_t tk) {
  return mask::detail::qpos(row, tq, tk);
}

}  // namespace detail

// Forward on the reference backend. out (batch, heads, tq, vdim); stats, when
// given, receive each row's (m, l); probs, when given, the full weights.
// Throws (before writing anything) on bad input; see check_forward.
template <attention_type A, class T>
void forward(backend::reference, const A& a, tensor4<const T> q, tensor4<const T> k, tensor4<const T> v,
             tensor4<T> out, row_stats<T> stats = {}, probs_view<T> probs = {}) {
  const problem p = check_forward(a, q, k, v, out);
  using bias_t = typename A::bias_type;
  constexpr bool has_kv = bias_t::has_kv;
  const std::size_t d = p.dim, dv = p.vdim, df = a.score.feature_dim(d);
  const std::size_t group = p.heads / p.kv_heads, cols = p.tk + (has_kv ? 1 : 0);
  const double c = a.score.scale(d);
  const bool causal = a.mask.is_causal();

  std::vector<double> kf(p.tk * df), x(std::max(d, df)), qf(df), ks(df), s(cols), w(cols), o(dv);
  for (std::size_t b = 0; b < p.batch; ++b)
    for (std::size_t hk = 0; hk < p.kv_heads; ++hk) {
      // Key features: positional transform, then the score's feature map.
      for (std::size_t j = 0; j < p.tk; ++j) {
        const T* kr = k.row(b, hk, j);
        for (std::size_t e = 0; e < d; ++e) x[e] = double(kr[e]);
        a.pos.apply(x.data(), d, std::ptrdiff_t(j), 1);
        a.score.map(x.data(), kf.data() + j * df, d);
      }
      if constexpr (has_kv) {  // k* is never rotated
        for (std::size_t e = 0; e < d; ++e) x[e] = a.bias.kstar(hk, e, d);
        a.score.map(x.data(), ks.data(), d);
      }
      for (std::size_t g = 0; g < group; ++g) {
        const std::size_t h = hk * group + g;
        for (std::size_t i = 0; i < p.tq; ++i) {
          const std::ptrdiff_t qp = detail::query_position(i, p.tq, p.tk);
          const T* qr = q.row(b, h, i);
          for (std::size_t e = 0; e < d; ++e) x[e] = double(qr[e]);
          a.pos.apply(x.data(), d, qp, 1);
          a.score.map(x.data(), qf.data(), d);

          const key_range r = a.mask.range(b, i, p.tq, p.tk);
          const std::size_t off = has_kv ? 1 : 0;
          auto dot = [&](const double* kk) {
            double acc = 0;
            for (std::size_t e = 0; e < df; ++e) acc += qf[e] * kk[e];
            return a.score.post(c * acc);
          };
          if constexpr (has_kv) s[0] = dot(ks.data());
          for (std::size_t j = r.lo; j < r.hi; ++j) {
            s[j + off] = dot(kf.data() + j * df);
            if constexpr (bias_t::additive)
              s[j + off] += a.bias.value(site{b, h, p.heads, qp, std::ptrdiff_t(j), i, p.tq, p.tk, causal});
          }
          // Normalize: the state after every visible key, in one shot.
          auto visible = [&](std::size_t col) { return (has_kv && col == 0) || (col >= r.lo + off && col < r.hi + off); };
          const auto [m, l, f] = detail::normalize_row(a.norm, h, s, w, cols, visible);
          std::fill(o.begin(), o.end(), 0.0);
          if constexpr (has_kv)
            for (std::size_t e = 0; e < dv; ++e) o[e] += w[0] * f * a.bias.vstar(hk, e, dv);
          for (std::size_t j = r.lo; j < r.hi; ++j) {
            const T* vr = v.row(b, hk, j);
            const double pj = w[j + off] * f;
            for (std::size_t e = 0; e < dv; ++e) o[e] += pj * double(vr[e]);
          }
          T* orow = out.row(b, h, i);
          for (std::size_t e = 0; e < dv; ++e) orow[e] = T(o[e]);
          const std::size_t row = (b * p.heads + h) * p.tq + i;
          if (stats.max) stats.max[row] = T(m);
          if (stats.sum) stats.sum[row] = T(l);
          if (!probs.empty())
            for (std::size_t col = 0; col < cols; ++col) probs.data[row * cols + col] = T(w[col] * f);
        }
      }
    }
}

// Decode: one new query row per (batch, head) against a KV cache holding n
// tokens (k, v: views of tokens = n, any capacity stride). The query sits at
// position n - 1. Same as forward with tq = 1.
template <class Backend, attention_type A, class T>
void decode(const Backend& be, const A& a, tensor4<const T> q, tensor4<const T> kcache, tensor4<const T> vcache,
            tensor4<T> out, row_stats<T> stats = {}) {
  if (q.tokens != 1) throw shape_error("q", "decode takes one query token, got " + std::to_string(q.tokens));
  forward(be, a, q, kcache, vcache, out, stats);
}

}  // namespace attnsink
