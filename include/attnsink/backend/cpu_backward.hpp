// attnsink/backend/cpu_backward.hpp — the flash-style CPU backward: xsimd inner
// loops, oneTBB threads, deterministic.
//
// Nothing tokens × tokens is ever allocated: each (query tile × key tile) block
// recomputes its scores from the prepared q, k features and the forward's kept
// row state (m, l), forms P and dS in a tile-sized scratch, and is done. The
// five tile products (S = Q·Kᵀ, dP = dO·Vᵀ, dV += Pᵀ·dO, dK += dSᵀ·Q,
// dQ += dS·K) run on the forward's register-blocked micro-kernel, reading Pᵀ
// and dSᵀ in place (no transposes); the elementwise step (P, dS from S, dP) is
// SIMD for the softmax family and sigmoid, with ALiBi as one FMA per vector.
//
// Determinism without atomics: every accumulator row is owned by one task and
// receives its products in a fixed order.
//   fused (the default with at least two (batch, kv head) pairs per hardware
//   thread) — one task per pair walks its key tiles in ascending order, each
//   meeting the pair's query tiles in ascending order: one pass, 5 tile
//   products and one exponential per score. Memory per thread: the pair's row
//   state and dq accumulators (O(tokens · dim)) plus one key tile; query
//   operands are re-made per block from q and dO (a copy) unless a rotation or
//   feature map makes them worth keeping for the pair.
//   two_pass (few pairs) — dk, dv parallel over (pair, key tile), each task
//   walking its query tiles in ascending order; then dq parallel over (pair,
//   query tile), each walking its key tiles in ascending order (7 products).
//   Operands are made once for all pairs (O(tokens · dim)).
// Both schedules form the same products in the same order, so they agree bit
// for bit (tested). Per-parameter sums (sink logits, k*, v*, the T5 table,
// feature-map weights) are formed per task or per tile and then added in a
// fixed order. No result depends on which thread ran what, so gradients are
// bit-identical whatever the thread count.
//
// Link attnsink::cpu (xsimd, TBB).
#pragma once

#include <algorithm>
#include <cstddef>
#include <thread>
#include <type_traits>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <xsimd/xsimd.hpp>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../backward.hpp"
#include "cpu.hpp"

namespace attnsink {

namespace cpu_bwd {

template <class T>
using simd = xsimd::batch<T>;
template <class T>
using avec = std::vector<T, xsimd::aligned_allocator<T>>;

// Which loop nest runs the blocks; automatic picks from the shape and the machine only.
enum class schedule { automatic, two_pass, fused };

inline std::size_t round_up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }

using cpu_detail::gemm_acc;  // the forward's P·V product, with an output stride


// Every tile product is cpu_detail::gemm (the forward's register-blocked
// micro-kernel: 6 rows × 4 vectors of accumulators on AVX-512): each output
// element is one FMA chain over its reduction index in ascending order, from
// zero or from the accumulator's previous value, so a product's bits do not
// depend on which loop nest (schedule) runs it. Row strides of the operands
// read as vectors (B) and of the results are padded to whole SIMD vectors.
template <bool Add, class T>
inline void tile_gemm(std::size_t m, std::size_t n, const T* a, std::size_t ais, std::size_t aks, const T* b,
                      std::size_t ldb, std::size_t K, T* c, std::size_t ldc) {
  cpu_detail::gemm<Add>(m, n / simd<T>::size, a, ais, aks, b, ldb, K, c, ldc);
}

// e^x (the forward's fast_exp) for x <= 0 (a score minus its row's maximum),
// and 0 below -64: weights under e^-64 ≈ 1.6e-28 of the row's largest are
// dropped rather than left to become subnormal in the products (a microcode
// assist per operation; ALiBi's distant keys do that).
template <class T>
inline simd<T> exp_weight(const simd<T>& x) {
  return xsimd::select(x >= simd<T>(T(-64)), cpu_detail::fast_exp<T>(x), simd<T>(T(0)));
}

// 0, 1, ..., W - 1 as T: the key offsets of one vector of scores.
template <class T>
inline simd<T> iota() {
  alignas(64) T x[simd<T>::size];
  for (std::size_t w = 0; w < simd<T>::size; ++w) x[w] = T(w);
  return simd<T>::load_aligned(x);
}

template <class T>
struct scratch {
  avec<T> s, dp;                  // one block's P (from S) and dS (from dP), R × bk
  avec<T> qc, dO;                 // fused: one query tile's operands (R × dfp, R × dvp), or a pair's (kept)
  avec<T> kp, kt, vt, dk, dv;     // fused: one key tile's operands and dk, dv accumulators
  avec<T> m, l, f, gD, D, dq;     // fused: one pair's row state and dq accumulators
  std::vector<T> x, dphi, dx;
};

// One query tile's rows (r < R): operands, row state and dq accumulators.
template <class T>
struct qside {
  const T* Q;  // c · map(rope(q)), R × dfp
  const T* G;  // dO, R × dvp
  const T *m, *l, *f, *gD, *D;
  T* dq;       // d map(q) / c, R × dfp
};

// One key tile, from its first key: operands and dk, dv accumulators.
template <class T>
struct kside {
  const T* kp;     // map(rope(k)), bk × dfp
  const T* kt;     // its transpose, df × ld
  const T* vt;     // vᵀ, dv × ld
  std::size_t ld;
  T* dk;           // d map(k), bk × dfp
  T* dv;           // bk × dvp
};

template <class A, class T>
struct plan {
  using bias_t = typename A::bias_type;
  using norm_t = typename A::norm_type;
  using score_t = typename A::score_type;
  static constexpr bool has_kv = bias_t::has_kv;
  static constexpr std::size_t W = simd<T>::size;
  static constexpr bool exp_norm = std::is_base_of_v<norm::exp_family, norm_t>;
  static constexpr bool sigmoid_norm = std::is_same_v<norm_t, norm::sigmoid>;
  // ALiBi's bias is one FMA per score vector (as in the forward's kernel)
  static constexpr bool alibi_fast = std::is_same_v<bias_t, bias::alibi>;
  // The block's elementwise step runs in SIMD for the softmax family and
  // sigmoid with a plain score; other additive biases are added (and their
  // parameter gradients gathered) by a scalar pass around the vector step.
  static constexpr bool vec_fast = (exp_norm || sigmoid_norm) && !score_t::has_post;
  // a tensor bias has one parameter per site: its gradient is written, not summed
  static constexpr bool bias_per_site = std::is_same_v<bias_t, bias::tensor>;

