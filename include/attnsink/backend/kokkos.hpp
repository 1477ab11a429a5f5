// attnsink/backend/kokkos.hpp — the Kokkos backend: any attention type on any
// Kokkos execution space (Serial, OpenMP, CUDA, ...), from one source.
//
// One team per (batch · kv head, query tile). A team holds `team_rows` query
// rows — query positions times the query heads of one kv-head group, so GQA
// heads share every K/V tile — one row per team thread. Each thread keeps its
// row's transformed query, output accumulator and normalizer state (m, l) in
// registers; the team streams K/V tiles through scratch memory, and each row
// folds a tile into its state with norm.hpp's online normalization. Key tiles
// the mask hides are never loaded; tiles it fully shows skip the per-key test.
// No tokens × tokens buffer exists. Rotated or feature-mapped keys (RoPE,
// kernel scores) are prepared once into an O(tokens · dim) buffer.
//
// On Kokkos::Cuda, float operands with head dim = value dim ∈ {64, 128},
// 16-byte aligned rows, no kv-bias key, no feature map and no explicit
// team_rows / key_tile take a tensor-core kernel instead (cuda_mma_kernel
// below: mma.sync TF32 with the 3xTF32 split, fp32-accurate, as torch's fp32
// SDPA does); everything else takes the generic kernel.
//
// Entry points:
//   forward(backend::kokkos<E>{}, attn, q, k, v, out, stats)         host pointers (mirrored)
//   forward_device(backend::kokkos<E>{}, attn, q, k, v, out, stats)  pointers in E's memory
// For forward_device every pointer — tensors, row stats and the policies'
// parameter arrays (sink logits, k*/v*, tables, document starts) — must be
// accessible from E. Link attnsink::kokkos.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <Kokkos_Core.hpp>

#include "../attention.hpp"
#include "../kokkos_compat.hpp"

namespace attnsink {
namespace backend {
// Tag: the Kokkos backend on ExecutionSpace. Zero options mean "choose".
template <class ExecutionSpace = Kokkos::DefaultExecutionSpace>
struct kokkos {
  using execution_space = ExecutionSpace;
  using memory_space = typename ExecutionSpace::memory_space;
  ExecutionSpace space{};
  std::size_t team_rows = 0;  // query rows (= threads) per team; 0: 128 on devices, 1 on host spaces
  std::size_t key_tile = 0;   // keys per scratch tile; 0: as many as fit in 40 KiB
};
}  // namespace backend

// Customization point for user policies that hold parameter pointers: rebind
// every pointer through `mirror` (a param_ref p becomes mirror(p); a raw
// array x of n elements becomes mirror.copy(x, n)) so that the host entry
// point can copy the arrays to the execution space's memory.
template <class Policy>
struct kokkos_parameters {
  template <class Mirror>
  static void rebind(Policy&, Mirror&) {}
};

namespace kokkos_detail {

// Copies parameter arrays from Src to Dst memory and keeps the copies alive.
template <class Dst, class Src>
struct mirror {
  problem p;
  std::vector<Kokkos::View<float*, Dst>> f32;
  std::vector<Kokkos::View<double*, Dst>> f64;
  std::vector<Kokkos::View<std::int32_t*, Dst>> i32;

  template <class T>
  const T* copy(const T* x, std::size_t n) {
    if (x == nullptr || n == 0) return x;
    Kokkos::View<T*, Dst> buf(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::parameter"), n);
    Kokkos::deep_copy(buf, Kokkos::View<const T*, Src, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(x, n));
    if constexpr (std::is_same_v<T, float>) f32.push_back(buf);
    else if constexpr (std::is_same_v<T, double>) f64.push_back(buf);
    else i32.push_back(buf);
    return buf.data();
  }
  param_ref operator()(const param_ref& r) {
    if (r.f32) return param_ref(copy(r.f32, r.size), r.size);
    if (r.f64) return param_ref(copy(r.f64, r.size), r.size);
    return r;
  }
};

template <class P>
struct is_softcap : std::false_type {};
template <class Inner>
struct is_softcap<score::softcap<Inner>> : std::true_type {};

template <class P, class M>
void rebind(P& x, M& m) {
  if constexpr (std::is_same_v<P, norm::sink_logit>) {
    x.logits = m(x.logits);
  } else if constexpr (std::is_same_v<P, bias::kv_bias>) {
    x.k = m(x.k);
    x.v = m(x.v);
  } else if constexpr (std::is_same_v<P, bias::t5_relative>) {
    x.table = m(x.table);
  } else if constexpr (std::is_same_v<P, bias::tensor>) {
    x.b = m(x.b);
  } else if constexpr (std::is_same_v<P, score::mlp_kernel>) {
    x.w1 = m(x.w1);
    x.w2 = m(x.w2);
  } else if constexpr (is_softcap<P>::value) {
    rebind(x.inner, m);
  } else if constexpr (std::is_same_v<P, mask::document>) {
    x.start = m.copy(x.start, m.p.batch * m.p.tk);
  } else {
    kokkos_parameters<P>::rebind(x, m);
  }
}

template <class A, class M>
A rebind_all(A a, M& m) {
  rebind(a.score, m);
  rebind(a.norm, m);
  rebind(a.bias, m);
  rebind(a.pos, m);
  rebind(a.mask, m);
  return a;
}

inline std::size_t round4(std::size_t n) { return (n + 3) / 4 * 4; }

// Keys per chunk a row folds in at once: independent dot products for the
// FMA pipes, one max/rescale per chunk.
inline constexpr int chunk = 8;

// Geometry of one launch, shared by host and device code.
struct layout {
  std::size_t d, df, dfp, dv, dvp;
  std::size_t group, hs, hchunks, ni, br, bk, qtiles;
  int level;  // team scratch level: 0 (fast, small) unless the tile only fits level 1
};

template <class A, class T, class E, int Cap>
struct forward_kernel {
  using member = typename Kokkos::TeamPolicy<E>::member_type;
  using norm_t = typename A::norm_type;
  using score_t = typename A::score_type;
  using bias_t = typename A::bias_type;

  A a;
  tensor4<const T> q, v;
  const T* keys;                       // key features (k itself, or the prepared buffer)
  std::size_t ksb, ksh, kst;           // their strides
  tensor4<T> out;
  row_stats<T> stats;
  problem p;
  layout g;
  T c;
  bool causal;

