// attnsink/backend/kokkos_backward.hpp — the flash-style backward on any Kokkos
// execution space, from one source; same contract as the reference and cpu
// backwards (backward.hpp).
//
// Nothing tokens × tokens is ever allocated: every kernel recomputes its
// scores from the prepared q, k features and the forward's kept row state
// (m, l), one (row, key) pair at a time. Memory is O(tokens · dim).
//
// Deterministic without atomics: every gradient element has one owner that
// adds its terms in a fixed order, whatever the team size or the device.
//   dk, dv   one team per (batch · kv head, key tile), one key per thread; the
//            team stages query tiles in scratch and each thread walks the
//            group's heads, then the query tiles, in ascending order (GQA sums
//            into the kv head in that fixed order);
//   dq       one team per (batch · kv head, query tile), one row per thread,
//            as the forward (GQA heads share every staged K/V tile); each row
//            walks its key tiles in ascending order;
//   learnable parameters (sink logits, k*, v*, a learned bias table, the
//            feature map's weights): per-row (or per fixed chunk of rows)
//            partial sums in global memory, then one thread per parameter
//            element adds them in index order.
// A per-site bias tensor's gradient is dS itself, written by the dk/dv kernel
// (every visible site once; hidden sites get 0).
//
// Entry points (the forward's, kokkos.hpp, with gradients):
//   backward(backend::kokkos<E>{}, attn, q, k, v, dout, g[, saved])         host pointers (mirrored)
//   backward_device(backend::kokkos<E>{}, attn, q, k, v, dout, g[, saved])  pointers in E's memory
// `saved` is the forward's output and row state from this backend; without
// it the forward runs here first. Link attnsink::kokkos.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <Kokkos_Core.hpp>

#include "../backward.hpp"
#include "../kokkos_compat.hpp"
#include "kokkos.hpp"

namespace attnsink {

namespace kokkos_bwd {

// Rows of a learnable bias's per-task partial sums (bias_grad below).
inline constexpr std::size_t bias_rows = 64;

struct geometry {
  std::size_t d, df, dfp, dv, dvp, group;
  std::size_t nkeys, bq, ktiles;              // dk/dv: keys per team, staged query rows, key tiles
  std::size_t br, hs, hchunks, ni, qtiles, bk;  // dq: rows per team, heads per team, ..., staged keys
  int level;                                   // team scratch level
  std::size_t nbias, np, chunk, nchunks, qchunks;
};

// Everything the kernels read, by value (device-copyable: pointers and policies).
template <class A, class T>
struct plan {
  using norm_t = typename A::norm_type;
  using score_t = typename A::score_type;
  using bias_t = typename A::bias_type;
  static constexpr bool has_kv = bias_t::has_kv;
  static constexpr bool bias_per_site = std::is_same_v<bias_t, bias::tensor>;

  A a;
  problem p;
  geometry g;
  tensor4<const T> q, k, v, dout;
  gradients<T> grads;  // in E's memory
  T* qc;               // rows × dfp: c · map(rope(q)), row (b·heads + h)·tq + i
  T* kf;               // (b·kv_heads + hk)·tk + j × dfp: map(rope(k))
  T* ks;               // kv_heads × dfp: map(k*)
  T* m;                // per row: the forward's m, f = finish(m, l), gD = finish'(m, l) · D
  T* f;
  T* gD;
  T* dqa;              // rows × dfp: d (c·map(q))
  T* dka;              // key rows × dfp: d map(k)
  double* kvrow;       // rows × (dfp + dvp): each row's d map(k*) and dv* terms
  double* sinkrow;     // rows: each row's sink-logit term
  double* bias_part;   // bias tasks × nbias
  double* param_part;  // (chunks + kv_heads) × np
  T c;
  bool causal;

  KOKKOS_INLINE_FUNCTION std::size_t row(std::size_t b, std::size_t h, std::size_t i) const {
    return (b * p.heads + h) * p.tq + i;
  }
  KOKKOS_INLINE_FUNCTION site at(std::size_t b, std::size_t h, std::ptrdiff_t qp, std::size_t j, std::size_t i) const {
    return site{b, h, p.heads, qp, std::ptrdiff_t(j), i, p.tq, p.tk, causal};
  }

  struct terms {
    T p, dS, du;  // weight, d score, d (c·map(q)·map(k))
  };
  // One visible (row, key) pair from u = c·map(q)·map(k) and dP = dO · v (norm.hpp):
  //   s = post(u) + bias, p = weight(s, m)·f, dS = weight'·f·dP + mass'·gD, du = dS·post'(u).
  KOKKOS_INLINE_FUNCTION terms pair(T u, T dP, T mr, T fr, T gr, std::size_t b, std::size_t h, std::ptrdiff_t qp,
                                    std::size_t j, std::size_t i) const {
    T s = a.score.post(u);
    if constexpr (bias_t::additive) s += T(a.bias.value(at(b, h, qp, j, i)));
    const T dS = a.norm.weight_derivative(s, mr) * fr * dP + a.norm.mass_derivative(s, mr) * gr;
    return {a.norm.weight(s, mr) * fr, dS, dS * a.score.post_derivative(u)};
  }
};

// dst[rows × wp] = src rows [0, n) × [0, w) (row stride `stride`), zero elsewhere;
// thread r of nt takes every nt-th element.
template <class T>
KOKKOS_INLINE_FUNCTION void stage(T* dst, const T* src, std::size_t stride, std::size_t n, std::size_t rows,
                                  std::size_t w, std::size_t wp, std::size_t r, std::size_t nt) {
  for (std::size_t idx = r; idx < rows * wp; idx += nt) {
    const std::size_t jj = idx / wp, e = idx % wp;
    dst[idx] = (jj < n && e < w) ? src[jj * stride + e] : T(0);
  }
}

// dk, dv: one team per (batch · kv head, key tile), one key per thread.
template <class A, class T, class E, int Cap>
struct dkv_kernel {
  using member = typename Kokkos::TeamPolicy<E>::member_type;
  plan<A, T> pl;