  const A& a;
  problem p;
  tensor4<const T> q, k, v, dout;
  saved_forward<T> saved;
  gradients<T> g;
  std::size_t d, dv, df, group, ni, bk, R, qtiles, ktiles, tkp, pairs, nbias;
  std::size_t dfp, dvp;  // df, dv rounded up to whole SIMD vectors: the row strides of Q, dO, kp and the accumulators
  std::size_t np;        // the score's parameters (feature-map weights)
  T c;
  bool causal;

  avec<T> ks;                      // per pair: map(k*), df
  std::vector<double> task_bias;   // per (pair, key tile): nbias
  std::vector<double> task_kv;     // per (pair, query tile): df (d map(k*)) + dv (dv*) + group (sink)
  mutable std::vector<double> chunk_params;  // per (pair, query tile), then per (pair, key tile), then k*: np
  std::size_t kv_stride() const { return df + dv + group; }

  // Rows of query tile qt: r < (positions in the tile)·group is position
  // i0 + r / group of head hk·group + r % group.
  std::size_t tile_nr(std::size_t qt) const { return (std::min(qt * ni + ni, p.tq) - qt * ni) * group; }
  bool skipped(std::size_t pair, std::size_t qt, std::size_t kt_) const {
    const std::size_t i0 = qt * ni, j0 = kt_ * bk;
    return classify(a.mask, pair / p.kv_heads, i0, std::min(i0 + ni, p.tq), j0, std::min(j0 + bk, p.tk), p.tq,
                    p.tk) == tile_visibility::skip;
  }

  // Query tile qt's operands: Q = c·map(rope(q)) and G = dO (padding columns zero).
  void prep_operands(std::size_t pair, std::size_t qt, T* Q, T* G, T* x) const {
    const std::size_t b = pair / p.kv_heads, hk = pair % p.kv_heads, i0 = qt * ni, nr = tile_nr(qt);
    for (std::size_t r = 0; r < nr; ++r) {
      const std::size_t i = i0 + r / group, h = hk * group + r % group;
      const T* src = q.row(b, h, i);
      std::copy(src, src + d, x);
      a.pos.apply(x, d, mask::detail::qpos(i, p.tq, p.tk), 1);
      T* qr = Q + r * dfp;
      a.score.map(x, qr, d);
      for (std::size_t e = 0; e < df; ++e) qr[e] *= c;
      std::fill(qr + df, qr + dfp, T(0));
      const T* gsrc = dout.row(b, h, i);
      std::copy(gsrc, gsrc + dv, G + r * dvp);
      std::fill(G + r * dvp + dv, G + (r + 1) * dvp, T(0));
    }
  }

  // Query tile qt's row state from the forward's (m, l): f, gD and D = dO·O.
  void prep_state(std::size_t pair, std::size_t qt, T* m, T* l, T* f, T* gD, T* D) const {
    const std::size_t b = pair / p.kv_heads, hk = pair % p.kv_heads, i0 = qt * ni, nr = tile_nr(qt);
    for (std::size_t r = 0; r < R; ++r) {
      if (r >= nr) {
        m[r] = l[r] = f[r] = gD[r] = D[r] = T(0);
        continue;
      }
      const std::size_t i = i0 + r / group, h = hk * group + r % group;
      const T* gsrc = dout.row(b, h, i);
      const T* o = saved.out.row(b, h, i);
      double Dr = 0;  // D = dO·O = Σ_j p_j dP_j, the kv value included
      for (std::size_t e = 0; e < dv; ++e) Dr += double(gsrc[e]) * double(o[e]);
      const std::size_t srow = (b * p.heads + h) * p.tq + i;
      const T mr = saved.max[srow], lr = saved.sum[srow];
      m[r] = mr;
      l[r] = lr;
      D[r] = T(Dr);
      f[r] = a.norm.finish(mr, lr);
      gD[r] = a.norm.finish_log_derivative(mr, lr) * T(Dr);
    }
  }