  KOKKOS_INLINE_FUNCTION void operator()(const member& t) const {
    const std::size_t lr = t.league_rank();
    const std::size_t qt = lr % g.qtiles, hc = (lr / g.qtiles) % g.hchunks, pr = lr / (g.qtiles * g.hchunks);
    const std::size_t b = pr / p.kv_heads, hk = pr % p.kv_heads;
    const std::size_t h0 = hk * g.group + hc * g.hs, hn = math::min(g.hs, g.group - hc * g.hs);
    const std::size_t i0 = qt * g.ni, i1 = math::min(i0 + g.ni, p.tq);
    const std::size_t nr = (i1 - i0) * hn;
    const std::size_t rows = g.bk + chunk;  // scratch rows: the tile plus a zero chunk for the tail
    T* ks = static_cast<T*>(t.team_scratch(g.level).get_shmem_aligned(rows * g.dfp * sizeof(T), 16));
    T* vs = static_cast<T*>(t.team_scratch(g.level).get_shmem_aligned(rows * g.dvp * sizeof(T), 16));
    const std::size_t r = t.team_rank(), nt = t.team_size();
    const bool active = r < nr;
    const std::size_t i = i0 + (active ? r / hn : 0), h = h0 + (active ? r % hn : 0);
    const std::ptrdiff_t qpos = mask::detail::qpos(i, p.tq, p.tk);

    T qr[Cap], acc[Cap];
    T m = 0, l = 0;
    key_range kr{0, 0};
    ATTNSINK_UNROLL_DIM(Cap)
    for (int e = 0; e < Cap; ++e) qr[e] = acc[e] = T(0);
    if (active) {
      {
        // Positional transform and feature map need a pointer; this copy is
        // the only array that may live in local memory.
        T x[Cap];
        const T* src = q.row(b, h, i);
        for (std::size_t e = 0; e < g.d; ++e) x[e] = src[e];
        a.pos.apply(x, g.d, qpos, 1);
        a.score.map(x, x, g.d);
        ATTNSINK_UNROLL_DIM(Cap)
        for (int e = 0; e < Cap; ++e) qr[e] = std::size_t(e) < g.df ? x[e] * c : T(0);
      }
      const row_init init = a.norm.init(h);
      m = T(init.m);
      l = T(init.l);
      kr = a.mask.range(b, i, p.tq, p.tk);
      if constexpr (bias_t::has_kv) {  // the bias key: no mask, no positions, no additive bias
        T x[Cap];
        for (std::size_t e = 0; e < g.d; ++e) x[e] = T(a.bias.kstar(hk, e, g.d));
        a.score.map(x, x, g.d);
        T s = 0;
        ATTNSINK_UNROLL_DIM(Cap)
        for (int e = 0; e < Cap; ++e)
          if (std::size_t(e) < g.df) s += qr[e] * x[e];
        s = a.score.post(s);
        if constexpr (norm_t::tracks_max) {  // a sink logit or the off-by-one term may already sit in l
          const T mn = math::max(m, s);
          l *= kokkos_compat::exp(m - mn);
          m = mn;
        }
        const T w = a.norm.weight(s, m);
        if constexpr (norm_t::has_denominator) l += a.norm.mass(s, m);
        ATTNSINK_UNROLL_DIM(Cap)
        for (int e = 0; e < Cap; ++e) acc[e] = std::size_t(e) < g.dv ? w * T(a.bias.vstar(hk, e, g.dv)) : T(0);
      }
    }

    const key_range first = a.mask.range(b, i0, p.tq, p.tk), last = a.mask.range(b, i1 - 1, p.tq, p.tk);
    if (last.hi > first.lo) {
      for (std::size_t j0 = first.lo / g.bk * g.bk; j0 < last.hi; j0 += g.bk) {
        const std::size_t nk = math::min(g.bk, p.tk - j0);
        const tile_visibility vis = classify(a.mask, b, i0, i1, j0, j0 + nk, p.tq, p.tk);
        if (vis == tile_visibility::skip) continue;  // the same for every thread: barriers stay matched
        t.team_barrier();
        load_tile(ks, keys + b * ksb + hk * ksh + j0 * kst, kst, nk, rows, g.df, g.dfp, r, nt);
        load_tile(vs, v.row(b, hk, j0), v.stride_t, nk, rows, g.dv, g.dvp, r, nt);
        t.team_barrier();
        if (!active) continue;
        std::size_t jlo = 0, jhi = nk;
        if (vis == tile_visibility::partial) {
          jlo = kr.lo > j0 ? math::min(kr.lo - j0, nk) : 0;
          jhi = kr.hi > j0 ? math::min(kr.hi - j0, nk) : 0;
        }
        for (std::size_t jj = jlo; jj < jhi; jj += chunk) fold(qr, acc, m, l, ks, vs, b, h, i, qpos, j0, jj, jhi);
      }
    }
    if (!active) return;
    const T f = a.norm.finish(m, l);
    T* o = out.row(b, h, i);
    ATTNSINK_UNROLL_DIM(Cap)
    for (int e = 0; e < Cap; ++e)
      if (std::size_t(e) < g.dv) o[e] = acc[e] * f;
    const std::size_t row = (b * p.heads + h) * p.tq + i;
    if (stats.max) stats.max[row] = m;
    if (stats.sum) stats.sum[row] = l;
  }

  // dst[rows × wp] = src rows [0, nk) × [0, w), zero elsewhere; thread r of nt
  // takes every nt-th element (consecutive threads, consecutive addresses).
  KOKKOS_INLINE_FUNCTION static void load_tile(T* dst, const T* src, std::size_t stride, std::size_t nk,
                                               std::size_t rows, std::size_t w, std::size_t wp, std::size_t r,
                                               std::size_t nt) {
    // Row and column advance incrementally: a 64-bit division per element
    // would cost more than the copy on a GPU.
    std::size_t jj = r / wp, e = r % wp;
    const std::size_t dj = nt / wp, de = nt % wp;
    for (std::size_t idx = r; idx < rows * wp; idx += nt) {
      dst[idx] = (jj < nk && e < w) ? src[jj * stride + e] : T(0);
      jj += dj;
      e += de;
      if (e >= wp) e -= wp, ++jj;
    }
  }