  KOKKOS_INLINE_FUNCTION void operator()(const member& t) const {
    const problem& p = pl.p;
    const geometry& g = pl.g;
    const std::size_t lr = t.league_rank(), kt = lr % g.ktiles, pr = lr / g.ktiles;
    const std::size_t b = pr / p.kv_heads, hk = pr % p.kv_heads;
    const std::size_t r = t.team_rank(), nt = t.team_size();
    const std::size_t j0 = kt * g.nkeys, j1 = math::min(j0 + g.nkeys, p.tk), j = j0 + r;
    const bool active = j < j1;
    T* Qs = static_cast<T*>(t.team_scratch(g.level).get_shmem_aligned(g.bq * g.dfp * sizeof(T), 16));
    T* Gs = static_cast<T*>(t.team_scratch(g.level).get_shmem_aligned(g.bq * g.dvp * sizeof(T), 16));
    T* Rs = static_cast<T*>(t.team_scratch(g.level).get_shmem_aligned(3 * g.bq * sizeof(T), 16));

    T kj[Cap], vj[Cap], dk[Cap], dv[Cap];
    ATTNSINK_UNROLL_DIM(Cap)
    for (int e = 0; e < Cap; ++e) kj[e] = vj[e] = dk[e] = dv[e] = T(0);
    if (active) {
      const T* kr = pl.kf + (pr * p.tk + j) * g.dfp;
      const T* vr = pl.v.row(b, hk, j);
      ATTNSINK_UNROLL_DIM(Cap)
      for (int e = 0; e < Cap; ++e) {
        if (std::size_t(e) < g.df) kj[e] = kr[e];
        if (std::size_t(e) < g.dv) vj[e] = vr[e];
      }
    }
    for (std::size_t gi = 0; gi < g.group; ++gi) {
      const std::size_t h = hk * g.group + gi;
      for (std::size_t i0 = 0; i0 < p.tq; i0 += g.bq) {
        const std::size_t i1 = math::min(i0 + g.bq, p.tq), n = i1 - i0;
        const tile_visibility vis = classify(pl.a.mask, b, i0, i1, j0, j1, p.tq, p.tk);
        if (vis == tile_visibility::skip) continue;  // the same for every thread
        t.team_barrier();
        const std::size_t r0 = pl.row(b, h, i0);
        stage(Qs, pl.qc + r0 * g.dfp, g.dfp, n, n, g.dfp, g.dfp, r, nt);
        stage(Gs, pl.dout.row(b, h, i0), pl.dout.stride_t, n, n, g.dv, g.dvp, r, nt);
        for (std::size_t x = r; x < n; x += nt) {
          Rs[x] = pl.m[r0 + x];
          Rs[g.bq + x] = pl.f[r0 + x];
          Rs[2 * g.bq + x] = pl.gD[r0 + x];
        }
        t.team_barrier();
        if (!active) continue;
        for (std::size_t ii = 0; ii < n; ++ii) {
          const std::size_t i = i0 + ii;
          if (vis == tile_visibility::partial) {
            const key_range kr = pl.a.mask.range(b, i, p.tq, p.tk);
            if (j < kr.lo || j >= kr.hi) continue;
          }
          const T* qr = Qs + ii * g.dfp;
          const T* gr = Gs + ii * g.dvp;
          T u = 0, dP = 0;
          ATTNSINK_UNROLL_DIM(Cap)
          for (int e = 0; e < Cap; ++e) {
            if (std::size_t(e) < g.df) u += qr[e] * kj[e];
            if (std::size_t(e) < g.dv) dP += gr[e] * vj[e];
          }
          const std::ptrdiff_t qp = mask::detail::qpos(i, p.tq, p.tk);
          const auto w = pl.pair(u, dP, Rs[ii], Rs[g.bq + ii], Rs[2 * g.bq + ii], b, h, qp, j, i);
          if constexpr (plan<A, T>::bias_per_site)
            if (pl.grads.params.bias) pl.grads.params.bias[pl.a.bias.param_index(pl.at(b, h, qp, j, i))] = w.dS;
          ATTNSINK_UNROLL_DIM(Cap)
          for (int e = 0; e < Cap; ++e) {
            if (std::size_t(e) < g.dv) dv[e] += w.p * gr[e];
            if (std::size_t(e) < g.df) dk[e] += w.du * qr[e];
          }
        }
      }
    }
    if (!active) return;
    T* dkr = pl.dka + (pr * p.tk + j) * g.dfp;
    T* dvr = pl.grads.dv.row(b, hk, j);
    ATTNSINK_UNROLL_DIM(Cap)
    for (int e = 0; e < Cap; ++e) {
      if (std::size_t(e) < g.dfp) dkr[e] = std::size_t(e) < g.df ? dk[e] : T(0);
      if (std::size_t(e) < g.dv) dvr[e] = dv[e];
    }
  }
};

// dq (and each row's kv_bias terms): one team per (batch · kv head, query tile),
// one row per thread, the forward's geometry.
template <class A, class T, class E, int Cap>
struct dq_kernel {
  using member = typename Kokkos::TeamPolicy<E>::member_type;
  plan<A, T> pl;