  // Key tile kt_'s operands into ks (kp, kt, vt; padding zero).
  void prep_keys(std::size_t pair, std::size_t kt_, T* kp, T* kt, T* vt, std::size_t ld, T* x) const {
    const std::size_t b = pair / p.kv_heads, hk = pair % p.kv_heads;
    const std::size_t j0 = kt_ * bk, nk = std::min(bk, p.tk - j0), nkp = round_up(nk, 2 * W);
    for (std::size_t jj = 0; jj < nk; ++jj) {
      const std::size_t j = j0 + jj;
      const T* src = k.row(b, hk, j);
      std::copy(src, src + d, x);
      a.pos.apply(x, d, std::ptrdiff_t(j), 1);
      T* kr = kp + jj * dfp;
      a.score.map(x, kr, d);
      std::fill(kr + df, kr + dfp, T(0));
      for (std::size_t e = 0; e < df; ++e) kt[e * ld + jj] = kr[e];
      const T* vr = v.row(b, hk, j);
      for (std::size_t e = 0; e < dv; ++e) vt[e * ld + jj] = vr[e];
    }
    for (std::size_t e = 0; e < df; ++e) std::fill(kt + e * ld + nk, kt + e * ld + nkp, T(0));
    for (std::size_t e = 0; e < dv; ++e) std::fill(vt + e * ld + nk, vt + e * ld + nkp, T(0));
  }

