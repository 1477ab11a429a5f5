// attnsink/backend/reference_backward.hpp — the gradient oracle: plain loops in double.
//
// Mirrors backend/reference.hpp's forward line by line: each row's scores are
// recomputed from q, k, v (nothing is taken from a forward pass), then the
// chain rule runs back through the normalization, the bias, the score's post
// and feature map, and the positional transform. Slow by design; the test
// oracle for every other backend and itself checked by finite differences.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "../backward.hpp"
#include "reference.hpp"

namespace attnsink {

// Backward on the reference backend: given dO = dL/d out, writes dL/dq, dL/dk,
// dL/dv and each requested parameter gradient (see backward.hpp).
template <attention_type A, class T>
void backward(backend::reference, const A& a, tensor4<const T> q, tensor4<const T> k, tensor4<const T> v,
              tensor4<const T> dout, gradients<T> g) {
  detail::assert_differentiable<A>();
  const problem p = check_backward(a, q, k, v, dout, g);
  using bias_t = typename A::bias_type;
  using norm_t = typename A::norm_type;
  constexpr bool has_kv = bias_t::has_kv;
  const std::size_t d = p.dim, dv = p.vdim, df = a.score.feature_dim(d);
  const std::size_t group = p.heads / p.kv_heads, cols = p.tk + (has_kv ? 1 : 0), off = has_kv ? 1 : 0;
  const double c = a.score.scale(d);
  const bool causal = a.mask.is_causal();

  // Parameter gradients, accumulated in double over the whole call.
  std::vector<double> dsink(p.heads, 0.0), dkstar_f(p.kv_heads * df, 0.0), dvstar(p.kv_heads * dv, 0.0);
  std::vector<double> dbias(a.bias.param_count(p), 0.0), dscore(a.score.param_count(d), 0.0);
  double* dscore_p = dscore.empty() ? nullptr : dscore.data();

  std::vector<double> xk(p.tk * d), kf(p.tk * df), x(std::max(d, df)), qf(df), ks(df);
  std::vector<double> u(cols), s(cols), w(cols), dP(cols);
  std::vector<double> dkf(p.tk * df), dvacc(p.tk * dv), dqf(df), dx(d), xq(d);
  for (std::size_t b = 0; b < p.batch; ++b)
    for (std::size_t hk = 0; hk < p.kv_heads; ++hk) {
      // forward: key features: positional transform, then the score's feature map
      for (std::size_t j = 0; j < p.tk; ++j) {
        const T* kr = k.row(b, hk, j);
        for (std::size_t e = 0; e < d; ++e) xk[j * d + e] = double(kr[e]);
        a.pos.apply(xk.data() + j * d, d, std::ptrdiff_t(j), 1);
        a.score.map(xk.data() + j * d, kf.data() + j * df, d);
      }
      if constexpr (has_kv) {  // k* is never rotated
        for (std::size_t e = 0; e < d; ++e) x[e] = a.bias.kstar(hk, e, d);
        a.score.map(x.data(), ks.data(), d);
      }
      std::fill(dkf.begin(), dkf.end(), 0.0);
      std::fill(dvacc.begin(), dvacc.end(), 0.0);
      for (std::size_t gi = 0; gi < group; ++gi) {
        const std::size_t h = hk * group + gi;
        for (std::size_t i = 0; i < p.tq; ++i) {
          const std::ptrdiff_t qp = detail::query_position(i, p.tq, p.tk);
          const T* qr = q.row(b, h, i);
          for (std::size_t e = 0; e < d; ++e) xq[e] = double(qr[e]);
          a.pos.apply(xq.data(), d, qp, 1);
          a.score.map(xq.data(), qf.data(), d);

          const key_range r = a.mask.range(b, i, p.tq, p.tk);
          auto dot = [&](const double* kk) {
            double acc = 0;
            for (std::size_t e = 0; e < df; ++e) acc += qf[e] * kk[e];
            return c * acc;
          };
          // forward: s = post(u) + bias, u = c·map(q)·map(k)
          if constexpr (has_kv) {
            u[0] = dot(ks.data());
            s[0] = a.score.post(u[0]);
          }
          for (std::size_t j = r.lo; j < r.hi; ++j) {
            u[j + off] = dot(kf.data() + j * df);
            s[j + off] = a.score.post(u[j + off]);
            if constexpr (bias_t::additive)
              s[j + off] += a.bias.value(site{b, h, p.heads, qp, std::ptrdiff_t(j), i, p.tq, p.tk, causal});
          }
          // forward: the row state (m, l) after every visible key
          auto visible = [&](std::size_t col) { return (has_kv && col == 0) || (col >= r.lo + off && col < r.hi + off); };
          const auto [m, l, f] = detail::normalize_row(a.norm, h, s, w, cols, visible);

          // forward: o = Σ_col p_col v_col, p_col = w_col · f
          // backward: dP_col = dO · v_col, dv_col += p_col dO, D = Σ_col p_col dP_col
          const T* dor = dout.row(b, h, i);
          double D = 0;
          if constexpr (has_kv) {
            dP[0] = 0;
            for (std::size_t e = 0; e < dv; ++e) {
              const double vs = a.bias.vstar(hk, e, dv);
              dP[0] += double(dor[e]) * vs;
              dvstar[hk * dv + e] += w[0] * f * double(dor[e]);
            }
            D += w[0] * f * dP[0];
          }
          for (std::size_t j = r.lo; j < r.hi; ++j) {
            const T* vr = v.row(b, hk, j);
            const double pj = w[j + off] * f;
            double acc = 0;
            for (std::size_t e = 0; e < dv; ++e) {
              acc += double(dor[e]) * double(vr[e]);
              dvacc[j * dv + e] += pj * double(dor[e]);
            }
            dP[j + off] = acc;
            D += pj * acc;
          }
          // backward through the normalization: dS = weight'·f·dP + mass'·g·D (norm.hpp)
          const double gl = a.norm.finish_log_derivative(m, l);
          if constexpr (detail::learns_init<norm_t>) dsink[h] += a.norm.init_gradient(h, m, l, D);
          std::fill(dqf.begin(), dqf.end(), 0.0);
          for (std::size_t col = 0; col < cols; ++col) {
            if (!visible(col)) continue;
            const double dS = a.norm.weight_derivative(s[col], m) * f * dP[col] +
                              a.norm.mass_derivative(s[col], m) * gl * D;
            // backward through s = post(u) + bias
            if constexpr (bias_t::additive) {
              if (!(has_kv && col == 0)) {
                const std::ptrdiff_t idx = a.bias.param_index(
                    site{b, h, p.heads, qp, std::ptrdiff_t(col - off), i, p.tq, p.tk, causal});
                if (idx >= 0) dbias[std::size_t(idx)] += dS;
              }
            }
            const double du = dS * a.score.post_derivative(u[col]);
            // backward through u = c·map(q)·map(k)
            const double* kk = (has_kv && col == 0) ? ks.data() : kf.data() + (col - off) * df;
            double* dk_f = (has_kv && col == 0) ? dkstar_f.data() + hk * df : dkf.data() + (col - off) * df;
            for (std::size_t e = 0; e < df; ++e) {
              dqf[e] += c * du * kk[e];
              dk_f[e] += c * du * qf[e];
            }
          }
          // backward through map, then the positional transform (rotate back)
          a.score.map_backward(xq.data(), dqf.data(), dx.data(), d, dscore_p);
          a.pos.apply(dx.data(), d, qp, -1);
          T* dqr = g.dq.row(b, h, i);
          for (std::size_t e = 0; e < d; ++e) dqr[e] = T(dx[e]);
        }
      }
      for (std::size_t j = 0; j < p.tk; ++j) {
        a.score.map_backward(xk.data() + j * d, dkf.data() + j * df, dx.data(), d, dscore_p);
        a.pos.apply(dx.data(), d, std::ptrdiff_t(j), -1);
        T* dkr = g.dk.row(b, hk, j);
        for (std::size_t e = 0; e < d; ++e) dkr[e] = T(dx[e]);
        T* dvr = g.dv.row(b, hk, j);
        for (std::size_t e = 0; e < dv; ++e) dvr[e] = T(dvacc[j * dv + e]);
      }
    }
  if constexpr (has_kv) {
    for (std::size_t hk = 0; hk < p.kv_heads; ++hk) {
      for (std::size_t e = 0; e < d; ++e) x[e] = a.bias.kstar(hk, e, d);
      a.score.map_backward(x.data(), dkstar_f.data() + hk * df, dx.data(), d, dscore_p);
      if (g.params.kstar)
        for (std::size_t e = 0; e < d; ++e) g.params.kstar[hk * d + e] = T(dx[e]);
    }
    if (g.params.vstar)
      for (std::size_t i = 0; i < dvstar.size(); ++i) g.params.vstar[i] = T(dvstar[i]);
  }
  if (g.params.sink)
    for (std::size_t h = 0; h < p.heads; ++h) g.params.sink[h] = T(dsink[h]);
  if (g.params.bias)
    for (std::size_t i = 0; i < dbias.size(); ++i) g.params.bias[i] = T(dbias[i]);
  if (g.params.score)
    for (std::size_t i = 0; i < dscore.size(); ++i) g.params.score[i] = T(dscore[i]);
}

}  // namespace attnsink