  KOKKOS_INLINE_FUNCTION void operator()(const member& t) const {
    const problem& p = pl.p;
    const geometry& g = pl.g;
    const std::size_t lr = t.league_rank();
    const std::size_t qt = lr % g.qtiles, hc = (lr / g.qtiles) % g.hchunks, pr = lr / (g.qtiles * g.hchunks);
    const std::size_t b = pr / p.kv_heads, hk = pr % p.kv_heads;
    const std::size_t h0 = hk * g.group + hc * g.hs, hn = math::min(g.hs, g.group - hc * g.hs);
    const std::size_t i0 = qt * g.ni, i1 = math::min(i0 + g.ni, p.tq), nr = (i1 - i0) * hn;
    T* Ks = static_cast<T*>(t.team_scratch(g.level).get_shmem_aligned(g.bk * g.dfp * sizeof(T), 16));
    T* Vs = static_cast<T*>(t.team_scratch(g.level).get_shmem_aligned(g.bk * g.dvp * sizeof(T), 16));
    const std::size_t r = t.team_rank(), nt = t.team_size();
    const bool active = r < nr;
    const std::size_t i = i0 + (active ? r / hn : 0), h = h0 + (active ? r % hn : 0);
    const std::size_t row = pl.row(b, h, i);
    const std::ptrdiff_t qp = mask::detail::qpos(i, p.tq, p.tk);

    T qr[Cap], gr[Cap], acc[Cap];
    ATTNSINK_UNROLL_DIM(Cap)
    for (int e = 0; e < Cap; ++e) qr[e] = gr[e] = acc[e] = T(0);
    T mr = 0, fr = 0, gDr = 0;
    key_range kr{0, 0};
    if (active) {
      const T* qs = pl.qc + row * g.dfp;
      const T* ds = pl.dout.row(b, h, i);
      ATTNSINK_UNROLL_DIM(Cap)
      for (int e = 0; e < Cap; ++e) {
        if (std::size_t(e) < g.df) qr[e] = qs[e];
        if (std::size_t(e) < g.dv) gr[e] = ds[e];
      }
      mr = pl.m[row];
      fr = pl.f[row];
      gDr = pl.gD[row];
      kr = pl.a.mask.range(b, i, p.tq, p.tk);
      if constexpr (plan<A, T>::has_kv) {  // the bias key: no mask, no positions, no additive bias
        const T* kk = pl.ks + hk * g.dfp;
        T u = 0, dP = 0;
        ATTNSINK_UNROLL_DIM(Cap)
        for (int e = 0; e < Cap; ++e) {
          if (std::size_t(e) < g.df) u += qr[e] * kk[e];
          if (std::size_t(e) < g.dv) dP += gr[e] * T(pl.a.bias.vstar(hk, std::size_t(e), g.dv));
        }
        const T s = pl.a.score.post(u);
        const T ps = pl.a.norm.weight(s, mr) * fr;
        const T dS = pl.a.norm.weight_derivative(s, mr) * fr * dP + pl.a.norm.mass_derivative(s, mr) * gDr;
        const T du = dS * pl.a.score.post_derivative(u);
        double* kv = pl.kvrow + row * (g.dfp + g.dvp);
        ATTNSINK_UNROLL_DIM(Cap)
        for (int e = 0; e < Cap; ++e) {
          if (std::size_t(e) < g.df) {
            acc[e] += du * kk[e];
            kv[e] = double(du) * double(qr[e]);
          }
          if (std::size_t(e) < g.dv) kv[g.dfp + e] = double(ps) * double(gr[e]);
        }
      }
    }
    const key_range first = pl.a.mask.range(b, i0, p.tq, p.tk), last = pl.a.mask.range(b, i1 - 1, p.tq, p.tk);
    if (last.hi > first.lo) {
      for (std::size_t j0 = first.lo / g.bk * g.bk; j0 < last.hi; j0 += g.bk) {
        const std::size_t nk = math::min(g.bk, p.tk - j0);
        const tile_visibility vis = classify(pl.a.mask, b, i0, i1, j0, j0 + nk, p.tq, p.tk);
        if (vis == tile_visibility::skip) continue;
        t.team_barrier();
        stage(Ks, pl.kf + (pr * p.tk + j0) * g.dfp, g.dfp, nk, nk, g.dfp, g.dfp, r, nt);
        stage(Vs, pl.v.row(b, hk, j0), pl.v.stride_t, nk, nk, g.dv, g.dvp, r, nt);
        t.team_barrier();
        if (!active) continue;
        std::size_t jlo = 0, jhi = nk;
        if (vis == tile_visibility::partial) {
          jlo = kr.lo > j0 ? math::min(kr.lo - j0, nk) : 0;
          jhi = kr.hi > j0 ? math::min(kr.hi - j0, nk) : 0;
        }
        for (std::size_t jj = jlo; jj < jhi; ++jj) {
          const T* kk = Ks + jj * g.dfp;
          const T* vv = Vs + jj * g.dvp;
          T u = 0, dP = 0;
          ATTNSINK_UNROLL_DIM(Cap)
          for (int e = 0; e < Cap; ++e) {
            if (std::size_t(e) < g.df) u += qr[e] * kk[e];
            if (std::size_t(e) < g.dv) dP += gr[e] * vv[e];
          }
          const auto w = pl.pair(u, dP, mr, fr, gDr, b, h, qp, j0 + jj, i);
          ATTNSINK_UNROLL_DIM(Cap)
          for (int e = 0; e < Cap; ++e)
            if (std::size_t(e) < g.df) acc[e] += w.du * kk[e];
        }
      }
    }
    if (!active) return;
    T* dq = pl.dqa + row * g.dfp;
    ATTNSINK_UNROLL_DIM(Cap)
    for (int e = 0; e < Cap; ++e)
      if (std::size_t(e) < g.dfp) dq[e] = std::size_t(e) < g.df ? acc[e] : T(0);
  }
};

// Rows: q features (scaled by c), the row state, f, gD and the sink-logit term.
template <int Cap, class A, class T, class E>
void prepare_rows(const E& space, const plan<A, T>& pl, tensor4<const T> out, const T* sm, const T* sl) {
  const std::size_t n = pl.p.batch * pl.p.heads * pl.p.tq;
  Kokkos::parallel_for(
      "attnsink::kokkos::backward_rows", Kokkos::RangePolicy<E>(space, 0, n), KOKKOS_LAMBDA(const std::size_t idx) {
        const std::size_t i = idx % pl.p.tq, h = (idx / pl.p.tq) % pl.p.heads, b = idx / (pl.p.tq * pl.p.heads);
        const std::size_t d = pl.g.d, df = pl.g.df;
        T x[Cap], y[Cap];
        const T* src = pl.q.row(b, h, i);
        for (std::size_t e = 0; e < d; ++e) x[e] = src[e];
        pl.a.pos.apply(x, d, mask::detail::qpos(i, pl.p.tq, pl.p.tk), 1);
        pl.a.score.map(x, y, d);
        T* qr = pl.qc + idx * pl.g.dfp;
        for (std::size_t e = 0; e < pl.g.dfp; ++e) qr[e] = e < df ? y[e] * pl.c : T(0);
        const T* go = pl.dout.row(b, h, i);
        const T* o = out.row(b, h, i);
        double D = 0;  // D = dO·O = Σ_j p_j dP_j, the kv value included
        for (std::size_t e = 0; e < pl.g.dv; ++e) D += double(go[e]) * double(o[e]);
        const T mr = sm[idx], lr = sl[idx];
        pl.m[idx] = mr;
        pl.f[idx] = pl.a.norm.finish(mr, lr);
        pl.gD[idx] = pl.a.norm.finish_log_derivative(mr, lr) * T(D);
        if constexpr (detail::learns_init<typename A::norm_type>)
          pl.sinkrow[idx] = double(pl.a.norm.init_gradient(h, mr, lr, T(D)));
      });
}

// Keys: map(rope(k)), zero-padded to dfp; and map(k*) per kv head.
template <int Cap, class A, class T, class E>
void prepare_keys(const E& space, const plan<A, T>& pl) {
  const std::size_t n = pl.p.batch * pl.p.kv_heads * pl.p.tk;
  Kokkos::parallel_for(
      "attnsink::kokkos::backward_keys", Kokkos::RangePolicy<E>(space, 0, n), KOKKOS_LAMBDA(const std::size_t idx) {
        const std::size_t j = idx % pl.p.tk, bh = idx / pl.p.tk, d = pl.g.d;
        T x[Cap], y[Cap];
        const T* src = pl.k.row(bh / pl.p.kv_heads, bh % pl.p.kv_heads, j);
        for (std::size_t e = 0; e < d; ++e) x[e] = src[e];
        pl.a.pos.apply(x, d, std::ptrdiff_t(j), 1);
        pl.a.score.map(x, y, d);
        T* o = pl.kf + idx * pl.g.dfp;
        for (std::size_t e = 0; e < pl.g.dfp; ++e) o[e] = e < pl.g.df ? y[e] : T(0);
      });
  if constexpr (plan<A, T>::has_kv) {
    Kokkos::parallel_for(
        "attnsink::kokkos::backward_kstar", Kokkos::RangePolicy<E>(space, 0, pl.p.kv_heads),
        KOKKOS_LAMBDA(const std::size_t hk) {
          const std::size_t d = pl.g.d;
          T x[Cap], y[Cap];
          for (std::size_t e = 0; e < d; ++e) x[e] = T(pl.a.bias.kstar(hk, e, d));  // k* is never rotated
          pl.a.score.map(x, y, d);
          for (std::size_t e = 0; e < pl.g.dfp; ++e) pl.ks[hk * pl.g.dfp + e] = e < pl.g.df ? y[e] : T(0);
        });
  }
}

// A learnable additive bias (a T5 table): per task of bias_rows rows of one
// (batch, head), Σ dS into that task's nbias partials. Recomputes the task's
// scores; runs only when that gradient is asked for.
template <class A, class T, class E>
void bias_grad(const E& space, const plan<A, T>& pl) {
  const std::size_t chunks = (pl.p.tq + bias_rows - 1) / bias_rows, n = pl.p.batch * pl.p.heads * chunks;
  Kokkos::parallel_for(
      "attnsink::kokkos::backward_bias", Kokkos::RangePolicy<E>(space, 0, n), KOKKOS_LAMBDA(const std::size_t task) {
        const problem& p = pl.p;
        const std::size_t ch = task % chunks, bh = task / chunks, b = bh / p.heads, h = bh % p.heads;
        const std::size_t hk = h / pl.g.group;
        double* tb = pl.bias_part + task * pl.g.nbias;
        for (std::size_t e = 0; e < pl.g.nbias; ++e) tb[e] = 0;
        for (std::size_t i = ch * bias_rows; i < math::min((ch + 1) * bias_rows, p.tq); ++i) {
          const std::size_t row = pl.row(b, h, i);
          const T* qr = pl.qc + row * pl.g.dfp;
          const T* gr = pl.dout.row(b, h, i);
          const std::ptrdiff_t qp = mask::detail::qpos(i, p.tq, p.tk);
          const key_range kr = pl.a.mask.range(b, i, p.tq, p.tk);
          for (std::size_t j = kr.lo; j < kr.hi; ++j) {
            const T* kk = pl.kf + ((b * p.kv_heads + hk) * p.tk + j) * pl.g.dfp;
            const T* vv = pl.v.row(b, hk, j);
            T u = 0, dP = 0;
            for (std::size_t e = 0; e < pl.g.df; ++e) u += qr[e] * kk[e];
            for (std::size_t e = 0; e < pl.g.dv; ++e) dP += gr[e] * vv[e];
            const auto w = pl.pair(u, dP, pl.m[row], pl.f[row], pl.gD[row], b, h, qp, j, i);
            const std::ptrdiff_t idx = pl.a.bias.param_index(pl.at(b, h, qp, j, i));
            if (idx >= 0) tb[idx] += double(w.dS);
          }
        }
      });
}

// Back through the feature map and the rotation, one fixed chunk of q rows or
// k rows per thread (map weight gradients: one partial per chunk).
template <int Cap, class A, class T, class E>
void map_back(const E& space, const plan<A, T>& pl) {
  Kokkos::parallel_for(
      "attnsink::kokkos::backward_map", Kokkos::RangePolicy<E>(space, 0, pl.g.nchunks),
      KOKKOS_LAMBDA(const std::size_t ch) {
        const problem& p = pl.p;
        const std::size_t d = pl.g.d, qrows = p.batch * p.heads * p.tq, krows = p.batch * p.kv_heads * p.tk;
        double* dparams = pl.g.np ? pl.param_part + ch * pl.g.np : nullptr;
        const bool is_q = ch < pl.g.qchunks;
        const std::size_t n0 = (is_q ? ch : ch - pl.g.qchunks) * pl.g.chunk;
        const std::size_t n1 = math::min(n0 + pl.g.chunk, is_q ? qrows : krows);
        T x[Cap], dphi[Cap], dx[Cap];
        for (std::size_t n = n0; n < n1; ++n) {
          if (is_q) {
            const std::size_t i = n % p.tq, h = (n / p.tq) % p.heads, b = n / (p.tq * p.heads);
            const T* src = pl.q.row(b, h, i);
            for (std::size_t e = 0; e < d; ++e) x[e] = src[e];
            const std::ptrdiff_t qp = mask::detail::qpos(i, p.tq, p.tk);
            pl.a.pos.apply(x, d, qp, 1);
            for (std::size_t e = 0; e < pl.g.df; ++e) dphi[e] = pl.dqa[n * pl.g.dfp + e] * pl.c;
            pl.a.score.map_backward(x, dphi, dx, d, dparams);
            pl.a.pos.apply(dx, d, qp, -1);
            T* o = pl.grads.dq.row(b, h, i);
            for (std::size_t e = 0; e < d; ++e) o[e] = dx[e];
          } else {
            const std::size_t j = n % p.tk, pr = n / p.tk, b = pr / p.kv_heads, hk = pr % p.kv_heads;
            const T* src = pl.k.row(b, hk, j);
            for (std::size_t e = 0; e < d; ++e) x[e] = src[e];
            pl.a.pos.apply(x, d, std::ptrdiff_t(j), 1);
            for (std::size_t e = 0; e < pl.g.df; ++e) dphi[e] = pl.dka[n * pl.g.dfp + e];
            pl.a.score.map_backward(x, dphi, dx, d, dparams);
            pl.a.pos.apply(dx, d, std::ptrdiff_t(j), -1);
            T* o = pl.grads.dk.row(b, hk, j);
            for (std::size_t e = 0; e < d; ++e) o[e] = dx[e];
          }
        }
      });
}

// Parameter sums, each element by one thread in a fixed order.
template <int Cap, class A, class T, class E>
void param_sums(const E& space, const plan<A, T>& pl) {
  const problem& p = pl.p;
  using N = typename A::norm_type;
  if constexpr (plan<A, T>::has_kv) {
    // d map(k*) and dv*: Σ over (batch, group head, row), then back through the map.
    Kokkos::parallel_for(
        "attnsink::kokkos::backward_kv", Kokkos::RangePolicy<E>(space, 0, p.kv_heads),
        KOKKOS_LAMBDA(const std::size_t hk) {
          const std::size_t d = pl.g.d, w = pl.g.dfp + pl.g.dvp;
          T x[Cap], dphi[Cap], dx[Cap];
          for (std::size_t e = 0; e < pl.g.df + pl.g.dv; ++e) {
            const std::size_t col = e < pl.g.df ? e : pl.g.dfp + (e - pl.g.df);
            double acc = 0;
            for (std::size_t b = 0; b < pl.p.batch; ++b)
              for (std::size_t gi = 0; gi < pl.g.group; ++gi)
                for (std::size_t i = 0; i < pl.p.tq; ++i)
                  acc += pl.kvrow[pl.row(b, hk * pl.g.group + gi, i) * w + col];
            if (e < pl.g.df) dphi[e] = T(acc);
            else if (pl.grads.params.vstar) pl.grads.params.vstar[hk * pl.g.dv + (e - pl.g.df)] = T(acc);
          }
          for (std::size_t e = 0; e < d; ++e) x[e] = T(pl.a.bias.kstar(hk, e, d));
          double* dparams = pl.g.np ? pl.param_part + (pl.g.nchunks + hk) * pl.g.np : nullptr;
          pl.a.score.map_backward(x, dphi, dx, d, dparams);
          if (pl.grads.params.kstar)
            for (std::size_t e = 0; e < d; ++e) pl.grads.params.kstar[hk * d + e] = dx[e];
        });
  }
  if constexpr (detail::learns_init<N>) {
    if (pl.grads.params.sink)
      Kokkos::parallel_for(
          "attnsink::kokkos::backward_sink", Kokkos::RangePolicy<E>(space, 0, p.heads),
          KOKKOS_LAMBDA(const std::size_t h) {
            double acc = 0;
            for (std::size_t b = 0; b < pl.p.batch; ++b)
              for (std::size_t i = 0; i < pl.p.tq; ++i) acc += pl.sinkrow[pl.row(b, h, i)];
            pl.grads.params.sink[h] = T(acc);
          });
  }
  if (pl.g.nbias) {
    const std::size_t tasks = p.batch * p.heads * ((p.tq + bias_rows - 1) / bias_rows);
    Kokkos::parallel_for(
        "attnsink::kokkos::backward_bias_sum", Kokkos::RangePolicy<E>(space, 0, pl.g.nbias),
        KOKKOS_LAMBDA(const std::size_t e) {
          double acc = 0;
          for (std::size_t t = 0; t < tasks; ++t) acc += pl.bias_part[t * pl.g.nbias + e];
          pl.grads.params.bias[e] = T(acc);
        });
  }
  if (pl.grads.params.score && pl.g.np) {
    const std::size_t slots = pl.g.nchunks + (plan<A, T>::has_kv ? p.kv_heads : 0);
    Kokkos::parallel_for(
        "attnsink::kokkos::backward_score_sum", Kokkos::RangePolicy<E>(space, 0, pl.g.np),
        KOKKOS_LAMBDA(const std::size_t e) {
          double acc = 0;
          for (std::size_t s = 0; s < slots; ++s) acc += pl.param_part[s * pl.g.np + e];
          pl.grads.params.score[e] = T(acc);
        });
  }
}

// Team sizes and tiles for Cap, then every kernel in order.
template <int Cap, class A, class T, class E>
void launch(const backend::kokkos<E>& be, plan<A, T> pl, tensor4<const T> out, const T* sm, const T* sl) {
  using M = typename E::memory_space;
  constexpr bool host = kokkos_compat::host_accessible<E>;
  const problem& p = pl.p;
  geometry& g = pl.g;
  auto alloc_t = [](const char* name, std::size_t n) {
    return Kokkos::View<T*, M>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(name)), n);
  };
  auto alloc_d = [](const char* name, std::size_t n) { return Kokkos::View<double*, M>(std::string(name), n); };  // zeroed
  const std::size_t rows = p.batch * p.heads * p.tq, krows = p.batch * p.kv_heads * p.tk;
  const auto qc = alloc_t("attnsink::bwd_q", rows * g.dfp), kf = alloc_t("attnsink::bwd_k", krows * g.dfp);
  const auto ks = alloc_t("attnsink::bwd_kstar", A::bias_type::has_kv ? p.kv_heads * g.dfp : 0);
  const auto m = alloc_t("attnsink::bwd_m", rows), f = alloc_t("attnsink::bwd_f", rows),
             gD = alloc_t("attnsink::bwd_gD", rows);
  const auto dqa = alloc_t("attnsink::bwd_dq", rows * g.dfp), dka = alloc_t("attnsink::bwd_dk", krows * g.dfp);
  const auto kvrow = alloc_d("attnsink::bwd_kvrow", A::bias_type::has_kv ? rows * (g.dfp + g.dvp) : 0);
  const auto sinkrow = alloc_d("attnsink::bwd_sinkrow", detail::learns_init<typename A::norm_type> ? rows : 0);
  const std::size_t bias_tasks = p.batch * p.heads * ((p.tq + bias_rows - 1) / bias_rows);
  const auto bias_part = alloc_d("attnsink::bwd_bias", g.nbias ? bias_tasks * g.nbias : 0);
  const auto param_part = alloc_d("attnsink::bwd_params", g.np ? (g.nchunks + p.kv_heads) * g.np : 0);
  pl.qc = qc.data();
  pl.kf = kf.data();
  pl.ks = ks.data();
  pl.m = m.data();
  pl.f = f.data();
  pl.gD = gD.data();
  pl.dqa = dqa.data();
  pl.dka = dka.data();
  pl.kvrow = kvrow.data();
  pl.sinkrow = sinkrow.data();
  pl.bias_part = bias_part.data();
  pl.param_part = param_part.data();