  // One (query tile × key tile) block. DKV: add into dk, dv; DQ: into dq.
  template <bool DKV, bool DQ>
  void block(scratch<T>& sc, const qside<T>& qs, const kside<T>& ksd, std::size_t pair, std::size_t qt,
             std::size_t kt_, double* tb) const {
    const std::size_t b = pair / p.kv_heads, hk = pair % p.kv_heads;
    const std::size_t i0 = qt * ni, i1 = std::min(i0 + ni, p.tq), nr = (i1 - i0) * group;
    const std::size_t j0 = kt_ * bk, nk = std::min(bk, p.tk - j0), nkp = round_up(nk, 2 * W);
    const tile_visibility vis = classify(a.mask, b, i0, i1, j0, j0 + nk, p.tq, p.tk);
    if (vis == tile_visibility::skip) return;
    const T* Q = qs.Q;
    const T* G = qs.G;
    T* S = sc.s.data();
    T* dP = sc.dp.data();
    // forward: u = c·map(q)·map(k); backward: dP = dO · vᵀ
    tile_gemm<false>(nr, nkp, Q, dfp, 1, ksd.kt, ksd.ld, df, S, bk);
    tile_gemm<false>(nr, nkp, G, dvp, 1, ksd.vt, ksd.ld, dv, dP, bk);
    for (std::size_t r = 0; r < R; ++r) {
      T* sr = S + r * bk;
      T* dr = dP + r * bk;
      std::size_t c0 = 0, c1 = nk;
      std::size_t i = 0, h = 0;
      if (r >= nr) {
        c1 = 0;
      } else {
        i = i0 + r / group;
        h = hk * group + r % group;
        if (vis == tile_visibility::partial) {
          const key_range kr = a.mask.range(b, i, p.tq, p.tk);
          c0 = std::clamp(kr.lo, j0, j0 + nk) - j0;
          c1 = std::clamp(kr.hi, j0, j0 + nk) - j0;
          if (c1 < c0) c1 = c0;
        }
      }
      const T mr = qs.m[r], fr = qs.f[r], gr = qs.gD[r];
      if constexpr (vec_fast) {
        if (c0 < c1) {
          const std::ptrdiff_t qp = mask::detail::qpos(i, p.tq, p.tk);
          if constexpr (bias_t::additive && !alibi_fast)
            for (std::size_t jj = c0; jj < c1; ++jj)
              sr[jj] += T(a.bias.value(site{b, h, p.heads, qp, std::ptrdiff_t(j0 + jj), i, p.tq, p.tk, causal}));
          const simd<T> mv(mr), fv(fr), gv(gr);
          [[maybe_unused]] simd<T> slope(T(0)), kq(T(0));
          if constexpr (alibi_fast) {
            // s += -slope·(i - j) = slope·(j - i), j - i exact in T (as the forward rounds it)
            slope = simd<T>(T(a.bias.slope(h, p.heads)));
            kq = iota<T>() - simd<T>(T(qp));
          }
          for (std::size_t jj = c0 / W * W; jj < c1; jj += W) {
            simd<T> s = simd<T>::load_aligned(sr + jj);
            if constexpr (alibi_fast) s = xsimd::fma(slope, kq + simd<T>(T(j0 + jj)), s);
            const simd<T> dpv = simd<T>::load_aligned(dr + jj);
            if constexpr (exp_norm) {
              // p = e^{s - m}·f; dS = e^{s - m}·(f·dP + g·D)  (norm.hpp, weight' = mass' = weight)
              const simd<T> w = exp_weight(s - mv);
              (w * fv).store_aligned(sr + jj);
              (w * xsimd::fma(fv, dpv, gv)).store_aligned(dr + jj);
            } else {
              // sigmoid: p = σ(s + b)·f; dS = σ(1 - σ)·f·dP (no denominator, so no mass term)
              const simd<T> w = cpu_detail::sigmoid_fast<T>(s, T(a.norm.bias));  // the forward's σ
              (w * fv).store_aligned(sr + jj);
              ((w - w * w) * (fv * dpv)).store_aligned(dr + jj);
            }
          }
          if constexpr (bias_t::additive && !alibi_fast)
            if (DKV && g.params.bias)
              for (std::size_t jj = c0; jj < c1; ++jj) {
                const std::ptrdiff_t idx =
                    a.bias.param_index(site{b, h, p.heads, qp, std::ptrdiff_t(j0 + jj), i, p.tq, p.tk, causal});
                if constexpr (bias_per_site) {
                  g.params.bias[idx] = dr[jj];
                } else if (idx >= 0) {
                  tb[idx] += double(dr[jj]);
                }
              }
        }
      } else {
        const std::ptrdiff_t qp = mask::detail::qpos(i, p.tq, p.tk);
        for (std::size_t jj = c0; jj < c1; ++jj) {
          const T u = sr[jj];
          T s = a.score.post(u);
          site st{b, h, p.heads, qp, std::ptrdiff_t(j0 + jj), i, p.tq, p.tk, causal};
          if constexpr (bias_t::additive) s += T(a.bias.value(st));
          const T dS = a.norm.weight_derivative(s, mr) * fr * dr[jj] + a.norm.mass_derivative(s, mr) * gr;
          if constexpr (bias_t::additive)
            if (DKV && g.params.bias) {
              const std::ptrdiff_t idx = a.bias.param_index(st);
              if constexpr (bias_per_site) {
                g.params.bias[idx] = dS;
              } else if (idx >= 0) {
                tb[idx] += double(dS);
              }
            }
          sr[jj] = a.norm.weight(s, mr) * fr;
          dr[jj] = dS * a.score.post_derivative(u);
        }
      }
      std::fill(sr, sr + c0, T(0));
      std::fill(dr, dr + c0, T(0));
      std::fill(sr + c1, sr + nkp, T(0));
      std::fill(dr + c1, dr + nkp, T(0));
    }
    if constexpr (DKV) {
      // dv_j += Σ_r p_rj dO_r; d map(k_j) += Σ_r du_rj · c·map(q_r)  (Pᵀ, dSᵀ read in place)
      tile_gemm<true>(nk, dvp, S, 1, bk, G, dvp, nr, ksd.dv, dvp);
      tile_gemm<true>(nk, dfp, dP, 1, bk, Q, dfp, nr, ksd.dk, dfp);
    }
    if constexpr (DQ) {
      // d map(q_r) / c += Σ_j du_rj · map(k_j)
      tile_gemm<true>(nr, dfp, dP, bk, 1, ksd.kp, dfp, nk, qs.dq, dfp);
    }
  }

  // The kv_bias key of every row of a query tile (before its blocks add into
  // dq): dq and the task's k*, v* sums; and the sink logit's gradient.
  void tile_kv(const qside<T>& qs, std::size_t pair, std::size_t qt, double* tk) const {
    const std::size_t hk = pair % p.kv_heads, nr = tile_nr(qt);
    for (std::size_t r = 0; r < nr; ++r) {
      const std::size_t h = hk * group + r % group;
      if constexpr (detail::learns_init<norm_t>)
        tk[df + dv + r % group] += double(a.norm.init_gradient(h, qs.m[r], qs.l[r], qs.D[r]));
      if constexpr (has_kv) {
        const T* qr = qs.Q + r * dfp;
        const T* kk = ks.data() + pair * df;
        const T* gr = qs.G + r * dvp;
        T u = 0, dPs = 0;
        for (std::size_t e = 0; e < df; ++e) u += qr[e] * kk[e];
        for (std::size_t e = 0; e < dv; ++e) dPs += gr[e] * T(a.bias.vstar(hk, e, dv));
        const T s = a.score.post(u), mr = qs.m[r];
        const T ps = a.norm.weight(s, mr) * qs.f[r];
        const T dS = a.norm.weight_derivative(s, mr) * qs.f[r] * dPs + a.norm.mass_derivative(s, mr) * qs.gD[r];
        const T du = dS * a.score.post_derivative(u);
        T* dq = qs.dq + r * dfp;
        for (std::size_t e = 0; e < df; ++e) {
          dq[e] += du * kk[e];
          tk[e] += double(du) * double(qr[e]);
        }
        for (std::size_t e = 0; e < dv; ++e) tk[df + e] += double(ps) * double(gr[e]);
      }
    }
  }

