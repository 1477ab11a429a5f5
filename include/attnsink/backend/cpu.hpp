// attnsink/backend/cpu.hpp — the fused CPU backend: xsimd inner loops, oneTBB threads.
//
// One streaming pass over key tiles per query tile with online normalization
// (norm.hpp's (m, l) state); no tokens × tokens buffer is ever allocated.
// A tile holds `rows` query rows: a range of query positions times every
// query head of one kv-head group, so grouped-query heads share each K/V tile
// they read (decode reads the cache once per group). Key tiles the mask hides
// are skipped; tiles it fully shows skip the per-element mask test.
//
// Link attnsink::cpu (xsimd, TBB). Any attention type runs here; there is no
// fallback to the reference backend.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <xsimd/xsimd.hpp>

#include "reference.hpp"

namespace attnsink {
namespace backend {
// Tag: the fused CPU backend. Options: the tile sizes (rows of queries, keys).
struct cpu {
  std::size_t query_tile = 64;
  std::size_t key_tile = 64;
  // Prepared (rotated / feature-mapped) keys are made for as many (batch, kv
  // head) pairs at a time as fit in this many bytes (at least one pair).
  std::size_t prep_budget = std::size_t(32) << 20;
};
}  // namespace backend

namespace cpu_detail {

template <class T>
using simd = xsimd::batch<T>;

template <class T>
using aligned_vector = std::vector<T, xsimd::aligned_allocator<T>>;

template <class T>
struct scratch {
  aligned_vector<T> q, kt, s, acc, m, l, x;
  std::vector<std::size_t> head, qrow;
  std::vector<std::ptrdiff_t> qpos;
  std::vector<key_range> range;
  void reserve(std::size_t rows, std::size_t kt_, std::size_t df, std::size_t dv, std::size_t dmax) {
    q.assign(rows * df, T(0));
    kt.assign(df * kt_, T(0));
    s.assign(rows * kt_, T(0));
    acc.assign(rows * dv, T(0));
    m.assign(rows, T(0));
    l.assign(rows, T(0));
    x.assign(dmax, T(0));
    head.assign(rows, 0);
    qrow.assign(rows, 0);
    qpos.assign(rows, 0);
    range.assign(rows, key_range{0, 0});
  }
};

// s[r][0..nk) = q[r] · kt[.][0..nk) for rows [0, nr); nr a multiple of 4,
// nk padded to a multiple of 2W (kt is zero-padded there).
template <class T>
inline void scores(const T* q, const T* kt, T* s, std::size_t nr, std::size_t nkp, std::size_t df, std::size_t ld) {
  constexpr std::size_t W = simd<T>::size;
  for (std::size_t r = 0; r < nr; r += 4) {
    const T* q0 = q + r * df;
    for (std::size_t j = 0; j < nkp; j += 2 * W) {
      simd<T> a00(T(0)), a01(T(0)), a10(T(0)), a11(T(0)), a20(T(0)), a21(T(0)), a30(T(0)), a31(T(0));
      const T* kc = kt + j;
      for (std::size_t c = 0; c < df; ++c, kc += ld) {
        const simd<T> k0 = simd<T>::load_aligned(kc), k1 = simd<T>::load_aligned(kc + W);
        const simd<T> b0(q0[c]), b1(q0[df + c]), b2(q0[2 * df + c]), b3(q0[3 * df + c]);
        a00 = xsimd::fma(b0, k0, a00); a01 = xsimd::fma(b0, k1, a01);
        a10 = xsimd::fma(b1, k0, a10); a11 = xsimd::fma(b1, k1, a11);
        a20 = xsimd::fma(b2, k0, a20); a21 = xsimd::fma(b2, k1, a21);
        a30 = xsimd::fma(b3, k0, a30); a31 = xsimd::fma(b3, k1, a31);
      }
      T* s0 = s + r * ld + j;
      a00.store_aligned(s0); a01.store_aligned(s0 + W);
      a10.store_aligned(s0 + ld); a11.store_aligned(s0 + ld + W);
      a20.store_aligned(s0 + 2 * ld); a21.store_aligned(s0 + 2 * ld + W);
      a30.store_aligned(s0 + 3 * ld); a31.store_aligned(s0 + 3 * ld + W);
    }
  }
}

// acc[r][0..dv) += Σ_{j<nk} p[r][j] · v_j for rows [0, nr), nr a multiple of 4.
template <class T>
inline void accumulate(const T* p, std::size_t ld, const T* v, std::size_t vstride, std::size_t nk, T* acc,
                       std::size_t nr, std::size_t dv) {
  constexpr std::size_t W = simd<T>::size;
  const std::size_t dvv = dv - dv % W;
  for (std::size_t r = 0; r < nr; r += 4) {
    const T* p0 = p + r * ld;
    T* o0 = acc + r * dv;
    std::size_t e = 0;
    for (; e + 2 * W <= dvv; e += 2 * W) {
      simd<T> a00 = simd<T>::load_unaligned(o0 + e), a01 = simd<T>::load_unaligned(o0 + e + W);
      simd<T> a10 = simd<T>::load_unaligned(o0 + dv + e), a11 = simd<T>::load_unaligned(o0 + dv + e + W);
      simd<T> a20 = simd<T>::load_unaligned(o0 + 2 * dv + e), a21 = simd<T>::load_unaligned(o0 + 2 * dv + e + W);
      simd<T> a30 = simd<T>::load_unaligned(o0 + 3 * dv + e), a31 = simd<T>::load_unaligned(o0 + 3 * dv + e + W);
      const T* vj = v + e;
      for (std::size_t j = 0; j < nk; ++j, vj += vstride) {
        const simd<T> v0 = simd<T>::load_unaligned(vj), v1 = simd<T>::load_unaligned(vj + W);
        const simd<T> b0(p0[j]), b1(p0[ld + j]), b2(p0[2 * ld + j]), b3(p0[3 * ld + j]);
        a00 = xsimd::fma(b0, v0, a00); a01 = xsimd::fma(b0, v1, a01);
        a10 = xsimd::fma(b1, v0, a10); a11 = xsimd::fma(b1, v1, a11);
        a20 = xsimd::fma(b2, v0, a20); a21 = xsimd::fma(b2, v1, a21);
        a30 = xsimd::fma(b3, v0, a30); a31 = xsimd::fma(b3, v1, a31);
      }
      a00.store_unaligned(o0 + e); a01.store_unaligned(o0 + e + W);
      a10.store_unaligned(o0 + dv + e); a11.store_unaligned(o0 + dv + e + W);
      a20.store_unaligned(o0 + 2 * dv + e); a21.store_unaligned(o0 + 2 * dv + e + W);
      a30.store_unaligned(o0 + 3 * dv + e); a31.store_unaligned(o0 + 3 * dv + e + W);
    }
    for (; e + W <= dvv; e += W) {
      for (std::size_t rr = 0; rr < 4; ++rr) {
        simd<T> a = simd<T>::load_unaligned(o0 + rr * dv + e);
        const T* vj = v + e;
        for (std::size_t j = 0; j < nk; ++j, vj += vstride)
          a = xsimd::fma(simd<T>(p0[rr * ld + j]), simd<T>::load_unaligned(vj), a);
        a.store_unaligned(o0 + rr * dv + e);
      }
    }
    for (; e < dv; ++e)
      for (std::size_t rr = 0; rr < 4; ++rr) {
        T a = o0[rr * dv + e];
        for (std::size_t j = 0; j < nk; ++j) a += p0[rr * ld + j] * v[j * vstride + e];
        o0[rr * dv + e] = a;
      }
  }
}

// max over x[0..n)
template <class T>
inline T row_max(const T* x, std::size_t n) {
  constexpr std::size_t W = simd<T>::size;
  T m = math::neg_inf<T>();
  std::size_t j = 0;
  if (n >= W) {
    simd<T> mv = simd<T>::load_unaligned(x);
    for (j = W; j + W <= n; j += W) mv = xsimd::max(mv, simd<T>::load_unaligned(x + j));
    alignas(64) T buf[W];
    mv.store_aligned(buf);
    for (std::size_t w = 0; w < W; ++w) m = std::max(m, buf[w]);
  }
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// x[j] = e^{x[j] - m} for j in [0, n); returns the sum.
template <class T>
inline T exp_shift_sum(T* x, std::size_t n, T m) {
  constexpr std::size_t W = simd<T>::size;
  const simd<T> mv(m);
  simd<T> sv(T(0));
  std::size_t j = 0;
  for (; j + W <= n; j += W) {
    const simd<T> e = xsimd::exp(simd<T>::load_unaligned(x + j) - mv);
    e.store_unaligned(x + j);
    sv += e;
  }
  T sum = xsimd::hadd(sv);
  for (; j < n; ++j) {
    x[j] = math::exp(x[j] - m);
    sum += x[j];
  }
  return sum;
}

template <class A, class T>
struct kernel {
  using bias_t = typename A::bias_type;
  using norm_t = typename A::norm_type;
  using score_t = typename A::score_type;
  static constexpr bool has_kv = bias_t::has_kv;
  static constexpr bool exp_fast = std::is_base_of_v<norm::exp_family, norm_t>;
  static constexpr std::size_t W = simd<T>::size;

  const A& a;
  const backend::cpu& opt;
  tensor4<const T> q, k, v;
  tensor4<T> out;
  row_stats<T> stats;
  problem p;
  std::size_t d, dv, df, group, ni, rows, bk;
  T c;
  bool causal;

  // Processes query positions [i0, i0 + ni) of every head in kv-head group (b, hk).
  // keys: (tk × df) features with row stride kstride; kstar: df features or null.
  void tile(scratch<T>& sc, std::size_t b, std::size_t hk, std::size_t i0, const T* keys, std::size_t kstride,
            const T* kstar) const {
    const std::size_t i1 = std::min(i0 + ni, p.tq);
    const std::size_t nr = (i1 - i0) * group, nrp = (nr + 3) / 4 * 4;
    // Query rows: (position-major, head-minor) so key ranges stay monotone.
    for (std::size_t r = 0; r < nrp; ++r) {
      T* qr = sc.q.data() + r * df;
      T* ar = sc.acc.data() + r * dv;
      std::fill(ar, ar + dv, T(0));
      if (r >= nr) {
        std::fill(qr, qr + df, T(0));
        sc.m[r] = T(0);
        sc.l[r] = T(0);
        sc.range[r] = {0, 0};
        continue;
      }
      const std::size_t i = i0 + r / group, h = hk * group + r % group;
      sc.head[r] = h;
      sc.qrow[r] = i;
      sc.qpos[r] = mask::detail::qpos(i, p.tq, p.tk);
      sc.range[r] = a.mask.range(b, i, p.tq, p.tk);
      const T* src = q.row(b, h, i);
      T* x = sc.x.data();
      std::copy(src, src + d, x);
      a.pos.apply(x, d, sc.qpos[r], 1);
      a.score.map(x, qr, d);
      for (std::size_t e = 0; e < df; ++e) qr[e] *= c;
      const row_init init = a.norm.init(h);
      sc.m[r] = T(init.m);
      sc.l[r] = T(init.l);
      if constexpr (has_kv) {  // the bias key comes first; it sees no mask, no positions, no additive bias
        T s = 0;
        for (std::size_t e = 0; e < df; ++e) s += qr[e] * kstar[e];
        s = a.score.post(s);
        T mr = sc.m[r];
        if constexpr (norm_t::tracks_max) {
          const T mn = std::max(mr, s);
          if (mn != mr) sc.l[r] *= math::exp(mr - mn);
          mr = sc.m[r] = mn;
        }
        const T w = a.norm.weight(s, mr);
        sc.l[r] += a.norm.mass(s, mr);
        for (std::size_t e = 0; e < dv; ++e) ar[e] = w * T(a.bias.vstar(hk, e, dv));
      }
    }
    const key_range first = sc.range[0], last = sc.range[nr - 1];
    if (last.hi <= first.lo) return finish(sc, b, nr);
    const std::size_t j_begin = first.lo / bk * bk;
    for (std::size_t j0 = j_begin; j0 < last.hi; j0 += bk) {
      const std::size_t nk = std::min(bk, p.tk - j0), nkp = (nk + 2 * W - 1) / (2 * W) * (2 * W);
      const tile_visibility vis = classify(a.mask, b, i0, i1, j0, j0 + nk, p.tq, p.tk);
      if (vis == tile_visibility::skip) continue;
      // Transpose the key tile (df × bk), zero-padded past nk.
      T* kt = sc.kt.data();
      for (std::size_t jj = 0; jj < nk; ++jj) {
        const T* kr = keys + (j0 + jj) * kstride;
        for (std::size_t e = 0; e < df; ++e) kt[e * bk + jj] = kr[e];
      }
      for (std::size_t e = 0; e < df; ++e) std::fill(kt + e * bk + nk, kt + e * bk + nkp, T(0));
      scores(sc.q.data(), kt, sc.s.data(), nrp, nkp, df, bk);
      for (std::size_t r = 0; r < nrp; ++r) {
        T* s = sc.s.data() + r * bk;
        std::size_t c0 = 0, c1 = nk;
        if (r >= nr) {
          c1 = 0;
        } else if (vis == tile_visibility::partial) {
          const key_range kr = sc.range[r];
          c0 = std::clamp(kr.lo, j0, j0 + nk) - j0;
          c1 = std::clamp(kr.hi, j0, j0 + nk) - j0;
          if (c1 < c0) c1 = c0;
        }
        if constexpr (score_t::has_post || bias_t::additive)
          for (std::size_t jj = c0; jj < c1; ++jj) {
            if constexpr (score_t::has_post) s[jj] = a.score.post(s[jj]);
            if constexpr (bias_t::additive)
              s[jj] += T(a.bias.value(site{b, sc.head[r], p.heads, sc.qpos[r], std::ptrdiff_t(j0 + jj), sc.qrow[r],
                                           p.tq, p.tk, causal}));
          }
        update(sc, r, s, c0, c1, nkp);
      }
      const T* vt = v.row(b, hk, j0);
      accumulate(sc.s.data(), bk, vt, v.stride_t, nk, sc.acc.data(), nrp, dv);
    }
    finish(sc, b, nr);
  }

  // Folds the visible scores s[c0, c1) of row r into its state; leaves the
  // weights in s (zero outside [c0, c1), up to nkp).
  void update(scratch<T>& sc, std::size_t r, T* s, std::size_t c0, std::size_t c1, std::size_t nkp) const {
    std::fill(s, s + c0, T(0));
    std::fill(s + c1, s + nkp, T(0));
    if (c1 == c0) return;
    T m = sc.m[r];
    if constexpr (norm_t::tracks_max) {
      const T mn = std::max(m, row_max(s + c0, c1 - c0));
      if (mn != m) {
        const T f = math::exp(m - mn);
        sc.l[r] *= f;
        T* ar = sc.acc.data() + r * dv;
        for (std::size_t e = 0; e < dv; ++e) ar[e] *= f;
        m = sc.m[r] = mn;
      }
    }
    if constexpr (exp_fast) {
      sc.l[r] += exp_shift_sum(s + c0, c1 - c0, m);
    } else {
      double l = 0;
      for (std::size_t jj = c0; jj < c1; ++jj) {
        const T x = s[jj];
        if constexpr (norm_t::has_denominator) l += double(a.norm.mass(x, m));
        s[jj] = a.norm.weight(x, m);
      }
      sc.l[r] = T(double(sc.l[r]) + l);
    }
  }

  void finish(scratch<T>& sc, std::size_t b, std::size_t nr) const {
    for (std::size_t r = 0; r < nr; ++r) {
      const T f = a.norm.finish(sc.m[r], sc.l[r]);
      const T* ar = sc.acc.data() + r * dv;
      T* o = out.row(b, sc.head[r], sc.qrow[r]);
      for (std::size_t e = 0; e < dv; ++e) o[e] = ar[e] * f;
      const std::size_t row = (b * p.heads + sc.head[r]) * p.tq + sc.qrow[r];
      if (stats.max) stats.max[row] = sc.m[r];
      if (stats.sum) stats.sum[row] = sc.l[r];
    }
  }
};


// Runs the double kernel on float operands (copies; O(tokens · dim) memory).
template <class A>
void forward_in_double(const backend::cpu& opt, const A& a, tensor4<const float> q, tensor4<const float> k,
                       tensor4<const float> v, tensor4<float> out, row_stats<float> stats);

}  // namespace cpu_detail

// Forward on the CPU backend; same contract as the reference forward (without
// the weights, which this backend never forms).
template <attention_type A, class T>
  requires std::is_floating_point_v<T>
void forward(const backend::cpu& opt, const A& a, tensor4<const T> q, tensor4<const T> k, tensor4<const T> v,
             tensor4<T> out, row_stats<T> stats = {}) {
  const problem p = check_forward(a, q, k, v, out);
  using norm_t = typename A::norm_type;
  if constexpr (std::is_same_v<T, float> && norm_t::has_denominator && !norm_t::non_negative) {
    // A signed denominator (abs_clamped) can cancel to far below the sum of
    // its terms' magnitudes, which float scores cannot resolve: compute in double.
    return cpu_detail::forward_in_double(opt, a, q, k, v, out, stats);
  }
  using K = cpu_detail::kernel<A, T>;
  constexpr std::size_t W = cpu_detail::simd<T>::size;
  const std::size_t d = p.dim, dv = p.vdim, df = a.score.feature_dim(d), group = p.heads / p.kv_heads;
  const std::size_t bk = std::max<std::size_t>(2 * W, (opt.key_tile + 2 * W - 1) / (2 * W) * (2 * W));
  const std::size_t ni = std::max<std::size_t>(1, std::min(p.tq, opt.query_tile / group));
  const std::size_t rows = (ni * group + 3) / 4 * 4;
  K kern{a, opt, q, k, v, out, stats, p, d, dv, df, group, ni, rows, bk, T(a.score.scale(d)), a.mask.is_causal()};

  const bool prep = a.pos.rotates() || A::score_type::maps_features;
  const std::size_t pairs = p.batch * p.kv_heads, qtiles = (p.tq + ni - 1) / ni;
  const std::size_t per_pair = prep ? p.tk * df : 0;
  const std::size_t chunk =
      prep ? std::max<std::size_t>(1, opt.prep_budget / std::max<std::size_t>(1, per_pair * sizeof(T))) : pairs;
  cpu_detail::aligned_vector<T> kbuf(std::min(chunk, pairs) * per_pair);
  cpu_detail::aligned_vector<T> kstar(K::has_kv ? pairs * df : 0);
  if constexpr (K::has_kv) {
    std::vector<T> x(d);
    for (std::size_t pr = 0; pr < pairs; ++pr) {
      const std::size_t hk = pr % p.kv_heads;
      for (std::size_t e = 0; e < d; ++e) x[e] = T(a.bias.kstar(hk, e, d));
      a.score.map(x.data(), kstar.data() + pr * df, d);
    }
  }
  tbb::enumerable_thread_specific<cpu_detail::scratch<T>> scratch([&] {
    cpu_detail::scratch<T> s;
    s.reserve(rows, bk, df, dv, std::max(d, df));
    return s;
  });
  for (std::size_t c0 = 0; c0 < pairs; c0 += chunk) {
    const std::size_t c1 = std::min(pairs, c0 + chunk);
    if (prep)
      tbb::parallel_for(tbb::blocked_range<std::size_t>(0, (c1 - c0) * p.tk, 256), [&](const auto& rg) {
        std::vector<T> x(d);
        for (std::size_t idx = rg.begin(); idx != rg.end(); ++idx) {
          const std::size_t pr = c0 + idx / p.tk, j = idx % p.tk;
          const T* src = k.row(pr / p.kv_heads, pr % p.kv_heads, j);
          std::copy(src, src + d, x.begin());
          a.pos.apply(x.data(), d, std::ptrdiff_t(j), 1);
          a.score.map(x.data(), kbuf.data() + idx * df, d);
        }
      });
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, (c1 - c0) * qtiles, 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t t = rg.begin(); t != rg.end(); ++t) {
        const std::size_t pr = c0 + t / qtiles, qt = t % qtiles;
        const std::size_t b = pr / p.kv_heads, hk = pr % p.kv_heads;
        const T* keys = prep ? kbuf.data() + (pr - c0) * per_pair : k.row(b, hk, 0);
        const std::size_t kstride = prep ? df : k.stride_t;
        kern.tile(sc, b, hk, qt * ni, keys, kstride, K::has_kv ? kstar.data() + pr * df : nullptr);
      }
    });
  }
}