  if constexpr (plan<A, T>::bias_per_site)
    if (pl.grads.params.bias)
      Kokkos::deep_copy(be.space,
                        Kokkos::View<T*, M, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(pl.grads.params.bias,
                                                                                     pl.a.bias.param_count(p)),
                        T(0));
  prepare_rows<Cap>(be.space, pl, out, sm, sl);
  prepare_keys<Cap>(be.space, pl);

  // Team sizes within what the kernels' registers allow; scratch within 40 KiB (level 0) where it fits.
  const std::size_t want = be.team_rows ? be.team_rows : (host ? 1 : 128);
  auto team_size = [&](const auto& kern, std::size_t scratch) {
    Kokkos::TeamPolicy<E> trial(be.space, 1, Kokkos::AUTO);
    trial.set_scratch_size(g.level, Kokkos::PerTeam(scratch));
    return std::max<std::size_t>(1, std::min(want, std::size_t(trial.team_size_max(kern, Kokkos::ParallelForTag()))));
  };
  {
    using K = dkv_kernel<A, T, E, Cap>;
    const std::size_t scratch = g.bq * (g.dfp + g.dvp + 3) * sizeof(T) + 64;
    g.nkeys = team_size(K{pl}, scratch);
    g.ktiles = (p.tk + g.nkeys - 1) / g.nkeys;
    Kokkos::TeamPolicy<E> policy(be.space, int(p.batch * p.kv_heads * g.ktiles), int(g.nkeys));
    policy.set_scratch_size(g.level, Kokkos::PerTeam(scratch));
    Kokkos::parallel_for("attnsink::kokkos::backward_dkv", policy, K{pl});
  }
  {
    using K = dq_kernel<A, T, E, Cap>;
    const std::size_t scratch = g.bk * (g.dfp + g.dvp) * sizeof(T) + 64;
    g.br = team_size(K{pl}, scratch);
    g.hs = std::min(g.group, g.br);
    g.hchunks = (g.group + g.hs - 1) / g.hs;
    g.ni = std::max<std::size_t>(1, g.br / g.hs);
    g.qtiles = (p.tq + g.ni - 1) / g.ni;
    Kokkos::TeamPolicy<E> policy(be.space, int(p.batch * p.kv_heads * g.hchunks * g.qtiles), int(g.br));
    policy.set_scratch_size(g.level, Kokkos::PerTeam(scratch));
    Kokkos::parallel_for("attnsink::kokkos::backward_dq", policy, K{pl});
  }
  if (g.nbias) bias_grad(be.space, pl);
  map_back<Cap>(be.space, pl);
  param_sums<Cap>(be.space, pl);
  be.space.fence();  // the buffers above must outlive the kernels
}

