// attnsink/backend/cpu_backward.hpp — the flash-style CPU backward: xsimd inner
// loops, oneTBB threads, deterministic.
//
// Nothing tokens × tokens is ever allocated: each (query tile × key tile) block
// recomputes its scores from the prepared q, k features and the forward's kept
// row state (m, l), forms P and dS in a tile-sized scratch, and is done.
// Memory is O(tokens · dim): prepared q/k features, transposed K and V, and
// float accumulators for dq, dk, dv.
//
// Determinism without atomics: two passes over the same blocks.
//   dk, dv  — parallel over (batch, kv head, key tile); each task walks its
//             query tiles in ascending order and owns its rows of dk, dv;
//   dq      — parallel over (batch, kv head, query tile); each task walks its
//             key tiles in ascending order and owns its rows of dq.
// With at least two (batch, kv head) pairs per hardware thread, one task per
// pair runs both passes' blocks at once instead (5 tile products rather than 7,
// one exponential per score rather than two); each row still receives the same
// products in the same order, so the two schedules agree bit for bit (tested).
// Per-parameter sums (sink logits, k*, v*, the T5 table, feature-map weights)
// are formed per task (or per fixed chunk of rows) and then added in task
// order. No result depends on which thread ran what, so gradients are
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

#include "../backward.hpp"
#include "cpu.hpp"

namespace attnsink {

// What the forward kept for the backward: its output and the row state (m, l).
// Empty (the default): the backward runs the forward itself first.
template <class T>
struct saved_forward {
  tensor4<const T> out{};
  const T* max = nullptr;
  const T* sum = nullptr;
  bool empty() const { return out.data == nullptr; }
};

namespace cpu_bwd {

template <class T>
using simd = xsimd::batch<T>;
template <class T>
using avec = std::vector<T, xsimd::aligned_allocator<T>>;

// Which loop nest runs the blocks; automatic picks from the shape and the machine only.
enum class schedule { automatic, two_pass, fused };

inline std::size_t round_up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }

using cpu_detail::gemm_acc;  // the forward's P·V product, with an output stride

// Normalizations whose float backward cannot reach 1e-4 of the double oracle,
// so float calls run in double (measured, not bugs):
// - a signed denominator (abs_clamped) can cancel below float's resolution of its terms;
// - softpick's gradient jumps at s = 0: a score within float rounding of zero
//   lands on either side (one such score in a 1000-token causal row moved dq by 2e-4);
// - normalized<F> (and softpick) rows with one visible key have p ≈ 1 and
//   dS = f'·f·(dP − p·dP) cancels to (1 − p), ~2e-4 relative in float.
template <class N>
inline constexpr bool float_too_coarse =
    (N::has_denominator && !N::non_negative) || std::is_same_v<N, norm::softpick> ||
    requires { typename N::function; };  // norm::normalized<F>

// C[r][0..n) = Σ_{c<kd} A[r][c] · Bt[c][0..n) for r < nr (a multiple of 4);
// n a multiple of 2W; Bt and C aligned with row strides multiples of W.
template <class T>
inline void gemm_nt(const T* A, std::size_t lda, const T* Bt, std::size_t ldb, T* C, std::size_t ldc, std::size_t nr,
                    std::size_t n, std::size_t kd) {
  constexpr std::size_t W = simd<T>::size;
  for (std::size_t r = 0; r < nr; r += 4) {
    const T* a0 = A + r * lda;
    for (std::size_t j = 0; j < n; j += 2 * W) {
      simd<T> c00(T(0)), c01(T(0)), c10(T(0)), c11(T(0)), c20(T(0)), c21(T(0)), c30(T(0)), c31(T(0));
      const T* bc = Bt + j;
      for (std::size_t c = 0; c < kd; ++c, bc += ldb) {
        const simd<T> b0 = simd<T>::load_aligned(bc), b1 = simd<T>::load_aligned(bc + W);
        const simd<T> x0(a0[c]), x1(a0[lda + c]), x2(a0[2 * lda + c]), x3(a0[3 * lda + c]);
        c00 = xsimd::fma(x0, b0, c00); c01 = xsimd::fma(x0, b1, c01);
        c10 = xsimd::fma(x1, b0, c10); c11 = xsimd::fma(x1, b1, c11);
        c20 = xsimd::fma(x2, b0, c20); c21 = xsimd::fma(x2, b1, c21);
        c30 = xsimd::fma(x3, b0, c30); c31 = xsimd::fma(x3, b1, c31);
      }
      T* c0 = C + r * ldc + j;
      c00.store_aligned(c0); c01.store_aligned(c0 + W);
      c10.store_aligned(c0 + ldc); c11.store_aligned(c0 + ldc + W);
      c20.store_aligned(c0 + 2 * ldc); c21.store_aligned(c0 + 2 * ldc + W);
      c30.store_aligned(c0 + 3 * ldc); c31.store_aligned(c0 + 3 * ldc + W);
    }
  }
}

// dst (n × m, row stride ldd) = srcᵀ for src (m × n, row stride lds).
template <class T>
inline void transpose(const T* src, std::size_t lds, T* dst, std::size_t ldd, std::size_t m, std::size_t n) {
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) dst[j * ldd + i] = src[i * lds + j];
}