  // Back through the feature map and the rotation: query tile qt's dq
  // accumulators (R × dfp) into g.dq; map weight gradients into chunk (pair, qt).
  void finish_q(std::size_t pair, std::size_t qt, const T* dq, scratch<T>& sc) const {
    const std::size_t b = pair / p.kv_heads, hk = pair % p.kv_heads, i0 = qt * ni, nr = tile_nr(qt);
    double* dparams = np ? chunk_params.data() + (pair * qtiles + qt) * np : nullptr;
    T *x = sc.x.data(), *dphi = sc.dphi.data(), *dx = sc.dx.data();
    for (std::size_t r = 0; r < nr; ++r) {
      const std::size_t i = i0 + r / group, h = hk * group + r % group;
      const T* src = q.row(b, h, i);
      const std::ptrdiff_t qp = mask::detail::qpos(i, p.tq, p.tk);
      T* out = g.dq.row(b, h, i);
      if constexpr (!score_t::maps_features) {
        if (!a.pos.rotates()) {  // identity map, no rotation: dq = c · accumulator
          for (std::size_t e = 0; e < d; ++e) out[e] = dq[r * dfp + e] * c;
          continue;
        }
      }
      std::copy(src, src + d, x);
      a.pos.apply(x, d, qp, 1);
      for (std::size_t e = 0; e < df; ++e) dphi[e] = dq[r * dfp + e] * c;
      a.score.map_backward(x, dphi, dx, d, dparams);
      a.pos.apply(dx, d, qp, -1);
      std::copy(dx, dx + d, out);
    }
  }

  // Key tile kt_'s dk (bk × dfp) and dv (bk × dvp) accumulators into g.dk, g.dv;
  // map weight gradients into chunk (pair, kt_).
  void finish_k(std::size_t pair, std::size_t kt_, const T* dk, const T* dvacc, scratch<T>& sc) const {
    const std::size_t b = pair / p.kv_heads, hk = pair % p.kv_heads;
    const std::size_t j0 = kt_ * bk, nk = std::min(bk, p.tk - j0);
    double* dparams = np ? chunk_params.data() + (pairs * qtiles + pair * ktiles + kt_) * np : nullptr;
    T *x = sc.x.data(), *dx = sc.dx.data();
    for (std::size_t jj = 0; jj < nk; ++jj) {
      const std::size_t j = j0 + jj;
      T* out = g.dk.row(b, hk, j);
      bool plain = false;
      if constexpr (!score_t::maps_features) plain = !a.pos.rotates();
      if (plain) {
        std::copy(dk + jj * dfp, dk + jj * dfp + d, out);
      } else {
        const T* src = k.row(b, hk, j);
        std::copy(src, src + d, x);
        a.pos.apply(x, d, std::ptrdiff_t(j), 1);
        a.score.map_backward(x, dk + jj * dfp, dx, d, dparams);
        a.pos.apply(dx, d, std::ptrdiff_t(j), -1);
        std::copy(dx, dx + d, out);
      }
      std::copy(dvacc + jj * dvp, dvacc + jj * dvp + dv, g.dv.row(b, hk, j));
    }
  }
};

template <class A>
void backward_in_double(const backend::cpu& opt, const A& a, tensor4<const float> q, tensor4<const float> k,
                        tensor4<const float> v, tensor4<const float> dout, gradients<float> g);

}  // namespace cpu_bwd

// Backward on the CPU backend; same contract as the reference backward. `saved`
// holds the forward's output and row state from the same backend; without it
// the forward runs here first. Throws (before writing anything) on bad input.
template <attention_type A, class T>
  requires std::is_floating_point_v<T>