// Runs on operands in E's memory; p validated; out, sm, sl the forward's.
template <class A, class T, class E>
void run(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const T> q, tensor4<const T> k,
         tensor4<const T> v, tensor4<const T> dout, gradients<T> g, tensor4<const T> out, const T* sm, const T* sl) {
  constexpr bool host = kokkos_compat::host_accessible<E>;
  plan<A, T> pl{a, p, {}, q, k, v, dout, g, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                nullptr, nullptr, nullptr, nullptr, nullptr, T(a.score.scale(p.dim)), a.mask.is_causal()};
  geometry& ge = pl.g;
  const std::size_t need = kokkos_detail::set_dims(ge, a, p);
  const std::size_t row_bytes = (ge.dfp + ge.dvp + 3) * sizeof(T);
  std::size_t budget = std::min<std::size_t>(40 << 10, Kokkos::TeamPolicy<E>::scratch_size_max(0) - 64);
  ge.level = 0;
  if (budget < 8 * row_bytes) {  // wide double rows: a slower level rather than refusing
    ge.level = 1;
    budget = std::min<std::size_t>(256 << 10, Kokkos::TeamPolicy<E>::scratch_size_max(1) - 64);
  }
  std::size_t tile = std::max<std::size_t>(1, std::min<std::size_t>(host ? 64 : 128, budget / row_bytes));
  if (be.key_tile) tile = std::min(tile, be.key_tile);
  ge.bq = ge.bk = tile;
  ge.nbias = (g.params.bias && !plan<A, T>::bias_per_site) ? a.bias.param_count(p) : 0;
  ge.np = g.params.score ? a.score.param_count(p.dim) : 0;
  ge.chunk = ge.np ? 256 : 1;
  ge.qchunks = (p.batch * p.heads * p.tq + ge.chunk - 1) / ge.chunk;
  ge.nchunks = ge.qchunks + (p.batch * p.kv_heads * p.tk + ge.chunk - 1) / ge.chunk;
  kokkos_detail::with_capacity<host>(need, [&]<int Cap>() { launch<Cap>(be, pl, out, sm, sl); });
}