namespace cpu_detail {
template <class A>
void forward_in_double(const backend::cpu& opt, const A& a, tensor4<const float> q, tensor4<const float> k,
                       tensor4<const float> v, tensor4<float> out, row_stats<float> stats) {
  auto widen = [](const tensor4<const float>& x, std::vector<double>& buf) {
    buf.resize(x.size());
    std::size_t n = 0;
    for (std::size_t b = 0; b < x.batch; ++b)
      for (std::size_t h = 0; h < x.heads; ++h)
        for (std::size_t t = 0; t < x.tokens; ++t) {
          const float* r = x.row(b, h, t);
          for (std::size_t e = 0; e < x.dim; ++e) buf[n++] = r[e];
        }
    return tensor4<const double>(buf.data(), x.batch, x.heads, x.tokens, x.dim);
  };
  std::vector<double> qd, kd, vd, od(out.size());
  std::vector<double> md(stats.max ? q.batch * q.heads * q.tokens : 0), ld(stats.sum ? q.batch * q.heads * q.tokens : 0);
  forward(opt, a, widen(q, qd), widen(k, kd), widen(v, vd), tensor4<double>(od.data(), out.batch, out.heads, out.tokens, out.dim),
          row_stats<double>{stats.max ? md.data() : nullptr, stats.sum ? ld.data() : nullptr});
  std::size_t n = 0;
  for (std::size_t b = 0; b < out.batch; ++b)
    for (std::size_t h = 0; h < out.heads; ++h)
      for (std::size_t t = 0; t < out.tokens; ++t) {
        float* r = out.row(b, h, t);
        for (std::size_t e = 0; e < out.dim; ++e) r[e] = float(od[n++]);
      }
  for (std::size_t i = 0; i < md.size(); ++i) stats.max[i] = float(md[i]);
  for (std::size_t i = 0; i < ld.size(); ++i) stats.sum[i] = float(ld[i]);
}
}  // namespace cpu_detail

}  // namespace attnsink