void backward(const backend::cpu& opt, const A& a, tensor4<const T> q, tensor4<const T> k, tensor4<const T> v,
              tensor4<const T> dout, gradients<T> g, saved_forward<T> saved = {},
              cpu_bwd::schedule sched = cpu_bwd::schedule::automatic) {
  detail::assert_differentiable<A>();
  const problem p = check_backward(a, q, k, v, dout, g);
  using norm_t = typename A::norm_type;
  if constexpr (std::is_same_v<T, float> && float_too_coarse<norm_t>) {
    return cpu_bwd::backward_in_double(opt, a, q, k, v, dout, g);
  }
  using P = cpu_bwd::plan<A, T>;
  constexpr std::size_t W = P::W;
  const std::size_t rows_total = p.batch * p.heads * p.tq;
  std::vector<T> own_out, own_m, own_l;
  if (saved.empty()) {
    own_out.resize(rows_total * p.vdim);
    own_m.resize(rows_total);
    own_l.resize(rows_total);
    forward(opt, a, q, k, v, tensor4<T>(own_out.data(), p.batch, p.heads, p.tq, p.vdim),
            row_stats<T>{own_m.data(), own_l.data()});
    saved = {tensor4<const T>(own_out.data(), p.batch, p.heads, p.tq, p.vdim), own_m.data(), own_l.data()};
  } else {
    detail::require(saved.out.shape() == dout.shape(), "saved.out",
                    [&] { return "expected the forward's output, shape " + detail::shape_str(dout); });
    detail::require(saved.max && saved.sum, "saved", "expected the forward's row state (max and sum)");
  }

  const std::size_t d = p.dim, dv = p.vdim, df = a.score.feature_dim(d), group = p.heads / p.kv_heads;
  const std::size_t bk = std::max<std::size_t>(2 * W, cpu_bwd::round_up(opt.key_tile, 2 * W));
  const std::size_t ni = std::max<std::size_t>(1, std::min(p.tq, opt.query_tile / group));
  const std::size_t R = cpu_bwd::round_up(ni * group, 4);
  const std::size_t qtiles = (p.tq + ni - 1) / ni, ktiles = (p.tk + bk - 1) / bk, tkp = ktiles * bk;
  const std::size_t pairs = p.batch * p.kv_heads, rows = pairs * qtiles * R;
  const std::size_t dfp = cpu_bwd::round_up(df, W), dvp = cpu_bwd::round_up(dv, W);
  const std::size_t np = a.score.param_count(d);
  P pl{a, p, q, k, v, dout, saved, g, d, dv, df, group, ni, bk, R, qtiles, ktiles, tkp, pairs,
       g.params.bias && !P::bias_per_site ? a.bias.param_count(p) : 0, dfp, dvp, np, T(a.score.scale(d)),
       a.mask.is_causal()};
  if constexpr (P::has_kv) {
    pl.ks.assign(pairs * df, T(0));
    std::vector<T> x(d);
    for (std::size_t pr = 0; pr < pairs; ++pr) {
      for (std::size_t e = 0; e < d; ++e) x[e] = T(a.bias.kstar(pr % p.kv_heads, e, d));
      a.score.map(x.data(), pl.ks.data() + pr * df, d);
    }
  }
  const std::size_t kv_stride = pl.kv_stride();
  constexpr bool kv_sums = P::has_kv || detail::learns_init<norm_t>;  // tile_kv writes task_kv
  pl.task_kv.assign(kv_sums ? pairs * qtiles * kv_stride : 0, 0.0);
  pl.task_bias.assign(pairs * ktiles * pl.nbias, 0.0);
  pl.chunk_params.assign(np ? (pairs * (qtiles + ktiles) + 1) * np : 0, 0.0);
  if constexpr (P::bias_per_site)
    if (g.params.bias) std::fill(g.params.bias, g.params.bias + a.bias.param_count(p), T(0));

  if (sched == cpu_bwd::schedule::automatic)
    sched = pairs >= 2 * std::size_t(std::max(1u, std::thread::hardware_concurrency())) ? cpu_bwd::schedule::fused
                                                                                         : cpu_bwd::schedule::two_pass;
  const bool fused = sched == cpu_bwd::schedule::fused;
  // Fused: query operands made once per pair when they cost more than a copy
  // (rotation, feature map) or fit in a quarter of opt.prep_budget per thread
  // (8 MiB by default), else per block from q and dO (long contexts: memory
  // stays at one pair's row state and dq accumulators per thread).
  const bool keep_q = a.pos.rotates() || A::score_type::maps_features ||
                      qtiles * R * (dfp + dvp) * sizeof(T) <= opt.prep_budget / 4;
  tbb::enumerable_thread_specific<cpu_bwd::scratch<T>> scratch([&] {
    cpu_bwd::scratch<T> s;
    s.s.resize(R * bk);
    s.dp.resize(R * bk);
    s.x.resize(std::max(d, df));
    s.dphi.resize(df);
    s.dx.resize(d);
    if (fused) {
      const std::size_t qrows = (keep_q ? qtiles : 1) * R;
      s.qc.resize(qrows * dfp);
      s.dO.resize(qrows * dvp);
      s.kp.resize(bk * dfp);
      s.kt.resize(df * bk);
      s.vt.resize(dv * bk);
      s.dk.resize(bk * dfp);
      s.dv.resize(bk * dvp);
      for (auto* x : {&s.m, &s.l, &s.f, &s.gD, &s.D}) x->resize(qtiles * R);
      s.dq.resize(qtiles * R * dfp);
    }
    return s;
  });

  if (fused) {
    // One task per (batch, kv head) pair: its key tiles in order, each meeting
    // the pair's query tiles in order; dk, dv of a key tile are finished when
    // its column is done, dq when every key tile is.
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs, 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t pr = rg.begin(); pr != rg.end(); ++pr) {
        auto qs = [&](std::size_t qt) {
          const std::size_t o = keep_q ? qt * R : 0;
          return cpu_bwd::qside<T>{sc.qc.data() + o * dfp, sc.dO.data() + o * dvp, sc.m.data() + qt * R,
                                   sc.l.data() + qt * R,     sc.f.data() + qt * R,    sc.gD.data() + qt * R,
                                   sc.D.data() + qt * R,     sc.dq.data() + qt * R * dfp};
        };
        for (std::size_t qt = 0; qt < qtiles; ++qt) {
          const auto t = qs(qt);
          pl.prep_state(pr, qt, sc.m.data() + qt * R, sc.l.data() + qt * R, sc.f.data() + qt * R,
                        sc.gD.data() + qt * R, sc.D.data() + qt * R);
          pl.prep_operands(pr, qt, const_cast<T*>(t.Q), const_cast<T*>(t.G), sc.x.data());
          std::fill(t.dq, t.dq + R * dfp, T(0));
          if constexpr (kv_sums) pl.tile_kv(t, pr, qt, pl.task_kv.data() + (pr * qtiles + qt) * kv_stride);
        }
        const cpu_bwd::kside<T> kt{sc.kp.data(), sc.kt.data(), sc.vt.data(), bk, sc.dk.data(), sc.dv.data()};
        for (std::size_t kt_ = 0; kt_ < ktiles; ++kt_) {
          pl.prep_keys(pr, kt_, sc.kp.data(), sc.kt.data(), sc.vt.data(), bk, sc.x.data());
          std::fill(sc.dk.begin(), sc.dk.end(), T(0));
          std::fill(sc.dv.begin(), sc.dv.end(), T(0));
          double* tb = pl.nbias ? pl.task_bias.data() + (pr * ktiles + kt_) * pl.nbias : nullptr;
          for (std::size_t qt = 0; qt < qtiles; ++qt) {
            if (pl.skipped(pr, qt, kt_)) continue;
            const auto t = qs(qt);
            if (!keep_q) pl.prep_operands(pr, qt, const_cast<T*>(t.Q), const_cast<T*>(t.G), sc.x.data());
            pl.template block<true, true>(sc, t, kt, pr, qt, kt_, tb);
          }
          pl.finish_k(pr, kt_, sc.dk.data(), sc.dv.data(), sc);
        }
        for (std::size_t qt = 0; qt < qtiles; ++qt) pl.finish_q(pr, qt, sc.dq.data() + qt * R * dfp, sc);
      }
    });
  } else {
    // Two passes over all pairs' tiles (few pairs): operands made once.
    cpu_bwd::avec<T> qc(rows * dfp), dO(rows * dvp), m(rows), l(rows), f(rows), gD(rows), D(rows), dqa(rows * dfp);
    cpu_bwd::avec<T> kp(pairs * tkp * dfp), ktr(pairs * df * tkp), vt(pairs * dv * tkp), dka(pairs * tkp * dfp),
        dva(pairs * tkp * dvp);
    auto qs = [&](std::size_t pr, std::size_t qt) {
      const std::size_t o = (pr * qtiles + qt) * R;
      return cpu_bwd::qside<T>{qc.data() + o * dfp, dO.data() + o * dvp, m.data() + o, l.data() + o,
                               f.data() + o,        gD.data() + o,        D.data() + o, dqa.data() + o * dfp};
    };
    auto ks = [&](std::size_t pr, std::size_t kt_) {
      const std::size_t j0 = kt_ * bk;
      return cpu_bwd::kside<T>{kp.data() + (pr * tkp + j0) * dfp, ktr.data() + pr * df * tkp + j0,
                               vt.data() + pr * dv * tkp + j0,     tkp,
                               dka.data() + (pr * tkp + j0) * dfp, dva.data() + (pr * tkp + j0) * dvp};
    };
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs * (qtiles + ktiles), 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t t = rg.begin(); t != rg.end(); ++t) {
        if (t < pairs * qtiles) {
          const std::size_t pr = t / qtiles, qt = t % qtiles;
          const auto s = qs(pr, qt);
          pl.prep_state(pr, qt, const_cast<T*>(s.m), const_cast<T*>(s.l), const_cast<T*>(s.f),
                        const_cast<T*>(s.gD), const_cast<T*>(s.D));
          pl.prep_operands(pr, qt, const_cast<T*>(s.Q), const_cast<T*>(s.G), sc.x.data());
        } else {
          const std::size_t u = t - pairs * qtiles, pr = u / ktiles, kt_ = u % ktiles;
          const auto s = ks(pr, kt_);
          pl.prep_keys(pr, kt_, const_cast<T*>(s.kp), const_cast<T*>(s.kt), const_cast<T*>(s.vt), tkp,
                       sc.x.data());
        }
      }
    });
    // dk, dv: one task per key tile.
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs * ktiles, 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t t = rg.begin(); t != rg.end(); ++t) {
        const std::size_t pr = t / ktiles, kt_ = t % ktiles;
        double* tb = pl.nbias ? pl.task_bias.data() + t * pl.nbias : nullptr;
        const auto k_ = ks(pr, kt_);
        for (std::size_t qt = 0; qt < qtiles; ++qt) pl.template block<true, false>(sc, qs(pr, qt), k_, pr, qt, kt_, tb);
        pl.finish_k(pr, kt_, k_.dk, k_.dv, sc);
      }
    });
    // dq: one task per query tile.
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs * qtiles, 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t t = rg.begin(); t != rg.end(); ++t) {
        const std::size_t pr = t / qtiles, qt = t % qtiles;
        const auto q_ = qs(pr, qt);
        if constexpr (kv_sums) pl.tile_kv(q_, pr, qt, pl.task_kv.data() + t * kv_stride);
        for (std::size_t kt_ = 0; kt_ < ktiles; ++kt_) pl.template block<false, true>(sc, q_, ks(pr, kt_), pr, qt, kt_, nullptr);
        pl.finish_q(pr, qt, q_.dq, sc);
      }
    });
  }

  // Parameter sums, in task order.
  if constexpr (P::has_kv) {
    std::vector<double> dks(df), dvs(dv);
    std::vector<T> x(d), dphi(df), dx(d);
    double* dparams = np ? pl.chunk_params.data() + pairs * (qtiles + ktiles) * np : nullptr;
    for (std::size_t hk = 0; hk < p.kv_heads; ++hk) {
      std::fill(dks.begin(), dks.end(), 0.0);
      std::fill(dvs.begin(), dvs.end(), 0.0);
      for (std::size_t b = 0; b < p.batch; ++b)
        for (std::size_t qt = 0; qt < qtiles; ++qt) {
          const double* tk = pl.task_kv.data() + ((b * p.kv_heads + hk) * qtiles + qt) * kv_stride;
          for (std::size_t e = 0; e < df; ++e) dks[e] += tk[e];
          for (std::size_t e = 0; e < dv; ++e) dvs[e] += tk[df + e];
        }
      for (std::size_t e = 0; e < d; ++e) x[e] = T(a.bias.kstar(hk, e, d));
      for (std::size_t e = 0; e < df; ++e) dphi[e] = T(dks[e]);
      a.score.map_backward(x.data(), dphi.data(), dx.data(), d, dparams);
      if (g.params.kstar) std::copy(dx.begin(), dx.end(), g.params.kstar + hk * d);
      if (g.params.vstar)
        for (std::size_t e = 0; e < dv; ++e) g.params.vstar[hk * dv + e] = T(dvs[e]);
    }
  }
  if (g.params.sink) {
    for (std::size_t h = 0; h < p.heads; ++h) {
      double acc = 0;
      const std::size_t hk = h / group;
      for (std::size_t b = 0; b < p.batch; ++b)
        for (std::size_t qt = 0; qt < qtiles; ++qt)
          acc += pl.task_kv[((b * p.kv_heads + hk) * qtiles + qt) * kv_stride + df + dv + h % group];
      g.params.sink[h] = T(acc);
    }
  }
  if (pl.nbias) {
    for (std::size_t e = 0; e < pl.nbias; ++e) {
      double acc = 0;
      for (std::size_t t = 0; t < pairs * ktiles; ++t) acc += pl.task_bias[t * pl.nbias + e];
      g.params.bias[e] = T(acc);
    }
  }
  if (g.params.score) {
    const std::size_t nchunks = pairs * (qtiles + ktiles) + 1;
    for (std::size_t e = 0; e < np; ++e) {
      double acc = 0;
      for (std::size_t ch = 0; ch < nchunks; ++ch) acc += pl.chunk_params[ch * np + e];
      g.params.score[e] = T(acc);
    }
  }
}