// The forward (when nothing was saved), then run(); operands in E's memory.
template <class A, class T, class E>
void run_with_forward(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const T> q,
                      tensor4<const T> k, tensor4<const T> v, tensor4<const T> dout, gradients<T> g,
                      saved_forward<T> saved) {
  using M = typename E::memory_space;
  Kokkos::View<T*, M> own_out, own_m, own_l;
  if (saved.empty()) {
    const std::size_t rows = p.batch * p.heads * p.tq;
    own_out = Kokkos::View<T*, M>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::bwd_out"), rows * p.vdim);
    own_m = Kokkos::View<T*, M>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::bwd_fm"), rows);
    own_l = Kokkos::View<T*, M>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::bwd_fl"), rows);
    const tensor4<T> o(own_out.data(), p.batch, p.heads, p.tq, p.vdim);
    kokkos_detail::dispatch(be, a, p, q, k, v, o, row_stats<T>{own_m.data(), own_l.data()});
    saved = {tensor4<const T>(o), own_m.data(), own_l.data()};
  }
  run(be, a, p, q, k, v, dout, g, saved.out, saved.max, saved.sum);
}

// dst (float, strided) = src (double, dense), in E's memory.
template <class E>
void narrow_rows(const E& space, const double* src, tensor4<float> dst) {
  Kokkos::parallel_for(
      "attnsink::kokkos::bwd_narrow", Kokkos::RangePolicy<E>(space, 0, dst.batch * dst.heads * dst.tokens),
      KOKKOS_LAMBDA(const std::size_t r) {
        const std::size_t t = r % dst.tokens, bh = r / dst.tokens;
        float* o = dst.row(bh / dst.heads, bh % dst.heads, t);
        for (std::size_t e = 0; e < dst.dim; ++e) o[e] = float(src[r * dst.dim + e]);
      });
}
template <class E>
void narrow_flat(const E& space, const double* src, float* dst, std::size_t n) {
  Kokkos::parallel_for(
      "attnsink::kokkos::bwd_narrow_params", Kokkos::RangePolicy<E>(space, 0, n),
      KOKKOS_LAMBDA(const std::size_t e) { dst[e] = float(src[e]); });
}