  // Folds keys [jj, min(jj + chunk, jhi)) of the tile in scratch into one row.
  KOKKOS_INLINE_FUNCTION void fold(const T (&qr)[Cap], T (&acc)[Cap], T& m, T& l, const T* ks, const T* vs,
                                   std::size_t b, std::size_t h, std::size_t i, std::ptrdiff_t qpos, std::size_t j0,
                                   std::size_t jj, std::size_t jhi) const {
    T s[chunk];
    ATTNSINK_UNROLL
    for (int kk = 0; kk < chunk; ++kk) s[kk] = T(0);
    ATTNSINK_UNROLL_DIM(Cap)
    for (int e = 0; e < Cap; e += 4) {
      if (std::size_t(e) >= g.dfp) break;
      ATTNSINK_UNROLL
      for (int kk = 0; kk < chunk; ++kk) {
        T k0, k1, k2, k3;
        kokkos_compat::load4(ks + (jj + kk) * g.dfp + e, k0, k1, k2, k3);
        s[kk] += qr[e] * k0 + qr[e + 1] * k1 + qr[e + 2] * k2 + qr[e + 3] * k3;
      }
    }
    T mx = math::neg_inf<T>();
    ATTNSINK_UNROLL
    for (int kk = 0; kk < chunk; ++kk) {
      if constexpr (score_t::has_post) s[kk] = a.score.post(s[kk]);
      if (jj + kk >= jhi) continue;  // past the row's keys (or the sequence): no bias lookup
      if constexpr (bias_t::additive)
        s[kk] += T(a.bias.value(
            site{b, h, p.heads, qpos, std::ptrdiff_t(j0 + jj + kk), i, p.tq, p.tk, causal}));
      mx = math::max(mx, s[kk]);
    }
    if constexpr (norm_t::tracks_max) {
      if (mx > m) {
        const T f = kokkos_compat::exp(m - mx);
        l *= f;
        ATTNSINK_UNROLL_DIM(Cap)
        for (int e = 0; e < Cap; ++e) acc[e] *= f;
        m = mx;
      }
    }
    T w[chunk];
    ATTNSINK_UNROLL
    for (int kk = 0; kk < chunk; ++kk) {
      const bool seen = jj + kk < jhi;
      w[kk] = seen ? a.norm.weight(s[kk], m) : T(0);
      if constexpr (norm_t::has_denominator) l += seen ? a.norm.mass(s[kk], m) : T(0);
    }
    ATTNSINK_UNROLL_DIM(Cap)
    for (int e = 0; e < Cap; e += 4) {
      if (std::size_t(e) >= g.dvp) break;
      ATTNSINK_UNROLL
      for (int kk = 0; kk < chunk; ++kk) {
        T v0, v1, v2, v3;
        kokkos_compat::load4(vs + (jj + kk) * g.dvp + e, v0, v1, v2, v3);
        acc[e] += w[kk] * v0;
        acc[e + 1] += w[kk] * v1;
        acc[e + 2] += w[kk] * v2;
        acc[e + 3] += w[kk] * v3;
      }
    }
  }
};

// Writes rotated / feature-mapped keys, zero-padded to dfp, once per call.
template <class A, class T, class E, int Cap>
void prepare_keys(const E& space, const A& a, tensor4<const T> k, const layout& g, T* dst) {
  const std::size_t n = k.batch * k.heads * k.tokens;
  Kokkos::parallel_for(
      "attnsink::kokkos::prepare_keys", Kokkos::RangePolicy<E>(space, 0, n), KOKKOS_LAMBDA(const std::size_t idx) {
        const std::size_t j = idx % k.tokens, bh = idx / k.tokens;
        const T* src = k.row(bh / k.heads, bh % k.heads, j);
        T x[Cap];
        for (std::size_t e = 0; e < g.d; ++e) x[e] = src[e];
        a.pos.apply(x, g.d, std::ptrdiff_t(j), 1);
        a.score.map(x, x, g.d);
        T* o = dst + idx * g.dfp;
        for (std::size_t e = 0; e < g.dfp; ++e) o[e] = e < g.df ? x[e] : T(0);
      });
}

template <int Cap, class A, class T, class E>
void launch(const backend::kokkos<E>& be, const A& a, const problem& p, layout g, tensor4<const T> q,
            tensor4<const T> k, tensor4<const T> v, tensor4<T> out, row_stats<T> stats) {
  using K = forward_kernel<A, T, E, Cap>;
  const bool prep = a.pos.rotates() || A::score_type::maps_features;
  Kokkos::View<T*, typename E::memory_space> kbuf;
  K kern{a, q, v, k.data, k.stride_b, k.stride_h, k.stride_t, out, stats, p, g, T(a.score.scale(g.d)),
         a.mask.is_causal()};
  if (prep) {
    kbuf = Kokkos::View<T*, typename E::memory_space>(
        Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::prepared_keys"), k.batch * k.heads * k.tokens * g.dfp);
    prepare_keys<A, T, E, Cap>(be.space, a, k, g, kbuf.data());
    kern.keys = kbuf.data();
    kern.ksb = k.heads * k.tokens * g.dfp;
    kern.ksh = k.tokens * g.dfp;
    kern.kst = g.dfp;
  }
  const std::size_t bytes = (g.bk + chunk) * (g.dfp + g.dvp) * sizeof(T) + 64;
  const std::size_t league = p.batch * p.kv_heads * g.hchunks * g.qtiles;
  Kokkos::TeamPolicy<E> policy(be.space, int(league), int(g.br));
  policy.set_scratch_size(g.level, Kokkos::PerTeam(bytes));
  Kokkos::parallel_for("attnsink::kokkos::forward", policy, kern);
  be.space.fence();  // kbuf and the caller's mirrors must outlive the kernel
}

#if defined(KOKKOS_ENABLE_CUDA)
#ifndef ATTNSINK_KOKKOS_CUDA_MMA_TEAMS_64  // launch bound (teams per SM) at head dim 64
#define ATTNSINK_KOKKOS_CUDA_MMA_TEAMS_64 2
#endif
#ifndef ATTNSINK_KOKKOS_CUDA_MMA_TEAMS_128  // and at 128
#define ATTNSINK_KOKKOS_CUDA_MMA_TEAMS_128 2
#endif
#ifndef ATTNSINK_KOKKOS_CUDA_MMA_BK_64  // keys per tile at head dim 64
#define ATTNSINK_KOKKOS_CUDA_MMA_BK_64 64
#endif
#ifndef ATTNSINK_KOKKOS_CUDA_MMA_BK_128  // and at 128
#define ATTNSINK_KOKKOS_CUDA_MMA_BK_128 32
#endif
// The CUDA path for float, head dim D ∈ {64, 128} (= value dim), no kv-bias
// key and no feature map (RoPE is fine: keys are prepared as in the generic
// kernel), at fp32 accuracy on the tensor cores: both products (S = Q·Kᵀ
// and O += P·V) run on mma.sync m16n8k8 TF32 instructions with the 3xTF32
// split (CUTLASS's "fast fp32", which torch's fp32 SDPA also runs). Each fp32
// operand x is split into big = tf32(x) and small = x − big; a·b is accumulated in fp32 as
// small_a·big_b + big_a·small_b + big_a·big_b, dropping the small·small term
// and the small parts' bits past TF32 (≲ 2⁻²¹ |a||b| together) beside fp32's
// own rounding. The tests hold it to the same tolerances as every backend.
//
// A team is 4 warps; a warp owns 16 query rows for the whole key range (no
// cross-warp reduction). Per K/V tile of BK keys in scratch (padded rows:
// the fragment loads are bank-conflict free) a warp computes its
// 16 × BK scores as MMA accumulators, applies the policy per score (post,
// bias, mask, normalization) where they lie, and feeds them back as the A
// operand of P·V: the C fragment of S holds keys (2t, 2t + 1) of a row where
// the A fragment wants (t, t + 4), so keys are renumbered inside each block
// of 8 and V's B fragment reads the matching rows — no shuffle (the head dim
// is renumbered the same way for Q·Kᵀ, so K's fragment is 8 contiguous bytes).
// A row's max is reduced over the 4 lanes of a quad (xor shuffles: every lane
// sees the same bits); each lane keeps a partial denominator, summed over the
// quad at the end. K/V tiles are copied by cp.async one step ahead (see the
// tile loop). On the H200: 1.09–1.68× torch's fp32 SDPA
// (benchmarks/kokkos/RESULTS.md).
// TF32 MMAs and cp.async need sm_80 or newer: older targets compile an empty
// kernel that run_cuda never launches (it checks the device at run time).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define ATTNSINK_KOKKOS_MMA_DEVICE 1
#endif

template <class A, int D>
struct cuda_mma_kernel {
  static constexpr int NT = 128;           // threads per team: 4 warps
  static constexpr int R = 64;             // query rows per team: 16 per warp
  static constexpr int BK = D == 64 ? ATTNSINK_KOKKOS_CUDA_MMA_BK_64 : ATTNSINK_KOKKOS_CUDA_MMA_BK_128;  // keys per tile
  static constexpr int NB = BK / 8;        // 8-key blocks per tile
  static constexpr int KS = D / 8;         // 8-wide steps over the head dim
  // Scratch rows are padded so that a warp's fragment loads hit distinct
  // banks: K rows (pitch SK ≡ 8 mod 32) are read 8 bytes at a time, V rows
  // (pitch SV ≡ 4 mod 32) 4 bytes at a time. Rows stay whole, so the copy
  // engine (cp.async) fills them straight from global memory.
  static constexpr int SK = D + 8, SV = D + 4;
  static constexpr std::size_t scratch_bytes = std::size_t(BK) * (SK + SV) * sizeof(float) + 64;
  static constexpr int teams_per_sm = D == 64 ? ATTNSINK_KOKKOS_CUDA_MMA_TEAMS_64 : ATTNSINK_KOKKOS_CUDA_MMA_TEAMS_128;
  using policy_type = Kokkos::TeamPolicy<Kokkos::Cuda, Kokkos::LaunchBounds<NT, teams_per_sm>>;
  using member = typename policy_type::member_type;
  using norm_t = typename A::norm_type;
  using score_t = typename A::score_type;
  using bias_t = typename A::bias_type;
  static constexpr bool exp_norm = std::is_base_of_v<norm::exp_family, norm_t>;

  A a;
  tensor4<const float> q, v;
  const float* keys;
  std::size_t ksb, ksh, kst;
  tensor4<float> out;
  row_stats<float> stats;
  problem p;
  layout g;
  float c;
  bool causal;

#ifdef ATTNSINK_KOKKOS_MMA_DEVICE
  // big: x rounded to TF32 (half an ulp added, then truncated: two integer
  // ops, where cvt.rna.tf32 costs about five on sm_90); small: the exact rest
  // x − big, whose low 13 bits the MMA ignores (truncation), as in CUTLASS's
  // fast-fp32 converter. Finite inputs only (NaN/Inf are not preserved).
  __device__ static void split(float x, std::uint32_t& big, std::uint32_t& small) {
    big = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
    small = __float_as_uint(x - __uint_as_float(big));
  }
  // 16 bytes global → scratch without registers; zeros when !valid.
  __device__ static void copy16(float* dst, const float* src, bool valid) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
  }
  __device__ static void commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
  __device__ static void wait_all_but_last() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
  // Rows [0, BK) of a K (or V) tile at key j0 into dst (pitch P); rows past nk are zeros.
  // A thread copies one 16-byte column of every RS-th row; the loop stays
  // rolled, so no per-row addresses are kept live across the tile.
  template <int P>
  __device__ static void load_tile(float* dst, const float* src, std::size_t stride, std::size_t j0, int nk, int tr) {
    constexpr int CW = D / 4, RS = NT / CW;
    static_assert(NT % CW == 0, "attnsink: a team pass must cover whole rows");
    const int col = 4 * (tr % CW);
    int row = tr / CW;
    float* d = dst + row * P + col;
    const float* sp = src + (j0 + std::size_t(row)) * stride + col;
#pragma unroll 1
    for (; row < BK; row += RS, d += RS * P, sp += RS * stride) copy16(d, row < nk ? sp : src, row < nk);
  }
  // d += a·b, one m16n8k8 TF32 MMA.
  __device__ static void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // d += a·b at fp32 accuracy (3xTF32); a given as big/small, b as two fp32 values.
  __device__ static void mma3(float (&d)[4], const std::uint32_t (&ab)[4], const std::uint32_t (&as)[4], float b0,
                              float b1) {
    std::uint32_t bb0, bs0, bb1, bs1;
    split(b0, bb0, bs0);
    split(b1, bb1, bs1);
    mma(d, as, bb0, bb1);
    mma(d, ab, bs0, bs1);
    mma(d, ab, bb0, bb1);
  }
#endif

  KOKKOS_INLINE_FUNCTION void operator()(const member& t) const {
#ifdef ATTNSINK_KOKKOS_MMA_DEVICE
    const int tr = t.team_rank();
    const int warp = tr / 32, lane = tr % 32, gq = lane / 4, tq = lane % 4;
    const std::size_t lr = t.league_rank();
    // Query tiles run last-to-first: under a causal mask the longest rows start first.
    const std::size_t per = p.batch * p.kv_heads * g.hchunks;
    const std::size_t qt = g.qtiles - 1 - lr / per, rest = lr % per;
    const std::size_t hc = rest % g.hchunks, pr = rest / g.hchunks;
    const std::size_t b = pr / p.kv_heads, hk = pr % p.kv_heads;
    const std::size_t h0 = hk * g.group + hc * g.hs, hn = math::min(g.hs, g.group - hc * g.hs);
    const std::size_t i0 = qt * g.ni, i1 = math::min(i0 + g.ni, p.tq);
    const std::size_t nr = (i1 - i0) * hn;
    float* ks = static_cast<float*>(t.team_scratch(0).get_shmem_aligned(BK * SK * sizeof(float), 16));
    float* vs = static_cast<float*>(t.team_scratch(0).get_shmem_aligned(BK * SV * sizeof(float), 16));

    // This lane's two rows: u = 0 is row gq of the warp's 16, u = 1 row gq + 8.
    // qa: Q's A fragments (scaled). The head dim is renumbered inside each
    // group of 8 (MMA slot tq ↔ column 2tq, slot tq+4 ↔ column 2tq+1), so
    // that K's B fragment is two adjacent floats:
    // qa[s] = {Q[gq][8s+2tq], Q[gq+8][8s+2tq], Q[gq][8s+2tq+1], Q[gq+8][8s+2tq+1]}.
    float qa[KS][4], o[KS][4], m[2], l[2], slope[2];
    int ri[2], rh[2], qp[2], klo[2], khi[2];
    bool act[2];
    ATTNSINK_UNROLL
    for (int u = 0; u < 2; ++u) {
      const std::size_t rho = std::size_t(warp * 16 + gq + 8 * u);
      act[u] = rho < nr;
      ri[u] = int(i0 + (act[u] ? rho / hn : 0));
      rh[u] = int(h0 + (act[u] ? rho % hn : 0));
      qp[u] = int(mask::detail::qpos(std::size_t(ri[u]), p.tq, p.tk));
      const float* src = q.row(b, std::size_t(rh[u]), std::size_t(ri[u]));
      if (a.pos.rotates()) {
        float x[D];  // apply() takes a pointer: the only array that may live in local memory
        for (int e = 0; e < D; ++e) x[e] = src[e];
        a.pos.apply(x, std::size_t(D), std::ptrdiff_t(qp[u]), 1);
        ATTNSINK_UNROLL
        for (int s = 0; s < KS; ++s) {
          qa[s][u] = x[8 * s + 2 * tq] * c;
          qa[s][u + 2] = x[8 * s + 2 * tq + 1] * c;
        }
      } else {
        ATTNSINK_UNROLL
        for (int s = 0; s < KS; ++s) {
          const float2 x = *reinterpret_cast<const float2*>(src + 8 * s + 2 * tq);
          qa[s][u] = x.x * c;
          qa[s][u + 2] = x.y * c;
        }
      }
      const row_init init = a.norm.init(std::size_t(rh[u]));
      m[u] = float(init.m);
      l[u] = tq == 0 ? float(init.l) : 0.0f;  // the quad's partial sums add up to l
      const key_range kr = a.mask.range(b, std::size_t(ri[u]), p.tq, p.tk);
      klo[u] = act[u] ? int(kr.lo) : 0;
      khi[u] = act[u] ? int(kr.hi) : 0;
      if constexpr (std::is_same_v<bias_t, bias::alibi>) slope[u] = float(a.bias.slope(std::size_t(rh[u]), p.heads));
      else slope[u] = 0.0f;
    }
    ATTNSINK_UNROLL
    for (int n = 0; n < KS; ++n)
      ATTNSINK_UNROLL
      for (int z = 0; z < 4; ++z) o[n][z] = 0.0f;

    const key_range first = a.mask.range(b, i0, p.tq, p.tk), last = a.mask.range(b, i1 - 1, p.tq, p.tk);
    const float* kbase = keys + b * ksb + hk * ksh;
    const float* vbase = v.row(b, hk, 0);
    // The next tile at or after j that the mask does not hide (team-uniform), or last.hi.
    auto next = [&](std::size_t j) {
      for (; j < last.hi; j += BK)
        if (classify(a.mask, b, i0, i1, j, math::min(j + BK, p.tk), p.tq, p.tk) != tile_visibility::skip) return j;
      return std::size_t(last.hi);
    };
    // A pipeline over the copy engine: K of the next tile is copied while this
    // tile's scores become weights and meet V; V of the next tile while its
    // scores are computed. Copy groups, in order: K0, V0, K1, V1, ...; each
    // wait leaves only the most recent group in flight. Rows past the
    // sequence are zeros (their weights are 0, and 0 · 0 stays finite).
    std::size_t j0 = next(first.lo / BK * BK);
    if (j0 < last.hi) {
      const int nk = int(math::min(std::size_t(BK), p.tk - j0));
      load_tile<SK>(ks, kbase, kst, j0, nk, tr);
      commit();
      load_tile<SV>(vs, vbase, v.stride_t, j0, nk, tr);
      commit();
    }
    while (j0 < last.hi) {
      const int nk = int(math::min(std::size_t(BK), p.tk - j0));
      const tile_visibility vis = classify(a.mask, b, i0, i1, j0, j0 + nk, p.tq, p.tk);
      const std::size_t jn = next(j0 + BK);
      wait_all_but_last();  // K of this tile is in
      t.team_barrier();

      // S = Q·Kᵀ: s[n] holds S(gq, 8n+2tq+z) in s[n][z] and S(gq+8, 8n+2tq+z) in s[n][2+z].
      // The cross terms go to their own accumulators (sx): twice the
      // independent MMA chains, and the small terms summed before the big.
      float s[NB][4], sx[NB][4];
      ATTNSINK_UNROLL
      for (int n = 0; n < NB; ++n)
        ATTNSINK_UNROLL
        for (int z = 0; z < 4; ++z) s[n][z] = sx[n][z] = 0.0f;
      ATTNSINK_UNROLL
      for (int k8 = 0; k8 < KS; ++k8) {
        // Q's split is the same for every tile; kept inside the loop on
        // purpose (an opaque register move): hoisted, its 2·D/2 registers spill.
        float q4[4] = {qa[k8][0], qa[k8][1], qa[k8][2], qa[k8][3]};
        asm volatile("" : "+f"(q4[0]), "+f"(q4[1]), "+f"(q4[2]), "+f"(q4[3]));
        std::uint32_t ab[4], as[4];
        ATTNSINK_UNROLL
        for (int z = 0; z < 4; ++z) split(q4[z], ab[z], as[z]);
        ATTNSINK_UNROLL
        for (int n = 0; n < NB; ++n) {
          const float2 kb = *reinterpret_cast<const float2*>(ks + (8 * n + gq) * SK + 8 * k8 + 2 * tq);  // slots tq, tq+4
          std::uint32_t bb0, bs0, bb1, bs1;
          split(kb.x, bb0, bs0);
          split(kb.y, bb1, bs1);
          mma(sx[n], as, bb0, bb1);
          mma(sx[n], ab, bs0, bs1);
          mma(s[n], ab, bb0, bb1);
        }
      }
      ATTNSINK_UNROLL
      for (int n = 0; n < NB; ++n)
        ATTNSINK_UNROLL
        for (int z = 0; z < 4; ++z) s[n][z] += sx[n][z];
      t.team_barrier();  // every warp is done with this K tile
      if (jn < last.hi) load_tile<SK>(ks, kbase, kst, jn, int(math::min(std::size_t(BK), p.tk - jn)), tr);
      commit();

      // Scores to weights, per row, where the accumulators lie.
      const bool part = vis == tile_visibility::partial;
      ATTNSINK_UNROLL
      for (int u = 0; u < 2; ++u) {
        const int rlo = part ? klo[u] - int(j0) : (act[u] ? 0 : BK), rhi = part ? khi[u] - int(j0) : (act[u] ? nk : 0);
        float mx = math::neg_inf<float>();
        ATTNSINK_UNROLL
        for (int n = 0; n < NB; ++n)
          ATTNSINK_UNROLL
          for (int z = 0; z < 2; ++z) {
            const int j = 8 * n + 2 * tq + z;
            const bool seen = j >= rlo && j < rhi;
            float x = s[n][2 * u + z];
            if constexpr (score_t::has_post) x = a.score.post(x);
            if constexpr (std::is_same_v<bias_t, bias::alibi>) {
              x -= slope[u] * float(qp[u] - int(j0) - j);
            } else if constexpr (bias_t::additive) {
              if (seen)  // no lookup past the row's keys
                x += float(a.bias.value(site{b, std::size_t(rh[u]), p.heads, std::ptrdiff_t(qp[u]),
                                             std::ptrdiff_t(j0 + j), std::size_t(ri[u]), p.tq, p.tk, causal}));
            }
            s[n][2 * u + z] = seen ? x : math::neg_inf<float>();
            mx = math::max(mx, s[n][2 * u + z]);
          }
        if constexpr (norm_t::tracks_max) {
          mx = math::max(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = math::max(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          if (mx > m[u]) {
            const float f = exp_norm ? __expf(m[u] - mx) : kokkos_compat::exp(m[u] - mx);
            l[u] *= f;
            ATTNSINK_UNROLL
            for (int n = 0; n < KS; ++n) {
              o[n][2 * u] *= f;
              o[n][2 * u + 1] *= f;
            }
            m[u] = mx;
          }
        }
        ATTNSINK_UNROLL
        for (int n = 0; n < NB; ++n)
          ATTNSINK_UNROLL
          for (int z = 0; z < 2; ++z) {
            const float x = s[n][2 * u + z];
            const bool seen = x != math::neg_inf<float>();
            float w;
            if constexpr (exp_norm) {
              w = seen ? __expf(x - m[u]) : 0.0f;
              l[u] += w;
            } else if constexpr (std::is_same_v<norm_t, norm::sigmoid>) {
              w = seen ? __fdividef(1.0f, 1.0f + __expf(-(x + float(a.norm.bias)))) : 0.0f;
            } else {
              w = seen ? a.norm.weight(x, m[u]) : 0.0f;
              if constexpr (norm_t::has_denominator) l[u] += seen ? a.norm.mass(x, m[u]) : 0.0f;
            }
            s[n][2 * u + z] = w;
          }
      }

      // O += P·V: block n's A fragment is {P(gq, 2tq), P(gq+8, 2tq), P(gq, 2tq+1), P(gq+8, 2tq+1)}
      // (keys renumbered 2tq → tq, 2tq+1 → tq+4), V's B fragment rows 2tq and 2tq+1 to match.
      wait_all_but_last();  // V of this tile is in
      t.team_barrier();
      ATTNSINK_UNROLL
      for (int n = 0; n < NB; ++n) {
        std::uint32_t pb[4], ps[4];
        split(s[n][0], pb[0], ps[0]);
        split(s[n][2], pb[1], ps[1]);
        split(s[n][1], pb[2], ps[2]);
        split(s[n][3], pb[3], ps[3]);
        const float* vp = vs + (8 * n + 2 * tq) * SV + gq;
        ATTNSINK_UNROLL
        for (int e = 0; e < KS; ++e) mma3(o[e], pb, ps, vp[8 * e], vp[SV + 8 * e]);
      }
      t.team_barrier();  // every warp is done with this V tile
      if (jn < last.hi) load_tile<SV>(vs, vbase, v.stride_t, jn, int(math::min(std::size_t(BK), p.tk - jn)), tr);
      commit();
      j0 = jn;
    }

    ATTNSINK_UNROLL
    for (int u = 0; u < 2; ++u) {
      float lt = l[u] + __shfl_xor_sync(0xffffffffu, l[u], 1);
      lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      if (!act[u]) continue;
      const float f = a.norm.finish(m[u], lt);
      float* dst = out.row(b, std::size_t(rh[u]), std::size_t(ri[u])) + 2 * tq;
      ATTNSINK_UNROLL
      for (int e = 0; e < KS; ++e)
        *reinterpret_cast<float2*>(dst + 8 * e) = float2{o[e][2 * u] * f, o[e][2 * u + 1] * f};
      if (tq == 0) {
        const std::size_t row = (b * p.heads + std::size_t(rh[u])) * p.tq + std::size_t(ri[u]);
        if (stats.max) stats.max[row] = m[u];
        if (stats.sum) stats.sum[row] = lt;
      }
    }
#else
    (void)t;
    Kokkos::abort("attnsink: the CUDA forward kernel ran on the host or on a GPU older than sm_80");
#endif
  }
};

template <class T>
bool aligned16(tensor4<const T> x) {
  return reinterpret_cast<std::uintptr_t>(x.data) % 16 == 0 && x.stride_t % 4 == 0 && x.stride_h % 4 == 0 &&
         x.stride_b % 4 == 0;
}

// Runs the CUDA path when it applies (see cuda_mma_kernel); false: use the generic kernel.
template <class A, class T, class E>
bool run_cuda(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const T> q, tensor4<const T> k,
              tensor4<const T> v, tensor4<T> out, row_stats<T> stats) {
  if constexpr (std::is_same_v<E, Kokkos::Cuda> && std::is_same_v<T, float> && !A::bias_type::has_kv &&
                !A::score_type::maps_features) {
    // Explicit team_rows / key_tile ask for the generic kernel's geometry.
    if (be.team_rows || be.key_tile || p.vdim != p.dim || (p.dim != 64 && p.dim != 128)) return false;
    if (!aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(tensor4<const T>(out))) return false;
    int major = 0;  // TF32 tensor cores and cp.async: compute capability 8.0 or newer
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, be.space.cuda_device()) != cudaSuccess ||
        major < 8)
      return false;
    auto go = [&]<int D>() {
      using K = cuda_mma_kernel<A, D>;
      layout g{};
      g.d = g.df = g.dfp = g.dv = g.dvp = D;
      g.group = p.heads / p.kv_heads;
      g.br = K::R;
      g.hs = std::min<std::size_t>(g.group, K::R);
      g.hchunks = (g.group + g.hs - 1) / g.hs;
      g.ni = K::R / g.hs;
      g.qtiles = (p.tq + g.ni - 1) / g.ni;
      g.bk = K::BK;
      Kokkos::View<float*, typename E::memory_space> kbuf;
      K kern{a, q, v, k.data, k.stride_b, k.stride_h, k.stride_t, out, stats, p, g, float(a.score.scale(g.d)),
             a.mask.is_causal()};
      if (a.pos.rotates()) {
        kbuf = Kokkos::View<float*, typename E::memory_space>(
            Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::prepared_keys"), k.batch * k.heads * k.tokens * D);
        prepare_keys<A, float, E, D>(be.space, a, k, g, kbuf.data());
        kern.keys = kbuf.data();
        kern.ksb = k.heads * k.tokens * D;
        kern.ksh = k.tokens * D;
        kern.kst = D;
      }
      const std::size_t league = p.batch * p.kv_heads * g.hchunks * g.qtiles;
      typename K::policy_type policy(be.space, int(league), K::NT);
      policy.set_scratch_size(0, Kokkos::PerTeam(K::scratch_bytes));
      Kokkos::parallel_for("attnsink::kokkos::forward_cuda", policy, kern);
      be.space.fence();  // kbuf must outlive the kernel
    };
    if (p.dim == 64) go.template operator()<64>();
    else go.template operator()<128>();
    return true;
  } else {
    return false;
  }
}
#else
template <class A, class T, class E>
bool run_cuda(const backend::kokkos<E>&, const A&, const problem&, tensor4<const T>, tensor4<const T>,
              tensor4<const T>, tensor4<T>, row_stats<T>) {
  return false;
}
#endif

// The largest head, feature and value dim the kernels are compiled for
// (64, 128 or 256): every capacity up to it is instantiated per attention
// type and device kernel, so a smaller value saves compile time.
#ifndef ATTNSINK_KOKKOS_MAX_DIM
#define ATTNSINK_KOKKOS_MAX_DIM 256
#endif
static_assert(ATTNSINK_KOKKOS_MAX_DIM == 64 || ATTNSINK_KOKKOS_MAX_DIM == 128 || ATTNSINK_KOKKOS_MAX_DIM == 256,
              "attnsink: ATTNSINK_KOKKOS_MAX_DIM must be 64, 128 or 256");
inline constexpr int max_dim = ATTNSINK_KOKKOS_MAX_DIM;

// Calls f.template operator()<Cap>() with the register capacity for `need`
// (set_dims' result): on a device the smallest of 64, 128 and max_dim that
// holds it; on the host max_dim alone (one instantiation; registers are not
// scarce there).
template <bool Host, class F>
void with_capacity(std::size_t need, F&& f) {
  if constexpr (Host) {
    f.template operator()<max_dim>();
  } else {
    if (need <= 64 || max_dim == 64) f.template operator()<64>();
    else if (need <= 128 || max_dim == 128) f.template operator()<(max_dim < 128 ? max_dim : 128)>();
    else f.template operator()<max_dim>();
  }
}

// Fills the head, feature and value dims (and their 4-padded widths) and the
// GQA group of a launch geometry G (the forward's layout, the backward's
// geometry); returns the register capacity they need. Throws value_error
// ("q") past max_dim: the kernels keep a row in registers.
template <class G, class A>
std::size_t set_dims(G& g, const A& a, const problem& p) {
  g.d = p.dim;
  g.df = a.score.feature_dim(p.dim);
  g.dfp = round4(g.df);
  g.dv = p.vdim;
  g.dvp = round4(g.dv);
  g.group = p.heads / p.kv_heads;
  const std::size_t need = std::max({round4(g.d), g.dfp, g.dvp});
  if (need > std::size_t(max_dim))
    throw value_error("q", "the kokkos backend supports head, feature and value dims up to " +
                               std::to_string(max_dim) + " (ATTNSINK_KOKKOS_MAX_DIM), got " +
                               std::to_string(std::max({g.d, g.df, g.dv})));
  return need;
}

// Runs on operands already in E's memory; p validated.
template <class A, class T, class E>
void run(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const T> q, tensor4<const T> k,
         tensor4<const T> v, tensor4<T> out, row_stats<T> stats) {
  constexpr bool host = kokkos_compat::host_accessible<E>;
  if (run_cuda(be, a, p, q, k, v, out, stats)) return;
  layout g{};
  const std::size_t need = set_dims(g, a, p);
  const std::size_t want = be.team_rows ? be.team_rows : (host ? 1 : 128);
  const std::size_t row_bytes = (g.dfp + g.dvp) * sizeof(T);
  std::size_t budget = std::min<std::size_t>(40 << 10, Kokkos::TeamPolicy<E>::scratch_size_max(0) - 64);
  g.level = 0;
  if (budget < 2 * chunk * row_bytes) {  // wide double rows: a slower level is still better than refusing
    g.level = 1;
    budget = std::min<std::size_t>(256 << 10, Kokkos::TeamPolicy<E>::scratch_size_max(1) - 64);
  }
  std::size_t bk = budget / row_bytes - chunk;
  if (be.key_tile) bk = std::min(bk, be.key_tile);
  g.bk = std::max<std::size_t>(chunk, std::min<std::size_t>(256, bk) / chunk * chunk);
  auto go = [&]<int Cap>() {
    // Rows per team never exceed what the kernel's registers allow.
    using K = forward_kernel<A, T, E, Cap>;
    const K probe{a, q, v, k.data, 0, 0, 0, out, stats, p, g, T(1), false};
    const std::size_t scratch = (g.bk + chunk) * (g.dfp + g.dvp) * sizeof(T) + 64;
    Kokkos::TeamPolicy<E> trial(be.space, 1, Kokkos::AUTO);
    trial.set_scratch_size(g.level, Kokkos::PerTeam(scratch));
    const std::size_t most = std::size_t(trial.team_size_max(probe, Kokkos::ParallelForTag()));
    g.br = std::max<std::size_t>(1, std::min(want, most));
    g.hs = std::min(g.group, g.br);
    g.hchunks = (g.group + g.hs - 1) / g.hs;
    g.ni = std::max<std::size_t>(1, g.br / g.hs);
    g.qtiles = (p.tq + g.ni - 1) / g.ni;
    launch<Cap>(be, a, p, g, q, k, v, out, stats);
  };
  with_capacity<host>(need, go);
}

// Contiguous copy of x in Space's memory.
template <class Space, class T>
Kokkos::View<T*, Space> upload(tensor4<const T> x) {
  Kokkos::View<T*, Space> d(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::operand"), x.size());
  const bool dense = x.stride_t == x.dim && x.stride_h == x.tokens * x.dim && x.stride_b == x.heads * x.tokens * x.dim;
  std::vector<T> packed;
  const T* src = x.data;
  if (!dense) {
    packed.resize(x.size());
    std::size_t n = 0;
    for (std::size_t b = 0; b < x.batch; ++b)
      for (std::size_t h = 0; h < x.heads; ++h)
        for (std::size_t t = 0; t < x.tokens; ++t)
          for (std::size_t e = 0; e < x.dim; ++e) packed[n++] = x.row(b, h, t)[e];
    src = packed.data();
  }
  Kokkos::deep_copy(d, Kokkos::View<const T*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(src, x.size()));
  return d;
}

template <class T>
tensor4<T> dense(T* p, std::size_t b, std::size_t h, std::size_t t, std::size_t d) {
  return tensor4<T>(p, b, h, t, d);
}

template <class A, class E>
void run_in_double(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const float> q,
                   tensor4<const float> k, tensor4<const float> v, tensor4<float> out, row_stats<float> stats);

// Validation and the float → double detour, then run().
template <class A, class T, class E>
void dispatch(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const T> q, tensor4<const T> k,
              tensor4<const T> v, tensor4<T> out, row_stats<T> stats) {
  using norm_t = typename A::norm_type;
  if constexpr (std::is_same_v<T, float> && norm_t::has_denominator && !norm_t::non_negative) {
    // A signed denominator (abs_clamped) can cancel far below the sum of its
    // terms' magnitudes, which float scores cannot resolve: compute in double.
    run_in_double(be, a, p, q, k, v, out, stats);
  } else {
    run(be, a, p, q, k, v, out, stats);
  }
}

// A dense double copy of x, in E's memory.
template <class E>
Kokkos::View<double*, typename E::memory_space> widen(const E& space, tensor4<const float> x) {
  Kokkos::View<double*, typename E::memory_space> w(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::f64"),
                                                    x.size());
  double* wd = w.data();
  Kokkos::parallel_for(
      "attnsink::kokkos::widen", Kokkos::RangePolicy<E>(space, 0, x.batch * x.heads * x.tokens),
      KOKKOS_LAMBDA(const std::size_t r) {
        const std::size_t t = r % x.tokens, bh = r / x.tokens;
        const float* s = x.row(bh / x.heads, bh % x.heads, t);
        for (std::size_t e = 0; e < x.dim; ++e) wd[r * x.dim + e] = s[e];
      });
  return w;
}

template <class A, class E>
void run_in_double(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const float> q,
                   tensor4<const float> k, tensor4<const float> v, tensor4<float> out, row_stats<float> stats) {
  using M = typename E::memory_space;
  const auto qd = widen(be.space, q), kd = widen(be.space, k), vd = widen(be.space, v);
  const std::size_t nrow = p.batch * p.heads * p.tq;
  Kokkos::View<double*, M> od("attnsink::o64", out.size()), md("attnsink::m64", stats.max ? nrow : 0),
      ld("attnsink::l64", stats.sum ? nrow : 0);
  run(be, a, p, dense<const double>(qd.data(), q.batch, q.heads, q.tokens, q.dim),
      dense<const double>(kd.data(), k.batch, k.heads, k.tokens, k.dim),
      dense<const double>(vd.data(), v.batch, v.heads, v.tokens, v.dim),
      dense<double>(od.data(), out.batch, out.heads, out.tokens, out.dim),
      row_stats<double>{stats.max ? md.data() : nullptr, stats.sum ? ld.data() : nullptr});
  const double* o = od.data();
  const double* mp = md.data();
  const double* lp = ld.data();
  Kokkos::parallel_for(
      "attnsink::kokkos::narrow", Kokkos::RangePolicy<E>(be.space, 0, nrow), KOKKOS_LAMBDA(const std::size_t r) {
        const std::size_t t = r % out.tokens, bh = r / out.tokens;
        float* dst = out.row(bh / out.heads, bh % out.heads, t);
        for (std::size_t e = 0; e < out.dim; ++e) dst[e] = float(o[r * out.dim + e]);
        if (stats.max) stats.max[r] = float(mp[r]);
        if (stats.sum) stats.sum[r] = float(lp[r]);
      });
  be.space.fence();
}

}  // namespace kokkos_detail

// Forward on the Kokkos backend with operands in E's memory space (see the
// header comment); same contract as the other backends' forward. Validates
// shapes and (after copying them to the host) the policies' parameters.
template <attention_type A, class T, class E>
  requires std::is_floating_point_v<T>
void forward_device(const backend::kokkos<E>& be, const A& a, tensor4<const T> q, tensor4<const T> k,
                    tensor4<const T> v, tensor4<T> out, row_stats<T> stats = {}) {
  problem p;
  if constexpr (kokkos_compat::host_accessible<E>) {
    p = check_forward(a, q, k, v, out);
  } else {
    p = check_forward(attention<>{}, q, k, v, out);  // shapes first: they size the parameter copies
    kokkos_detail::mirror<Kokkos::HostSpace, typename E::memory_space> to_host{p, {}, {}, {}};
    check_forward(kokkos_detail::rebind_all(a, to_host), q, k, v, out);
  }
  kokkos_detail::dispatch(be, a, p, q, k, v, out, stats);
}

// Forward on the Kokkos backend with operands in host memory: copies them
// (and the policies' parameter arrays) to E's memory when E cannot read host
// memory, runs there, and copies out and stats back.
template <attention_type A, class T, class E>
  requires std::is_floating_point_v<T>
void forward(const backend::kokkos<E>& be, const A& a, tensor4<const T> q, tensor4<const T> k, tensor4<const T> v,
             tensor4<T> out, row_stats<T> stats = {}) {
  const problem p = check_forward(a, q, k, v, out);
  using M = typename E::memory_space;
  if constexpr (kokkos_compat::host_accessible<E>) {
    kokkos_detail::dispatch(be, a, p, q, k, v, out, stats);
  } else {
    kokkos_detail::mirror<M, Kokkos::HostSpace> to_dev{p, {}, {}, {}};
    const A ad = kokkos_detail::rebind_all(a, to_dev);
    const auto qd = kokkos_detail::upload<M>(q), kd = kokkos_detail::upload<M>(k), vd = kokkos_detail::upload<M>(v);
    const std::size_t nrow = p.batch * p.heads * p.tq;
    Kokkos::View<T*, M> od(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::out"), out.size());
    Kokkos::View<T*, M> md(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::m"), stats.max ? nrow : 0);
    Kokkos::View<T*, M> ld(Kokkos::view_alloc(Kokkos::WithoutInitializing, "attnsink::l"), stats.sum ? nrow : 0);
    using kokkos_detail::dense;
    kokkos_detail::dispatch(be, ad, p, dense<const T>(qd.data(), q.batch, q.heads, q.tokens, q.dim),
                            dense<const T>(kd.data(), k.batch, k.heads, k.tokens, k.dim),
                            dense<const T>(vd.data(), v.batch, v.heads, v.tokens, v.dim),
                            dense<T>(od.data(), out.batch, out.heads, out.tokens, out.dim),
                            row_stats<T>{stats.max ? md.data() : nullptr, stats.sum ? ld.data() : nullptr});
    auto oh = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), od);
    std::size_t n = 0;
    for (std::size_t b = 0; b < out.batch; ++b)
      for (std::size_t h = 0; h < out.heads; ++h)
        for (std::size_t t = 0; t < out.tokens; ++t)
          for (std::size_t e = 0; e < out.dim; ++e) out.row(b, h, t)[e] = oh(n++);
    using host_view = Kokkos::View<T*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    if (stats.max) Kokkos::deep_copy(host_view(stats.max, nrow), md);
    if (stats.sum) Kokkos::deep_copy(host_view(stats.sum, nrow), ld);
  }
}

// A rank-4 Kokkos::View (batch, heads, tokens, dim) with a contiguous last
// extent, as the tensor4 forward_device takes.
template <class View>
auto as_tensor(const View& x) {
  static_assert(View::rank == 4, "attnsink::as_tensor: expected a rank-4 View (batch, heads, tokens, dim)");
  if (x.extent(3) > 1 && x.stride(3) != 1) throw shape_error("view", "the last extent must be contiguous");
  using T = std::remove_reference_t<decltype(*x.data())>;
  return tensor4<T>(x.data(), x.extent(0), x.extent(1), x.extent(2), x.extent(3), x.stride(0), x.stride(1),
                    x.stride(2));
}

}  // namespace attnsink