namespace cpu_bwd {
using cpu_detail::narrow;
using cpu_detail::widen;

template <class A>
void backward_in_double(const backend::cpu& opt, const A& a, tensor4<const float> q, tensor4<const float> k,
                        tensor4<const float> v, tensor4<const float> dout, gradients<float> g) {
  const problem p = problem_of(q, k, v);
  std::vector<double> qd, kd, vd, dod, dq(q.size()), dk(k.size()), dv(v.size());
  gradients<double> gd{{dq.data(), q.batch, q.heads, q.tokens, q.dim},
                       {dk.data(), k.batch, k.heads, k.tokens, k.dim},
                       {dv.data(), v.batch, v.heads, v.tokens, v.dim}};
  std::vector<double> ps[5];
  float* fp[5] = {g.params.sink, g.params.kstar, g.params.vstar, g.params.bias, g.params.score};
  double** dp[5] = {&gd.params.sink, &gd.params.kstar, &gd.params.vstar, &gd.params.bias, &gd.params.score};
  const std::size_t sizes[5] = {p.heads, p.kv_heads * p.dim, p.kv_heads * p.vdim, a.bias.param_count(p),
                                a.score.param_count(p.dim)};
  for (int i = 0; i < 5; ++i)
    if (fp[i]) {
      ps[i].resize(sizes[i]);
      *dp[i] = ps[i].data();
    }
  backward(opt, a, widen(q, qd), widen(k, kd), widen(v, vd), widen(dout, dod), gd);
  narrow(dq, g.dq);
  narrow(dk, g.dk);
  narrow(dv, g.dv);
  for (int i = 0; i < 5; ++i)
    for (std::size_t e = 0; e < ps[i].size(); ++e) fp[i][e] = float(ps[i][e]);
}
}  // namespace cpu_bwd

}  // namespace attnsink