// Float operands of a normalization float cannot resolve: everything in double.
template <class A, class E>
void run_in_double(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const float> q,
                   tensor4<const float> k, tensor4<const float> v, tensor4<const float> dout, gradients<float> g) {
  using M = typename E::memory_space;
  using kokkos_detail::dense;
  const auto qd = kokkos_detail::widen(be.space, q), kd = kokkos_detail::widen(be.space, k),
             vd = kokkos_detail::widen(be.space, v), dod = kokkos_detail::widen(be.space, dout);
  Kokkos::View<double*, M> dq("attnsink::bwd_dq64", q.size()), dk("attnsink::bwd_dk64", k.size()),
      dv("attnsink::bwd_dv64", v.size());
  const std::size_t sizes[5] = {p.heads, p.kv_heads * p.dim, p.kv_heads * p.vdim, a.bias.param_count(p),
                                a.score.param_count(p.dim)};
  float* fp[5] = {g.params.sink, g.params.kstar, g.params.vstar, g.params.bias, g.params.score};
  Kokkos::View<double*, M> pd[5];
  gradients<double> gd{dense<double>(dq.data(), q.batch, q.heads, q.tokens, q.dim),
                       dense<double>(dk.data(), k.batch, k.heads, k.tokens, k.dim),
                       dense<double>(dv.data(), v.batch, v.heads, v.tokens, v.dim)};
  double** dp[5] = {&gd.params.sink, &gd.params.kstar, &gd.params.vstar, &gd.params.bias, &gd.params.score};
  for (int i = 0; i < 5; ++i)
    if (fp[i]) {
      pd[i] = Kokkos::View<double*, M>("attnsink::bwd_param64", sizes[i]);
      *dp[i] = pd[i].data();
    }
  run_with_forward<A, double, E>(be, a, p, dense<const double>(qd.data(), q.batch, q.heads, q.tokens, q.dim),
                                 dense<const double>(kd.data(), k.batch, k.heads, k.tokens, k.dim),
                                 dense<const double>(vd.data(), v.batch, v.heads, v.tokens, v.dim),
                                 dense<const double>(dod.data(), dout.batch, dout.heads, dout.tokens, dout.dim), gd, {});
  narrow_rows<E>(be.space, dq.data(), g.dq);
  narrow_rows<E>(be.space, dk.data(), g.dk);
  narrow_rows<E>(be.space, dv.data(), g.dv);
  for (int i = 0; i < 5; ++i)
    if (fp[i]) narrow_flat<E>(be.space, pd[i].data(), fp[i], sizes[i]);
  be.space.fence();
}

// Validated operands in E's memory: the float → double detour, then the forward and run().
template <class A, class T, class E>
void dispatch(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const T> q, tensor4<const T> k,
              tensor4<const T> v, tensor4<const T> dout, gradients<T> g, saved_forward<T> saved) {
  if constexpr (std::is_same_v<T, float> && float_too_coarse<typename A::norm_type>) {
    run_in_double(be, a, p, q, k, v, dout, g);  // its own forward in double; `saved` is not needed
  } else {
    run_with_forward(be, a, p, q, k, v, dout, g, saved);
  }
}

}  // namespace kokkos_bwd