template <class T>
struct scratch {
  avec<T> s, dp, pt, dut;
  std::vector<double> x, dx, dphi;
};

template <class A, class T>
struct plan {
  using bias_t = typename A::bias_type;
  using norm_t = typename A::norm_type;
  using score_t = typename A::score_type;
  static constexpr bool has_kv = bias_t::has_kv;
  static constexpr std::size_t W = simd<T>::size;
  // softmax family with a plain score: the block's elementwise step runs in SIMD.
  static constexpr bool exp_fast =
      std::is_base_of_v<norm::exp_family, norm_t> && !score_t::has_post && !bias_t::additive;
  // a tensor bias has one parameter per site: its gradient is written, not summed
  static constexpr bool bias_per_site = std::is_same_v<bias_t, bias::tensor>;

  const A& a;
  problem p;
  tensor4<const T> q, k, v, dout;
  gradients<T> g;
  std::size_t d, dv, df, group, ni, bk, R, qtiles, ktiles, tkp, pairs, nbias;
  T c;
  bool causal;

  // Rows in tile order: row (pair, qt, rr) at (pair·qtiles + qt)·R + rr; rr <
  // (positions in the tile)·group is position i0 + rr / group of head hk·group + rr % group.
  avec<T> qc;                      // c · map(rope(q)), rows × df
  avec<T> dO;                      // dO, rows × dv
  avec<T> m, l, f, gD, D;          // per row
  avec<T> kp, kt, vt;              // per pair: map(rope(k)) tkp × df, its transpose df × tkp, vᵀ dv × tkp
  avec<T> ks;                      // per pair: map(k*), df
  // accumulators (rows × df, pair·tkp × df, pair·tkp × dv): each block adds only into rows its task owns
  mutable avec<T> dqa, dka, dva;
  std::vector<double> task_bias;   // dk/dv pass: per task, nbias
  std::vector<double> task_kv;     // dq pass: per task, df (d map(k*)) + dv (dv*) + group (sink)

  std::size_t row0(std::size_t pair, std::size_t qt) const { return (pair * qtiles + qt) * R; }