// Backward on the Kokkos backend with every pointer — tensors, gradients,
// saved state and the policies' parameter arrays — in E's memory (see the
// header comment); same contract as the other backends' backward.
template <attention_type A, class T, class E>
  requires std::is_floating_point_v<T>
void backward_device(const backend::kokkos<E>& be, const A& a, tensor4<const T> q, tensor4<const T> k,
                     tensor4<const T> v, tensor4<const T> dout, gradients<T> g, saved_forward<T> saved = {}) {
  detail::assert_differentiable<A>();
  problem p;
  if constexpr (kokkos_compat::host_accessible<E>) {
    p = check_backward(a, q, k, v, dout, g);
  } else {
    const tensor4<T> dout_shape(const_cast<T*>(dout.data), dout.batch, dout.heads, dout.tokens, dout.dim);
    p = check_forward(attention<>{}, q, k, v, dout_shape);  // shapes first: they size the parameter copies
    kokkos_detail::mirror<Kokkos::HostSpace, typename E::memory_space> to_host{p, {}, {}, {}};
    check_backward(kokkos_detail::rebind_all(a, to_host), q, k, v, dout, g);
  }
  if (!saved.empty()) {
    detail::require(saved.out.shape() == dout.shape(), "saved.out",
                    [&] { return "expected the forward's output, shape " + detail::shape_str(dout); });
    detail::require(saved.max && saved.sum, "saved", "expected the forward's row state (max and sum)");
  }
  kokkos_bwd::dispatch(be, a, p, q, k, v, dout, g, saved);
}

// Backward on the Kokkos backend with operands in host memory: copies them
// (and the policies' parameter arrays) to E's memory when E cannot read host
// memory, runs there, and copies the gradients back.
template <attention_type A, class T, class E>
  requires std::is_floating_point_v<T>
void backward(const backend::kokkos<E>& be, const A& a, tensor4<const T> q, tensor4<const T> k, tensor4<const T> v,
              tensor4<const T> dout, gradients<T> g, saved_forward<T> saved = {}) {
  detail::assert_differentiable<A>();
  const problem p = check_backward(a, q, k, v, dout, g);
  if (!saved.empty()) {
    detail::require(saved.out.shape() == dout.shape(), "saved.out",
                    [&] { return "expected the forward's output, shape " + detail::shape_str(dout); });
    detail::require(saved.max && saved.sum, "saved", "expected the forward's row state (max and sum)");
  }
  using M = typename E::memory_space;
  if constexpr (kokkos_compat::host_accessible<E>) {
    kokkos_bwd::dispatch(be, a, p, q, k, v, dout, g, saved);
  } else {
    using kokkos_detail::dense;
    using kokkos_detail::upload;
    kokkos_detail::mirror<M, Kokkos::HostSpace> to_dev{p, {}, {}, {}};
    const A ad = kokkos_detail::rebind_all(a, to_dev);
    const auto qd = upload<M>(q), kd = upload<M>(k), vd = upload<M>(v), dod = upload<M>(dout);
    Kokkos::View<T*, M> dq("attnsink::dq", q.size()), dk("attnsink::dk", k.size()), dv("attnsink::dv", v.size());
    gradients<T> gd{dense<T>(dq.data(), q.batch, q.heads, q.tokens, q.dim),
                    dense<T>(dk.data(), k.batch, k.heads, k.tokens, k.dim),
                    dense<T>(dv.data(), v.batch, v.heads, v.tokens, v.dim)};
    const std::size_t sizes[5] = {p.heads, p.kv_heads * p.dim, p.kv_heads * p.vdim, a.bias.param_count(p),
                                  a.score.param_count(p.dim)};
    T* hp[5] = {g.params.sink, g.params.kstar, g.params.vstar, g.params.bias, g.params.score};
    T** dp[5] = {&gd.params.sink, &gd.params.kstar, &gd.params.vstar, &gd.params.bias, &gd.params.score};
    Kokkos::View<T*, M> pd[5];
    for (int i = 0; i < 5; ++i)
      if (hp[i]) {
        pd[i] = Kokkos::View<T*, M>("attnsink::dparam", sizes[i]);
        *dp[i] = pd[i].data();
      }
    Kokkos::View<T*, M> so, sm, sl;
    saved_forward<T> sd{};
    if (!saved.empty()) {
      const std::size_t rows = p.batch * p.heads * p.tq;
      so = upload<M>(saved.out);
      sm = upload<M>(tensor4<const T>(saved.max, 1, 1, rows, 1));
      sl = upload<M>(tensor4<const T>(saved.sum, 1, 1, rows, 1));
      sd = {dense<const T>(so.data(), p.batch, p.heads, p.tq, p.vdim), sm.data(), sl.data()};
    }
    kokkos_bwd::dispatch(be, ad, p, dense<const T>(qd.data(), q.batch, q.heads, q.tokens, q.dim),
                         dense<const T>(kd.data(), k.batch, k.heads, k.tokens, k.dim),
                         dense<const T>(vd.data(), v.batch, v.heads, v.tokens, v.dim),
                         dense<const T>(dod.data(), dout.batch, dout.heads, dout.tokens, dout.dim), gd, sd);
    auto download = [](const Kokkos::View<T*, M>& src, tensor4<T> dst) {
      auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), src);
      std::size_t n = 0;
      for (std::size_t b = 0; b < dst.batch; ++b)
        for (std::size_t hh = 0; hh < dst.heads; ++hh)
          for (std::size_t t = 0; t < dst.tokens; ++t)
            for (std::size_t e = 0; e < dst.dim; ++e) dst.row(b, hh, t)[e] = h(n++);
    };
    download(dq, g.dq);
    download(dk, g.dk);
    download(dv, g.dv);
    using host_view = Kokkos::View<T*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    for (int i = 0; i < 5; ++i)
      if (hp[i]) Kokkos::deep_copy(host_view(hp[i], sizes[i]), pd[i]);
  }
}

}  // namespace attnsink