  // One (query tile × key tile) block. DKV: add into dk, dv; DQ: into dq.
  template <bool DKV, bool DQ>
  void block(scratch<T>& sc, std::size_t pair, std::size_t qt, std::size_t kt_, double* tb) const {
    const std::size_t b = pair / p.kv_heads, hk = pair % p.kv_heads;
    const std::size_t i0 = qt * ni, i1 = std::min(i0 + ni, p.tq), nr = (i1 - i0) * group;
    const std::size_t j0 = kt_ * bk, nk = std::min(bk, p.tk - j0), nkp = round_up(nk, 2 * W);
    const tile_visibility vis = classify(a.mask, b, i0, i1, j0, j0 + nk, p.tq, p.tk);
    if (vis == tile_visibility::skip) return;
    const std::size_t base = row0(pair, qt);
    const T* Q = qc.data() + base * df;
    const T* G = dO.data() + base * dv;
    T* S = sc.s.data();
    T* dP = sc.dp.data();
    // forward: u = c·map(q)·map(k); backward: dP = dO · vᵀ
    gemm_nt(Q, df, kt.data() + pair * df * tkp + j0, tkp, S, bk, R, nkp, df);
    gemm_nt(G, dv, vt.data() + pair * dv * tkp + j0, tkp, dP, bk, R, nkp, dv);
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
      const T mr = m[base + r], fr = f[base + r], gr = gD[base + r];
      if constexpr (exp_fast) {
        // p = e^{s - m}·f; dS = e^{s - m}·(f·dP + g·D)  (norm.hpp, weight' = mass' = weight)
        const simd<T> mv(mr), fv(fr), gv(gr);
        for (std::size_t jj = c0 / W * W; jj < c1; jj += W) {
          const simd<T> w = xsimd::exp(simd<T>::load_aligned(sr + jj) - mv);
          const simd<T> dpv = simd<T>::load_aligned(dr + jj);
          (w * fv).store_aligned(sr + jj);
          (w * xsimd::fma(fv, dpv, gv)).store_aligned(dr + jj);
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
      // dv_j += Σ_r p_rj dO_r; d map(k_j) += Σ_r du_rj · c·map(q_r)
      transpose(S, bk, sc.pt.data(), R, R, nkp);
      transpose(dP, bk, sc.dut.data(), R, R, nkp);
      gemm_acc(sc.pt.data(), R, G, dv, R, dva.data() + (pair * tkp + j0) * dv, dv, nkp, dv);
      gemm_acc(sc.dut.data(), R, Q, df, R, dka.data() + (pair * tkp + j0) * df, df, nkp, df);
    }
    if constexpr (DQ) {
      // d map(q_r) / c += Σ_j du_rj · map(k_j)
      gemm_acc(dP, bk, kp.data() + (pair * tkp + j0) * df, df, nk, dqa.data() + base * df, df, R, df);
    }
  }

  // The kv_bias key of every row of a query tile (dq pass): dq and the
  // task's k*, v* sums; and the sink logit's gradient.
  void tile_rows(std::size_t pair, std::size_t qt, double* tk) const {
    const std::size_t b = pair / p.kv_heads, hk = pair % p.kv_heads;
    const std::size_t i0 = qt * ni, i1 = std::min(i0 + ni, p.tq), nr = (i1 - i0) * group;
    const std::size_t base = row0(pair, qt);
    for (std::size_t r = 0; r < nr; ++r) {
      const std::size_t h = hk * group + r % group, row = base + r;
      if constexpr (detail::learns_init<norm_t>)
        tk[df + dv + r % group] += double(a.norm.init_gradient(h, m[row], l[row], D[row]));
      if constexpr (has_kv) {
        const T* qr = qc.data() + row * df;
        const T* kk = ks.data() + pair * df;
        const T* gr = dO.data() + row * dv;
        T u = 0, dPs = 0;
        for (std::size_t e = 0; e < df; ++e) u += qr[e] * kk[e];
        for (std::size_t e = 0; e < dv; ++e) dPs += gr[e] * T(a.bias.vstar(hk, e, dv));
        const T s = a.score.post(u), mr = m[row];
        const T ps = a.norm.weight(s, mr) * f[row];
        const T dS = a.norm.weight_derivative(s, mr) * f[row] * dPs + a.norm.mass_derivative(s, mr) * gD[row];
        const T du = dS * a.score.post_derivative(u);
        T* dq = dqa.data() + row * df;
        for (std::size_t e = 0; e < df; ++e) {
          dq[e] += du * kk[e];
          tk[e] += double(du) * double(qr[e]);
        }
        for (std::size_t e = 0; e < dv; ++e) tk[df + e] += double(ps) * double(gr[e]);
      }
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
  if constexpr (std::is_same_v<T, float> && cpu_bwd::float_too_coarse<norm_t>) {
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
                    "expected the forward's output, shape " + detail::shape_str(dout));
    detail::require(saved.max && saved.sum, "saved", "expected the forward's row state (max and sum)");
  }

  const std::size_t d = p.dim, dv = p.vdim, df = a.score.feature_dim(d), group = p.heads / p.kv_heads;
  const std::size_t bk = std::max<std::size_t>(2 * W, cpu_bwd::round_up(opt.key_tile, 2 * W));
  const std::size_t ni = std::max<std::size_t>(1, std::min(p.tq, opt.query_tile / group));
  const std::size_t R = cpu_bwd::round_up(ni * group, 4);
  const std::size_t qtiles = (p.tq + ni - 1) / ni, ktiles = (p.tk + bk - 1) / bk, tkp = ktiles * bk;
  const std::size_t pairs = p.batch * p.kv_heads, rows = pairs * qtiles * R;
  P pl{a, p, q, k, v, dout, g, d, dv, df, group, ni, bk, R, qtiles, ktiles, tkp, pairs,
       g.params.bias && !P::bias_per_site ? a.bias.param_count(p) : 0, T(a.score.scale(d)), a.mask.is_causal()};
  pl.qc.assign(rows * df, T(0));
  pl.dO.assign(rows * dv, T(0));
  for (auto* x : {&pl.m, &pl.l, &pl.f, &pl.gD, &pl.D}) x->assign(rows, T(0));
  pl.kp.assign(pairs * tkp * df, T(0));
  pl.kt.assign(pairs * df * tkp, T(0));
  pl.vt.assign(pairs * dv * tkp, T(0));
  pl.dqa.assign(rows * df, T(0));
  pl.dka.assign(pairs * tkp * df, T(0));
  pl.dva.assign(pairs * tkp * dv, T(0));
  if constexpr (P::has_kv) {
    pl.ks.assign(pairs * df, T(0));
    std::vector<T> x(d);
    for (std::size_t pr = 0; pr < pairs; ++pr) {
      for (std::size_t e = 0; e < d; ++e) x[e] = T(a.bias.kstar(pr % p.kv_heads, e, d));
      a.score.map(x.data(), pl.ks.data() + pr * df, d);
    }
  }
  const std::size_t kv_stride = df + dv + group;
  pl.task_kv.assign(pairs * qtiles * kv_stride, 0.0);
  pl.task_bias.assign(pairs * ktiles * pl.nbias, 0.0);
  if constexpr (P::bias_per_site)
    if (g.params.bias) std::fill(g.params.bias, g.params.bias + a.bias.param_count(p), T(0));

  // Prepare rows (q features scaled by c, dO, the row state) and keys.
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs * qtiles), [&](const auto& rg) {
    std::vector<T> x(std::max(d, df));
    for (std::size_t t = rg.begin(); t != rg.end(); ++t) {
      const std::size_t pr = t / qtiles, qt = t % qtiles, b = pr / p.kv_heads, hk = pr % p.kv_heads;
      const std::size_t i0 = qt * ni, nr = (std::min(i0 + ni, p.tq) - i0) * group;
      for (std::size_t r = 0; r < nr; ++r) {
        const std::size_t i = i0 + r / group, h = hk * group + r % group, row = t * R + r;
        const T* src = q.row(b, h, i);
        std::copy(src, src + d, x.begin());
        a.pos.apply(x.data(), d, mask::detail::qpos(i, p.tq, p.tk), 1);
        T* qr = pl.qc.data() + row * df;
        a.score.map(x.data(), qr, d);
        for (std::size_t e = 0; e < df; ++e) qr[e] *= pl.c;
        const T* gsrc = dout.row(b, h, i);
        const T* o = saved.out.row(b, h, i);
        double Dr = 0;  // D = dO·O = Σ_j p_j dP_j, the kv value included
        for (std::size_t e = 0; e < dv; ++e) {
          pl.dO[row * dv + e] = gsrc[e];
          Dr += double(gsrc[e]) * double(o[e]);
        }
        const std::size_t srow = (b * p.heads + h) * p.tq + i;
        const T mr = saved.max[srow], lr = saved.sum[srow];
        pl.m[row] = mr;
        pl.l[row] = lr;
        pl.D[row] = T(Dr);
        pl.f[row] = a.norm.finish(mr, lr);
        pl.gD[row] = a.norm.finish_log_derivative(mr, lr) * T(Dr);
      }
    }
  });
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs * p.tk, 64), [&](const auto& rg) {
    std::vector<T> x(d);
    for (std::size_t idx = rg.begin(); idx != rg.end(); ++idx) {
      const std::size_t pr = idx / p.tk, j = idx % p.tk, b = pr / p.kv_heads, hk = pr % p.kv_heads;
      const T* src = k.row(b, hk, j);
      std::copy(src, src + d, x.begin());
      a.pos.apply(x.data(), d, std::ptrdiff_t(j), 1);
      T* kr = pl.kp.data() + (pr * tkp + j) * df;
      a.score.map(x.data(), kr, d);
      for (std::size_t e = 0; e < df; ++e) pl.kt[(pr * df + e) * tkp + j] = kr[e];
      const T* vr = v.row(b, hk, j);
      for (std::size_t e = 0; e < dv; ++e) pl.vt[(pr * dv + e) * tkp + j] = vr[e];
    }
  });

  tbb::enumerable_thread_specific<cpu_bwd::scratch<T>> scratch([&] {
    cpu_bwd::scratch<T> s;
    s.s.assign(R * bk, T(0));
    s.dp.assign(R * bk, T(0));
    s.pt.assign(bk * R, T(0));
    s.dut.assign(bk * R, T(0));
    return s;
  });
  if (sched == cpu_bwd::schedule::automatic)
    sched = pairs >= 2 * std::size_t(std::max(1u, std::thread::hardware_concurrency())) ? cpu_bwd::schedule::fused
                                                                                         : cpu_bwd::schedule::two_pass;
  if (sched == cpu_bwd::schedule::fused) {
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs, 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t pr = rg.begin(); pr != rg.end(); ++pr) {
        for (std::size_t qt = 0; qt < qtiles; ++qt)
          pl.tile_rows(pr, qt, pl.task_kv.data() + (pr * qtiles + qt) * kv_stride);
        for (std::size_t kt_ = 0; kt_ < ktiles; ++kt_) {
          const std::size_t t = pr * ktiles + kt_;
          double* tb = pl.nbias ? pl.task_bias.data() + t * pl.nbias : nullptr;
          for (std::size_t qt = 0; qt < qtiles; ++qt) pl.template block<true, true>(sc, pr, qt, kt_, tb);
        }
      }
    });
  } else {
    // dk, dv: one task per key tile.
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs * ktiles, 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t t = rg.begin(); t != rg.end(); ++t) {
        const std::size_t pr = t / ktiles, kt_ = t % ktiles;
        double* tb = pl.nbias ? pl.task_bias.data() + t * pl.nbias : nullptr;
        for (std::size_t qt = 0; qt < qtiles; ++qt) pl.template block<true, false>(sc, pr, qt, kt_, tb);
      }
    });
    // dq: one task per query tile.
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, pairs * qtiles, 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t t = rg.begin(); t != rg.end(); ++t) {
        const std::size_t pr = t / qtiles, qt = t % qtiles;
        pl.tile_rows(pr, qt, pl.task_kv.data() + t * kv_stride);
        for (std::size_t kt_ = 0; kt_ < ktiles; ++kt_) pl.template block<false, true>(sc, pr, qt, kt_, nullptr);
      }
    });
  }

  // Back through the feature map and the rotation, row by row. Map weight
  // gradients: one sum per fixed chunk of rows, added in chunk order.
  const std::size_t np = a.score.param_count(d);
  const std::size_t qrows = rows_total, krows = pairs * p.tk, chunk = 256;
  const std::size_t qchunks = (qrows + chunk - 1) / chunk, kchunks = (krows + chunk - 1) / chunk;
  std::vector<double> chunk_params(np ? (qchunks + kchunks + 1) * np : 0, 0.0);
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, qchunks + kchunks, 1), [&](const auto& rg) {
    std::vector<T> x(std::max(d, df)), dphi(df), dx(d);
    for (std::size_t ch = rg.begin(); ch != rg.end(); ++ch) {
      double* dparams = np ? chunk_params.data() + ch * np : nullptr;
      const bool is_q = ch < qchunks;
      const std::size_t n0 = (is_q ? ch : ch - qchunks) * chunk, n1 = std::min(n0 + chunk, is_q ? qrows : krows);
      for (std::size_t n = n0; n < n1; ++n) {
        if (is_q) {  // n: a (batch, head, position) row of q
          const std::size_t b = n / (p.heads * p.tq), h = (n / p.tq) % p.heads, i = n % p.tq;
          const std::size_t hk = h / group, pr = b * p.kv_heads + hk, qt = i / ni;
          const std::size_t row = pl.row0(pr, qt) + (i - qt * ni) * group + h % group;
          const T* src = q.row(b, h, i);
          std::copy(src, src + d, x.begin());
          const std::ptrdiff_t qp = mask::detail::qpos(i, p.tq, p.tk);
          a.pos.apply(x.data(), d, qp, 1);
          for (std::size_t e = 0; e < df; ++e) dphi[e] = pl.dqa[row * df + e] * pl.c;
          a.score.map_backward(x.data(), dphi.data(), dx.data(), d, dparams);
          a.pos.apply(dx.data(), d, qp, -1);
          std::copy(dx.begin(), dx.end(), g.dq.row(b, h, i));
        } else {  // n: a (batch, kv head, position) row of k and v
          const std::size_t pr = n / p.tk, j = n % p.tk, b = pr / p.kv_heads, hk = pr % p.kv_heads;
          const T* src = k.row(b, hk, j);
          std::copy(src, src + d, x.begin());
          a.pos.apply(x.data(), d, std::ptrdiff_t(j), 1);
          const T* dphik = pl.dka.data() + (pr * tkp + j) * df;
          a.score.map_backward(x.data(), dphik, dx.data(), d, dparams);
          a.pos.apply(dx.data(), d, std::ptrdiff_t(j), -1);
          std::copy(dx.begin(), dx.end(), g.dk.row(b, hk, j));
          const T* dvr = pl.dva.data() + (pr * tkp + j) * dv;
          std::copy(dvr, dvr + dv, g.dv.row(b, hk, j));
        }
      }
    }
  });

  // Parameter sums, in task order.
  if constexpr (P::has_kv) {
    std::vector<double> dks(df), dvs(dv);
    std::vector<T> x(d), dphi(df), dx(d);
    double* dparams = np ? chunk_params.data() + (qchunks + kchunks) * np : nullptr;
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
    for (std::size_t e = 0; e < np; ++e) {
      double acc = 0;
      for (std::size_t ch = 0; ch < qchunks + kchunks + 1; ++ch) acc += chunk_params[ch * np + e];
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
