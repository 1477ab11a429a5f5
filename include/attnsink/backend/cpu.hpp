// attnsink/backend/cpu.hpp — the fused CPU backend: xsimd inner loops, oneTBB threads.
//
// One streaming pass over key tiles per query tile with online normalization
// (norm.hpp's (m, l) state); no tokens × tokens buffer is ever allocated.
// A tile holds query rows: a range of query positions times every query head
// of one kv-head group, so grouped-query heads share each K/V tile they read.
//
// Two tile kernels:
// - wide (prefill, when a tile fills at least one SIMD vector): query rows are
//   the SIMD lanes. Q is held transposed (features × rows), so Sᵀ = K·Qᵀ and
//   Oᵀ += Vᵀ·Pᵀ are both "broadcast one K/V element, FMA a vector of rows" and
//   read K and V rows where they lie: no per-tile transpose. The running max,
//   the exponentials and the row sums are then plain vertical vector ops, so
//   every normalization is vectorized the same way, not only softmax.
//   Masks are handled per SIMD vector of rows: a key block is computed only
//   for the row vectors that see some key of it (diagonal and window edges
//   cost at most one vector-wide triangle), and lanes are masked only where a
//   vector's rows disagree.
// - small (decode and tiny tiles, fewer rows than lanes): rows are kept
//   row-major and scores are dot products along the feature axis, so one
//   query against a long cache streams K and V once at full vector width.
//
// Link attnsink::cpu (xsimd, TBB). Any attention type runs here; policies
// with no vector form (user norms, softcap, table biases) take a per-lane
// scalar loop inside the same kernel.
//
// SIMD target: whatever the translation unit is compiled for (xsimd's default
// architecture): SSE2 in the portable build, AVX2+FMA with
// ATTNSINK_CPU_ARCH=avx2, AVX-512 with =native on such a machine.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf: the L2 size
#endif

#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <xsimd/xsimd.hpp>

#include "reference.hpp"

namespace attnsink {
namespace backend {
// Tag: the fused CPU backend. Options: the tile sizes (rows of queries, keys).
struct cpu {
  // Query rows per tile (wide kernel: rounded up to whole SIMD vectors).
  // Under a band mask (no row sees more than band < tokens keys: a sliding
  // window, packed short documents) the wide kernel lowers it to at most
  // band / 8 rows (at least one vector; on AVX-512 at least 3 vectors where
  // the band holds 6), so that few rows share each tile's ragged band edges.
  std::size_t query_tile = 64;
  // Keys per chunk of a tile's pass. Under a band mask the wide kernel raises
  // it to cover a tile's whole band (up to 2048 keys).
  std::size_t key_tile = 64;
  // Prepared (rotated / feature-mapped) keys are made for as many (batch, kv
  // head) pairs at a time as fit in this many bytes (at least one pair).
  std::size_t prep_budget = std::size_t(32) << 20;
  // Prefill only: query tiles one task runs side by side over each span of
  // group_keys keys (keys and values then stream from L3 once per group of
  // tiles rather than once per tile). 0: automatic (4 when the keys and
  // values a query row sees, on average, fill a core's L2 and no band mask
  // limits the rows' keys, else 1). Results do not depend on either.
  std::size_t tile_group = 0;
  std::size_t group_keys = 0;  // 0: 256
  // Decode only (tiles thinner than a SIMD vector): each tile's keys are cut
  // into this many parts of whole key tiles, run as separate tasks and
  // merged (the norm's (m, l) rescaling), so that one query against few kv
  // heads still uses every thread. 0: automatic (enough parts for about two
  // tasks per thread, each at least 1024 keys; 1 when the tiles alone give
  // that). Results differ from one part only by float rounding.
  std::size_t key_splits = 0;
};
}  // namespace backend

namespace cpu_detail {

template <class T>
using simd = xsimd::batch<T>;

template <class T>
using aligned_vector = std::vector<T, xsimd::aligned_allocator<T>>;

template <class T>
struct blocking {
  static constexpr std::size_t W = simd<T>::size;
  // Row vectors per micro-kernel block, and K/V elements broadcast per block:
  // 6 × 4 accumulators fill AVX-512's 32 registers with room for the loads;
  // 16-register targets take 3 × 4.
  static constexpr std::size_t NV = 4;
  static constexpr std::size_t MR = std::is_base_of_v<xsimd::avx512f, typename simd<T>::arch_type> ? 6 : 3;
};

// Leaves a block's results as they are.
struct no_epilogue {
  template <class X>
  X operator()(const X& x) const {
    return x;
  }
};

// Runs nothing between two blocks of a product.
struct no_hook {
  void operator()() const {}
};

// C[i][v·W, v·W + W) (+)= Σ_{k<K} A[i·ais + k·aks] · B[k·ldb + v·W, ... + W) for i < M, v < V,
// each result vector passed through epi before it is stored. B and C rows are SIMD-aligned.
template <std::size_t M, std::size_t V, bool Add, class T, class E>
inline void block(const T* a, std::size_t ais, std::size_t aks, const T* b, std::size_t ldb, std::size_t K, T* c,
                  std::size_t ldc, const E& epi) {
  constexpr std::size_t W = simd<T>::size;
  simd<T> acc[M][V];
#pragma GCC unroll 8
  for (std::size_t i = 0; i < M; ++i)
#pragma GCC unroll 8
    for (std::size_t v = 0; v < V; ++v)
      acc[i][v] = Add ? simd<T>::load_aligned(c + i * ldc + v * W) : simd<T>(T(0));
  for (std::size_t k = 0; k < K; ++k) {
    const T* bk = b + k * ldb;
    const T* ak = a + k * aks;
    simd<T> bv[V];
#pragma GCC unroll 8
    for (std::size_t v = 0; v < V; ++v) bv[v] = simd<T>::load_aligned(bk + v * W);
#pragma GCC unroll 8
    for (std::size_t i = 0; i < M; ++i) {
      const simd<T> ai(ak[i * ais]);
#pragma GCC unroll 8
      for (std::size_t v = 0; v < V; ++v) acc[i][v] = xsimd::fma(ai, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (std::size_t i = 0; i < M; ++i)
#pragma GCC unroll 8
    for (std::size_t v = 0; v < V; ++v) epi(acc[i][v]).store_aligned(c + i * ldc + v * W);
}

template <std::size_t M, std::size_t V, bool Add, class T, class E>
inline void block_tail(std::size_t m, const T* a, std::size_t ais, std::size_t aks, const T* b, std::size_t ldb,
                       std::size_t K, T* c, std::size_t ldc, const E& epi) {
  if (m == M) return block<M, V, Add>(a, ais, aks, b, ldb, K, c, ldc, epi);
  if constexpr (M > 1) block_tail<M - 1, V, Add>(m, a, ais, aks, b, ldb, K, c, ldc, epi);
}

// Rows [0, m) of C in blocks of MR rows (a tail block for the rest), V vectors
// wide; `between` runs after each block.
template <std::size_t MR, std::size_t V, bool Add, class T, class E, class H = no_hook>
inline void gemm_rows(std::size_t m, const T* a, std::size_t ais, std::size_t aks, const T* b, std::size_t ldb,
                      std::size_t K, T* c, std::size_t ldc, const E& epi, const H& between = {}) {
  std::size_t i = 0;
  for (; i + MR <= m; i += MR) {
    block<MR, V, Add>(a + i * ais, ais, aks, b, ldb, K, c + i * ldc, ldc, epi);
    between();
  }
  if (i < m) {
    block_tail<MR - 1, V, Add>(m - i, a + i * ais, ais, aks, b, ldb, K, c + i * ldc, ldc, epi);
    between();
  }
}

// C (m × nv vectors) (+)= A (m × K, strides ais, aks) · B (K × nv vectors),
// results through epi; `between` runs after each block.
template <bool Add, class T, class E = no_epilogue, class H = no_hook>
inline void gemm(std::size_t m, std::size_t nv, const T* a, std::size_t ais, std::size_t aks, const T* b,
                 std::size_t ldb, std::size_t K, T* c, std::size_t ldc, const E& epi = {}, const H& between = {}) {
  constexpr std::size_t W = simd<T>::size, NV = blocking<T>::NV, MR = blocking<T>::MR;
  for (std::size_t v0 = 0; v0 < nv; v0 += NV) {
    const T* bb = b + v0 * W;
    T* cc = c + v0 * W;
    switch (std::min(NV, nv - v0)) {
      case 1: gemm_rows<MR, 1, Add>(m, a, ais, aks, bb, ldb, K, cc, ldc, epi, between); break;
      case 2: gemm_rows<MR, 2, Add>(m, a, ais, aks, bb, ldb, K, cc, ldc, epi, between); break;
      case 3: gemm_rows<MR, 3, Add>(m, a, ais, aks, bb, ldb, K, cc, ldc, epi, between); break;
      default: gemm_rows<MR, 4, Add>(m, a, ais, aks, bb, ldb, K, cc, ldc, epi, between); break;
    }
  }
}

// The forward's tile product: gemm's contract, but with MR rows per block
// when few row vectors are active (the segments at causal diagonals and
// window edges): on 32-register targets 8 rows keep 8 to 24 accumulators in
// flight where gemm's 6 would leave 6 to 18 (fewer than the FMA pipes hold).
// Each result is the same FMA chain in ascending k as gemm's. `between` runs
// after each block (the tile's paced cache-line requests).
template <bool Add, class T, class E = no_epilogue, class H = no_hook>
inline void gemm_fwd(std::size_t m, std::size_t nv, const T* a, std::size_t ais, std::size_t aks, const T* b,
                     std::size_t ldb, std::size_t K, T* c, std::size_t ldc, const E& epi = {},
                     const H& between = {}) {
  if constexpr (blocking<T>::MR == 6) {
    switch (nv) {
      case 1: return gemm_rows<8, 1, Add>(m, a, ais, aks, b, ldb, K, c, ldc, epi, between);
      case 2: return gemm_rows<8, 2, Add>(m, a, ais, aks, b, ldb, K, c, ldc, epi, between);
      case 3: return gemm_rows<8, 3, Add>(m, a, ais, aks, b, ldb, K, c, ldc, epi, between);
      default: break;
    }
  }
  gemm<Add>(m, nv, a, ais, aks, b, ldb, K, c, ldc, epi, between);
}

// --- vector forms of the elementwise policies (a scalar per-lane loop covers the rest)

// e^x lane-wise. On AVX-512 float: Cody-Waite reduction x = n ln2 + r, Cephes'
// degree-7 polynomial for e^r (within 2 ulp on |r| <= ln2/2), and scalef for
// 2^n, which saturates to 0 and +inf by itself; about half the instructions of
// xsimd::exp. x is clamped below at -104 (e^-104 is 0 in float) so that -inf
// gives 0; +inf and NaN give NaN (callers mask such lanes). Elsewhere: xsimd::exp.
template <class T>
inline simd<T> fast_exp(const simd<T>& x) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && simd<T>::size == 16) {
    const __m512 v = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
  }
#endif
  return xsimd::exp(x);
}

template <class F>
inline constexpr bool vec_fn =
    std::is_same_v<F, fn::identity> || std::is_same_v<F, fn::relu> || std::is_same_v<F, fn::elu_plus_one> ||
    std::is_same_v<F, fn::sigmoid>;

template <class F, class T>
inline simd<T> apply_fn(const simd<T>& x) {
  if constexpr (std::is_same_v<F, fn::identity>) {
    return x;
  } else if constexpr (std::is_same_v<F, fn::relu>) {
    return xsimd::max(x, simd<T>(T(0)));
  } else if constexpr (std::is_same_v<F, fn::elu_plus_one>) {
    // exp of a large positive lane may overflow to inf; that lane takes x + 1
    return xsimd::select(x > simd<T>(T(0)), x + simd<T>(T(1)), xsimd::exp(x));
  } else if constexpr (std::is_same_v<T, float>) {
    // 1/(1 + e^{-x}) with the hardware reciprocal estimate and one Newton step
    // (a division costs several times more). Clamping -x at 80 keeps y finite
    // and its reciprocal normal; σ(x) for x < -80 is below 2e-35 either way.
    const simd<T> y = simd<T>(T(1)) + xsimd::exp(xsimd::min(-x, simd<T>(T(80))));
    const simd<T> r = xsimd::reciprocal(y);
    return r * xsimd::fnma(y, r, simd<T>(T(2)));
  } else {
    return simd<T>(T(1)) / (simd<T>(T(1)) + xsimd::exp(-x));
  }
}

// σ(x + b) for the forward's sigmoid normalization: apply_fn<fn::sigmoid>'s
// formula (reciprocal estimate and one Newton step) on fast_exp.
template <class T>
inline simd<T> sigmoid_fast(const simd<T>& x, T b) {
  if constexpr (std::is_same_v<T, float>) {
#if defined(__AVX512F__)
    if constexpr (simd<T>::size == 16) {
      // e^{-(x+b)} = 2^t, t = -(x + b)·log2(e) clamped to [-150, 115]: 2^t is
      // then a normal float or zero and 1 + 2^t finite. Adding 1.5·2^18 (ulp
      // 1/32) rounds t to k = n + j/32 (n an integer, 0 <= j < 32) and leaves j
      // in the sum's low 5 bits; r = t - k, |r| <= 1/64. 2^{j/32} from a
      // 32-entry table (one permute), 2^r by 1 + r·(c1 + c2·r) (c1 tuned for the
      // dropped cubic term: relative error below 1e-7), 2^n by scalef, which
      // takes the floor of its exponent.
      alignas(64) static constexpr float tab[32] = {
          1.000000000e+00f, 1.021897149e+00f, 1.044273782e+00f, 1.067140401e+00f, 1.090507733e+00f, 1.114386743e+00f,
          1.138788635e+00f, 1.163724859e+00f, 1.189207115e+00f, 1.215247360e+00f, 1.241857812e+00f, 1.269050957e+00f,
          1.296839555e+00f, 1.325236643e+00f, 1.354255547e+00f, 1.383909882e+00f, 1.414213562e+00f, 1.445180807e+00f,
          1.476826146e+00f, 1.509164428e+00f, 1.542210825e+00f, 1.575980845e+00f, 1.610490332e+00f, 1.645755478e+00f,
          1.681792831e+00f, 1.718619298e+00f, 1.756252160e+00f, 1.794709075e+00f, 1.834008086e+00f, 1.874167634e+00f,
          1.915206561e+00f, 1.957144124e+00f};
      const __m512 l2e = _mm512_set1_ps(1.44269504088896341f);
      __m512 t = _mm512_fnmsub_ps(x, l2e, _mm512_set1_ps(b * 1.44269504088896341f));
      t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-150.0f)), _mm512_set1_ps(115.0f));
      const __m512 magic = _mm512_set1_ps(393216.0f);
      const __m512 u = _mm512_add_ps(t, magic);
      const __m512 k = _mm512_sub_ps(u, magic);
      const __m512 r = _mm512_sub_ps(t, k);
      const __m512 tj = _mm512_permutex2var_ps(_mm512_load_ps(tab), _mm512_castps_si512(u), _mm512_load_ps(tab + 16));
      const __m512 q = _mm512_fmadd_ps(r, _mm512_set1_ps(0.2402265070f), _mm512_set1_ps(0.6931573437f));
      const __m512 e = _mm512_fmadd_ps(_mm512_mul_ps(tj, r), q, tj);
      const __m512 y = _mm512_add_ps(_mm512_scalef_ps(e, k), _mm512_set1_ps(1.0f));
      const __m512 rc = _mm512_rcp14_ps(y);
      return _mm512_mul_ps(rc, _mm512_fnmadd_ps(y, rc, _mm512_set1_ps(2.0f)));
    }
#endif
    const simd<T> y = simd<T>(T(1)) + fast_exp<T>(xsimd::min(simd<T>(-b) - x, simd<T>(T(80))));
    const simd<T> r = xsimd::reciprocal(y);
    return r * xsimd::fnma(y, r, simd<T>(T(2)));
  } else {
    return apply_fn<fn::sigmoid, T>(x + simd<T>(b));
  }
}

template <class N>
struct normalized_fn {
  using type = void;
};
template <class F>
struct normalized_fn<norm::normalized<F>> {
  using type = F;
};

template <class S>
struct kernel_phi {
  using type = void;
};
template <class Phi>
struct kernel_phi<score::kernel<Phi>> {
  using type = Phi;
};

// Which normalizations have a vector weight/mass here.
template <class N>
inline constexpr bool vec_norm =
    std::is_base_of_v<norm::exp_family, N> || std::is_same_v<N, norm::sigmoid> ||
    std::is_same_v<N, norm::elu_plus_one> || std::is_same_v<N, norm::identity> || std::is_same_v<N, norm::softpick> ||
    (!std::is_void_v<typename normalized_fn<N>::type> && vec_fn<typename normalized_fn<N>::type>);

// weight(s, m) and mass(s, m) of normalization n, lane-wise.
template <class N, class T>
inline void norm_vec(const N& n, const simd<T>& s, const simd<T>& m, simd<T>& w, simd<T>& ms) {
  if constexpr (std::is_base_of_v<norm::exp_family, N>) {
    w = ms = fast_exp<T>(s - m);
  } else if constexpr (std::is_same_v<N, norm::sigmoid>) {
    w = sigmoid_fast<T>(s, T(n.bias));
  } else if constexpr (std::is_same_v<N, norm::elu_plus_one>) {
    w = apply_fn<fn::elu_plus_one, T>(s);
  } else if constexpr (std::is_same_v<N, norm::identity>) {
    w = s;
  } else if constexpr (std::is_same_v<N, norm::softpick>) {
    const simd<T> x = xsimd::exp(s - m) - xsimd::exp(-m);
    w = xsimd::max(x, simd<T>(T(0)));
    ms = xsimd::abs(x);
  } else {
    w = ms = apply_fn<typename normalized_fn<N>::type, T>(s);
  }
}

// --- the small (row-major) kernel's pieces

#if defined(__AVX512F__)
// Keeps a loaded vector in a register for its next uses. Without it GCC 12
// folds the load into every FMA that uses the vector (a memory operand each),
// so a vector feeding 4 FMAs is read 4 times; an AVX-512 core issues at most
// two 512-bit loads a cycle, and decode's products ran load-bound at half
// their FMA rate (dots read 2 vectors per FMA, gemm_acc 1.5).
inline void keep(__m512& x) {
#if defined(__GNUC__)
  asm("" : "+v"(x));
#endif
}

// The 16 dot products of 4 rows × 4 keys from their accumulators acc[key][row]
// (each a vector of partial sums): 128-bit block r of the result holds row
// r's dot products with keys 0..3, in key order. Shuffles and adds, no
// horizontal add per dot product.
inline __m512 reduce_4x4(const __m512 (&acc)[4][4]) {
  __m512 y[4];
  for (int k = 0; k < 4; ++k) {
    const __m512 x01 = _mm512_add_ps(_mm512_shuffle_f32x4(acc[k][0], acc[k][1], 0x44),
                                     _mm512_shuffle_f32x4(acc[k][0], acc[k][1], 0xEE));
    const __m512 x23 = _mm512_add_ps(_mm512_shuffle_f32x4(acc[k][2], acc[k][3], 0x44),
                                     _mm512_shuffle_f32x4(acc[k][2], acc[k][3], 0xEE));
    // block r: row r's 4 partial sums
    y[k] = _mm512_add_ps(_mm512_shuffle_f32x4(x01, x23, 0x88), _mm512_shuffle_f32x4(x01, x23, 0xDD));
  }
  const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(y[0], y[1]), _mm512_unpackhi_ps(y[0], y[1]));
  const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(y[2], y[3]), _mm512_unpackhi_ps(y[2], y[3]));
  return _mm512_add_ps(_mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
}
#endif

#if defined(__AVX512F__)
// r[j] lane i <- r[i] lane j: a 16 × 16 float transpose in registers
// (64 shuffles for what would be 256 strided scalar moves).
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}
#endif

// One cache line requested ahead of use: into L2 for reading, or into L1
// owned for writing (a later store to it does not wait for the line to be
// read from memory). GCC deletes a loop whose body is only __builtin_prefetch
// (it has no side effects, and such loops are assumed to finish), so on x86
// the request is an asm statement the optimizer keeps.
template <bool Write>
inline void prefetch(const char* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if constexpr (Write) asm volatile("prefetchw %0" : : "m"(*p));
  else asm volatile("prefetcht1 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, Write ? 1 : 0, Write ? 3 : 2);
#endif
}
inline void prefetch_l2(const char* p) { prefetch<false>(p); }
inline void prefetch_w(const char* p) { prefetch<true>(p); }

// Decode's read-ahead: the next key tile's K and V rows requested into L2
// while the current tile's products run, in ascending row order, a K line
// and a V line in turn, spread evenly over the products' steps (`step`: once
// per vector step of the dot products and once per key of each P·V pass, on
// the first 4 rows only). Decode is memory-bound: its K and V reads must stay
// in flight while the core computes. Two ascending streams at once did that;
// requests in the products' own order (4 rows a column at a time, and K
// during the dot products, V during P·V only) left the memory idle in
// turns (paired runs, 2026-12-06, AVX-512, one query on 8 kv heads, KV
// 32768: see benchmarks/RESULTS.md, tenth session). `per` lines a step
// cover the next tile's rows over this tile's steps: the steps are counted
// in each tile and the next tile's pace follows the count; the first tile
// uses the float AVX-512 kernels' count, (df + dv) / 64 steps per key.
template <class T>
struct read_ahead {
  struct rows {
    const char* p = nullptr;
    std::size_t stride = 0, bytes = 0, n = 0;  // row stride and bytes per row, in bytes; rows left
    std::size_t off = 0;
    bool next() {
      if (n == 0) return false;
      prefetch_l2(p + off);
      if ((off += 64) >= bytes) {
        off = 0;
        p += stride;
        --n;
      }
      return true;
    }
  };
  rows k, v;
  std::size_t per = 0, steps = 0, last = 0;
  // The rows this tile's steps request: n rows of K from k0 and of V from v0
  // (n = 0: none); `nk` keys in the tile that runs now.
  void tile(const T* k0, std::size_t kstride, std::size_t kfloats, const T* v0, std::size_t vstride,
            std::size_t vfloats, std::size_t n, std::size_t nk) {
    if (steps) last = steps;
    steps = 0;
    k = {reinterpret_cast<const char*>(k0), kstride * sizeof(T), kfloats * sizeof(T), k0 ? n : 0};
    v = {reinterpret_cast<const char*>(v0), vstride * sizeof(T), vfloats * sizeof(T), v0 ? n : 0};
    const std::size_t lines = n * ((k.bytes + 63) / 64 + (v.bytes + 63) / 64);
    const std::size_t expect = last ? last : std::max<std::size_t>(1, nk * (k.bytes + v.bytes) / (64 * sizeof(float)));
    per = (lines + expect - 1) / expect;
  }
  void step() {
    ++steps;
    for (std::size_t i = 0; i < per;) {
      const bool a = k.next();
      i += a;
      const bool b = i < per && v.next();
      i += b;
      if (!a && !b) return;
    }
  }
};

// A wide tile's paced cache-line requests, `per` lines after each
// micro-kernel block: rows to read into L2 (the query rows and the new key
// and value rows of the tile likely run next on this thread), then rows to
// write (this tile's output). Short windows leave each row only a few key
// chunks, so a row's first read of Q, K and V and its output write would
// otherwise wait on memory about once per few chunks; requested all at once,
// the requests stall on the fill buffers instead.
struct line_feed {
  static constexpr std::size_t groups = 4;
  const char* const* row = nullptr;  // row starts, group after group
  std::size_t n[groups] = {}, lines[groups] = {};
  std::size_t nread = 0, per = 0;  // groups [0, nread) are read, the rest written
  std::size_t g = 0, r = 0, at = 0;  // next group, its row, and the row's index in `row`
  void add(std::size_t rows, std::size_t row_lines) {
    for (std::size_t u = 0; u < groups; ++u)
      if (n[u] == 0) {
        n[u] = rows;
        lines[u] = row_lines;
        return;
      }
  }
  // About `per` lines, a whole row's at a time: the bookkeeping is per row
  // (a per-line walk cost more instructions than the requests themselves).
  void step() {
    for (std::size_t k = 0; k < per && g < groups;) {
      if (r == n[g]) {
        ++g;
        r = 0;
        continue;
      }
      const char* x = row[at++];
      const std::size_t nl = lines[g];
      if (g < nread)
        for (std::size_t u = 0; u < nl; ++u) prefetch_l2(x + u * 64);
      else
        for (std::size_t u = 0; u < nl; ++u) prefetch_w(x + u * 64);
      ++r;
      k += nl;
    }
  }
};
// One core's L2 in bytes (2 MiB where the system does not say).
inline std::size_t l2_bytes() {
  static const std::size_t n = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long x = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (x > 0) return std::size_t(x);
#endif
    return std::size_t(2) << 20;
  }();
  return n;
}

struct feed_step {
  line_feed* f;
  void operator()() const { f->step(); }
};

// s[r·ld + jj] = q_r · k_jj for r < nr (nr a multiple of 4), jj < nk; each
// vector step (each key, off the AVX-512 path) of the first four rows' pass
// is one `ahead` step.
template <class T>
inline void dots(const T* q, std::size_t df, std::size_t nr, const T* keys, std::size_t kstride, std::size_t nk, T* s,
                 std::size_t ld, read_ahead<T>* ahead = nullptr) {
  constexpr std::size_t W = simd<T>::size;
  const std::size_t dfv = df - df % W;
  for (std::size_t r = 0; r < nr; r += 4) {
    const T *q0 = q + r * df, *q1 = q0 + df, *q2 = q1 + df, *q3 = q2 + df;
    std::size_t jj = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float> && W == 16) {
      // 4 keys × 4 rows at a time: each loaded q and k vector feeds 4 FMAs.
      if (dfv == df)
        for (; jj + 4 <= nk; jj += 4) {
          const T* kr = keys + jj * kstride;
          __m512 acc[4][4];
          for (auto& ak : acc)
            for (auto& x : ak) x = _mm512_setzero_ps();
          for (std::size_t c = 0; c < df; c += W) {
            __m512 qv[4] = {_mm512_loadu_ps(q0 + c), _mm512_loadu_ps(q1 + c), _mm512_loadu_ps(q2 + c),
                            _mm512_loadu_ps(q3 + c)};
            for (auto& x : qv) keep(x);
            if (ahead && r == 0) ahead->step();
#pragma GCC unroll 4
            for (std::size_t k = 0; k < 4; ++k) {
              __m512 kv = _mm512_loadu_ps(kr + k * kstride + c);
              keep(kv);
#pragma GCC unroll 4
              for (std::size_t u = 0; u < 4; ++u) acc[k][u] = _mm512_fmadd_ps(qv[u], kv, acc[k][u]);
            }
          }
          const __m512 d = reduce_4x4(acc);
          _mm_storeu_ps(s + r * ld + jj, _mm512_castps512_ps128(d));
          _mm_storeu_ps(s + (r + 1) * ld + jj, _mm512_extractf32x4_ps(d, 1));
          _mm_storeu_ps(s + (r + 2) * ld + jj, _mm512_extractf32x4_ps(d, 2));
          _mm_storeu_ps(s + (r + 3) * ld + jj, _mm512_extractf32x4_ps(d, 3));
        }
    }
#endif
    for (; jj < nk; ++jj) {
      const T* kr = keys + jj * kstride;
      if (ahead && r == 0) ahead->step();
      simd<T> a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
      for (std::size_t c = 0; c < dfv; c += W) {
        const simd<T> kv = simd<T>::load_unaligned(kr + c);
        a0 = xsimd::fma(simd<T>::load_unaligned(q0 + c), kv, a0);
        a1 = xsimd::fma(simd<T>::load_unaligned(q1 + c), kv, a1);
        a2 = xsimd::fma(simd<T>::load_unaligned(q2 + c), kv, a2);
        a3 = xsimd::fma(simd<T>::load_unaligned(q3 + c), kv, a3);
      }
      T s0 = xsimd::hadd(a0), s1 = xsimd::hadd(a1), s2 = xsimd::hadd(a2), s3 = xsimd::hadd(a3);
      for (std::size_t c = dfv; c < df; ++c) {
        s0 += q0[c] * kr[c];
        s1 += q1[c] * kr[c];
        s2 += q2[c] * kr[c];
        s3 += q3[c] * kr[c];
      }
      s[r * ld + jj] = s0;
      s[(r + 1) * ld + jj] = s1;
      s[(r + 2) * ld + jj] = s2;
      s[(r + 3) * ld + jj] = s3;
    }
  }
}

// C[r][0..n) += Σ_{j<nk} P[r][j] · B[j][0..n) for r < nr (a multiple of 4).
// Each output element is one FMA chain in ascending j: the order is fixed.
// Each key of each pass over the first four rows is one `ahead` step.
template <class T>
inline void gemm_acc(const T* P, std::size_t ldp, const T* B, std::size_t ldb, std::size_t nk, T* C, std::size_t ldc,
                     std::size_t nr, std::size_t n, read_ahead<T>* ahead = nullptr) {
  constexpr std::size_t W = simd<T>::size;
  for (std::size_t r = 0; r < nr; r += 4) {
    const T* p0 = P + r * ldp;
    T* o0 = C + r * ldc;
    std::size_t e = 0;
#if defined(__AVX512F__)
    // 4 rows × 64 features a pass: each loaded V vector feeds 4 FMAs and
    // each broadcast 4 (the 2-vector blocks below load 1.5 vectors per FMA).
    if constexpr (std::is_same_v<T, float> && W == 16)
      for (; e + 4 * W <= n; e += 4 * W) {
        __m512 acc[4][4];
        for (std::size_t u = 0; u < 4; ++u)
          for (std::size_t x = 0; x < 4; ++x) acc[u][x] = _mm512_loadu_ps(o0 + u * ldc + e + x * W);
        const T* bj = B + e;
        for (std::size_t j = 0; j < nk; ++j, bj += ldb) {
          if (ahead && r == 0) ahead->step();
          __m512 bv[4] = {_mm512_loadu_ps(bj), _mm512_loadu_ps(bj + W), _mm512_loadu_ps(bj + 2 * W),
                          _mm512_loadu_ps(bj + 3 * W)};
          for (auto& x : bv) keep(x);
#pragma GCC unroll 4
          for (std::size_t u = 0; u < 4; ++u) {
            const __m512 x = _mm512_set1_ps(p0[u * ldp + j]);
#pragma GCC unroll 4
            for (std::size_t k = 0; k < 4; ++k) acc[u][k] = _mm512_fmadd_ps(x, bv[k], acc[u][k]);
          }
        }
        for (std::size_t u = 0; u < 4; ++u)
          for (std::size_t x = 0; x < 4; ++x) _mm512_storeu_ps(o0 + u * ldc + e + x * W, acc[u][x]);
      }
#endif
    for (; e + 2 * W <= n; e += 2 * W) {
      simd<T> a00 = simd<T>::load_unaligned(o0 + e), a01 = simd<T>::load_unaligned(o0 + e + W);
      simd<T> a10 = simd<T>::load_unaligned(o0 + ldc + e), a11 = simd<T>::load_unaligned(o0 + ldc + e + W);
      simd<T> a20 = simd<T>::load_unaligned(o0 + 2 * ldc + e), a21 = simd<T>::load_unaligned(o0 + 2 * ldc + e + W);
      simd<T> a30 = simd<T>::load_unaligned(o0 + 3 * ldc + e), a31 = simd<T>::load_unaligned(o0 + 3 * ldc + e + W);
      const T* bj = B + e;
      for (std::size_t j = 0; j < nk; ++j, bj += ldb) {
        if (ahead && r == 0) ahead->step();
        const simd<T> b0 = simd<T>::load_unaligned(bj), b1 = simd<T>::load_unaligned(bj + W);
        const simd<T> x0(p0[j]), x1(p0[ldp + j]), x2(p0[2 * ldp + j]), x3(p0[3 * ldp + j]);
        a00 = xsimd::fma(x0, b0, a00); a01 = xsimd::fma(x0, b1, a01);
        a10 = xsimd::fma(x1, b0, a10); a11 = xsimd::fma(x1, b1, a11);
        a20 = xsimd::fma(x2, b0, a20); a21 = xsimd::fma(x2, b1, a21);
        a30 = xsimd::fma(x3, b0, a30); a31 = xsimd::fma(x3, b1, a31);
      }
      a00.store_unaligned(o0 + e); a01.store_unaligned(o0 + e + W);
      a10.store_unaligned(o0 + ldc + e); a11.store_unaligned(o0 + ldc + e + W);
      a20.store_unaligned(o0 + 2 * ldc + e); a21.store_unaligned(o0 + 2 * ldc + e + W);
      a30.store_unaligned(o0 + 3 * ldc + e); a31.store_unaligned(o0 + 3 * ldc + e + W);
    }
    for (; e + W <= n; e += W)
      for (std::size_t rr = 0; rr < 4; ++rr) {
        simd<T> a = simd<T>::load_unaligned(o0 + rr * ldc + e);
        const T* bj = B + e;
        for (std::size_t j = 0; j < nk; ++j, bj += ldb) {
          if (ahead && r == 0 && rr == 0) ahead->step();
          a = xsimd::fma(simd<T>(p0[rr * ldp + j]), simd<T>::load_unaligned(bj), a);
        }
        a.store_unaligned(o0 + rr * ldc + e);
      }
    for (; e < n; ++e)
      for (std::size_t rr = 0; rr < 4; ++rr) {
        T a = o0[rr * ldc + e];
        for (std::size_t j = 0; j < nk; ++j) a = std::fma(p0[rr * ldp + j], B[j * ldb + e], a);
        o0[rr * ldc + e] = a;
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
    const simd<T> e = fast_exp<T>(simd<T>::load_unaligned(x + j) - mv);
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

// Keys [lo, hi) of a key chunk that row vectors [g0, g1) all see some of.
struct segment {
  std::size_t lo, hi, g0, g1;
};

template <class T>
struct scratch {
  // wide kernel: features × rows, keys × rows, value dims × rows, and per-row lanes
  aligned_vector<T> qt, st, ot, m, l, lo, hi, slope, qposf, lanes, stage, wkv;
  // small kernel: rows × features, rows × keys, rows × value dims
  aligned_vector<T> q, s, acc, x;
  std::vector<std::size_t> head, qrow;
  std::vector<std::ptrdiff_t> qpos;
  std::vector<key_range> range;
  std::vector<std::size_t> span, cut;
  std::vector<segment> seg;
  std::vector<const char*> feed;  // wide kernel: line_feed's row starts
  // wide kernel, between wide_begin and wide_end: the tile's feed, rows, keys
  // [t_lo, t_hi) and number of key chunks
  line_feed feed_state;
  std::size_t nr = 0, t_lo = 0, t_hi = 0, chunks = 0;
  void reserve_wide(std::size_t rows, std::size_t bk, std::size_t df, std::size_t dv, std::size_t dmax) {
    const std::size_t nv = rows / simd<T>::size;
    feed.assign(2 * rows + 2 * bk, nullptr);
    span.assign(4 * nv, 0);
    cut.assign(2 * nv + 2, 0);
    seg.assign(2 * nv + 1, segment{});
    qt.assign(df * rows, T(0));
    st.assign(bk * rows, T(0));
    ot.assign(dv * rows, T(0));
    for (auto* v : {&m, &l, &lo, &hi, &slope, &qposf, &wkv}) v->assign(rows, T(0));
    lanes.assign(2 * simd<T>::size, T(0));
    stage.assign(simd<T>::size * df, T(0));
    x.assign(2 * dmax, T(0));
    head.assign(rows, 0);
    qrow.assign(rows, 0);
    qpos.assign(rows, 0);
    range.assign(rows, key_range{0, 0});
  }
  void reserve_small(std::size_t rows, std::size_t bk, std::size_t df, std::size_t dv, std::size_t dmax) {
    q.assign(rows * df, T(0));
    s.assign(rows * bk, T(0));
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

template <class A, class T>
struct kernel {
  using bias_t = typename A::bias_type;
  using norm_t = typename A::norm_type;
  using score_t = typename A::score_type;
  static constexpr bool has_kv = bias_t::has_kv;
  static constexpr bool exp_fast = std::is_base_of_v<norm::exp_family, norm_t>;
  static constexpr bool alibi_fast = std::is_same_v<bias_t, bias::alibi>;
  // Weights that need no row state (elu+1, identity) are formed in the score
  // block's registers as it is stored, saving a pass over Sᵀ; normalize()
  // then only zeroes masked lanes. The sigmoid is not fused: its exponential
  // and reciprocal need more constants than the registers beside a block's
  // accumulators hold. On AVX-512 fusing it spilled accumulators once per
  // block and ran about 2% slower at d = 64 than its own pass over Sᵀ
  // (paired runs, 2026-11-29); on 16-register targets, more.
  static constexpr bool fused = vec_norm<norm_t> && !norm_t::tracks_max && !norm_t::has_denominator &&
                                !score_t::has_post && !bias_t::additive && !std::is_same_v<norm_t, norm::sigmoid>;
  static constexpr std::size_t W = simd<T>::size;

  const A& a;
  tensor4<const T> q, k, v;
  tensor4<T> out;
  row_stats<T> stats;
  problem p;
  std::size_t d, dv, df, group, ni, rows, bk;
  T c;
  bool causal;

  // The score's feature map of one (rotated) q or k row.
  void features(const T* x, T* out) const {
    using phi = typename kernel_phi<score_t>::type;
    if constexpr (!std::is_void_v<phi> && vec_fn<phi>) {
      std::size_t e = 0;
      for (; e + W <= d; e += W) apply_fn<phi, T>(simd<T>::load_unaligned(x + e)).store_unaligned(out + e);
      for (; e < d; ++e) out[e] = phi::value(x[e]);
    } else {
      a.score.map(x, out, d);
    }
  }

  // Row r of a tile at query position i0: its head, position and key range;
  // writes the scaled query features to feat (df) and returns the row's initial (m, l).
  row_init setup_row(scratch<T>& sc, std::size_t b, std::size_t hk, std::size_t i0, std::size_t r, T* feat) const {
    const std::size_t i = i0 + r / group, h = hk * group + r % group;
    sc.head[r] = h;
    sc.qrow[r] = i;
    sc.qpos[r] = mask::detail::qpos(i, p.tq, p.tk);
    sc.range[r] = a.mask.range(b, i, p.tq, p.tk);
    const T* src = q.row(b, h, i);
    if constexpr (!score_t::maps_features) {
      if (!a.pos.rotates()) {  // the features are the query row: scale it in one pass
        const simd<T> cv(c);
        std::size_t e = 0;
        for (; e + W <= d; e += W) (simd<T>::load_unaligned(src + e) * cv).store_unaligned(feat + e);
        for (; e < d; ++e) feat[e] = src[e] * c;
        return a.norm.init(h);
      }
    }
    T* x = sc.x.data();
    std::copy(src, src + d, x);
    a.pos.apply(x, d, sc.qpos[r], 1);
    features(x, feat);
    for (std::size_t e = 0; e < df; ++e) feat[e] *= c;
    return a.norm.init(h);
  }

  // The key/value bias key, seen first by every row, with no mask, positions or
  // additive bias: folds it into (m, l) and returns its weight (times v*).
  T bias_key(const T* feat, const T* kstar, T& m, T& l) const {
    // in vectors: a scalar sum is one dependent add chain of df links per row
    simd<T> acc0(T(0)), acc1(T(0));
    std::size_t e = 0;
    for (; e + 2 * W <= df; e += 2 * W) {
      acc0 = xsimd::fma(simd<T>::load_unaligned(feat + e), simd<T>::load_unaligned(kstar + e), acc0);
      acc1 = xsimd::fma(simd<T>::load_unaligned(feat + e + W), simd<T>::load_unaligned(kstar + e + W), acc1);
    }
    for (; e + W <= df; e += W)
      acc0 = xsimd::fma(simd<T>::load_unaligned(feat + e), simd<T>::load_unaligned(kstar + e), acc0);
    T s = xsimd::hadd(acc0 + acc1);
    for (; e < df; ++e) s += feat[e] * kstar[e];
    s = a.score.post(s);
    if constexpr (norm_t::tracks_max) {
      const T mn = std::max(m, s);
      if (mn != m) l *= math::exp(m - mn);
      m = mn;
    }
    l += a.norm.mass(s, m);
    return a.norm.weight(s, m);
  }

  // ---- wide kernel: rows are SIMD lanes (see the top of this file)

  // Lane r of a wide tile: setup_row's features into feat, the lane's key
  // range and position terms, and (m, l) with the bias key folded in (its
  // weight into wkv).
  void setup_lane(scratch<T>& sc, std::size_t b, std::size_t hk, std::size_t i0, std::size_t r, T* feat,
                  const T* kstar) const {
    const row_init init = setup_row(sc, b, hk, i0, r, feat);
    sc.lo[r] = T(sc.range[r].lo);
    sc.hi[r] = T(sc.range[r].hi);
    if constexpr (alibi_fast) {
      sc.slope[r] = T(a.bias.slope(sc.head[r], p.heads));
      sc.qposf[r] = T(sc.qpos[r]);
    }
    T m = T(init.m), l = T(init.l);
    if constexpr (has_kv) sc.wkv[r] = bias_key(feat, kstar, m, l);
    (void)kstar;
    sc.m[r] = m;
    sc.l[r] = l;
  }

  // W staged rows of df features → W adjacent columns of Qᵀ (stride R).
  void stage_to_columns(const T* stage, T* qcol, std::size_t R) const {
    std::size_t e0 = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float> && W == 16)
      for (; e0 + 16 <= df; e0 += 16) {
        __m512 x[16];
        for (std::size_t i = 0; i < 16; ++i) x[i] = _mm512_loadu_ps(stage + i * df + e0);
        transpose16(x);
        for (std::size_t i = 0; i < 16; ++i) _mm512_store_ps(qcol + (e0 + i) * R, x[i]);
      }
#endif
    for (std::size_t e = e0; e < df; ++e)
      for (std::size_t i = 0; i < W; ++i) qcol[e * R + i] = stage[i * df + e];
  }

  // Rows [r0, r0 + W) of Oᵀ, each times its finish factor, into the output.
  void columns_to_rows(scratch<T>& sc, std::size_t b, std::size_t r0, const T* ot, std::size_t R) const {
    alignas(64) T f[W];
    T* o[W];
    for (std::size_t i = 0; i < W; ++i) {
      const std::size_t r = r0 + i;
      f[i] = a.norm.finish(sc.m[r], sc.l[r]);
      o[i] = out.row(b, sc.head[r], sc.qrow[r]);
      write_stats(sc, b, r);
    }
    std::size_t e0 = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float> && W == 16)
      for (; e0 + 16 <= dv; e0 += 16) {
        __m512 x[16];
        for (std::size_t i = 0; i < 16; ++i) x[i] = _mm512_load_ps(ot + (e0 + i) * R + r0);
        transpose16(x);
        for (std::size_t i = 0; i < 16; ++i) _mm512_storeu_ps(o[i] + e0, _mm512_mul_ps(x[i], _mm512_set1_ps(f[i])));
      }
#endif
    for (std::size_t i = 0; i < W; ++i)
      for (std::size_t e = e0; e < dv; ++e) o[i][e] = ot[e * R + r0 + i] * f[i];
  }
  // The line feed of the tile at (b, hk, i0) with nr rows, nv row vectors and
  // keys [t_lo, t_hi): for the tile the driver runs next on this thread (the
  // one before in position, else the next pair's last), its query rows and,
  // in the same pair, the rows of its first key chunk that lie below t_lo;
  // then this tile's output rows. Paced to end about when the tile's products do.
  // (In a group of tiles run side by side, the one before in position is
  // mostly begun already; its query rows are then asked for again, cheaply.)
  // The key and value rows only when one pair's keys and values fill L2
  // (else they are mostly still cached from the tiles before, and the
  // requests cost more than they save); the query and output rows always
  // (each is read or written once per call).
  line_feed make_feed(scratch<T>& sc, std::size_t b, std::size_t hk, std::size_t i0, std::size_t nr, std::size_t nv,
                      std::size_t t_lo, std::size_t t_hi, const T* keys, std::size_t kstride) const {
    line_feed f;
    const bool reads = p.tk * (df + dv) * sizeof(T) >= l2_bytes();
    const char** row = sc.feed.data();
    std::size_t at = 0;
    auto lines = [](const void* x, std::size_t n, std::size_t stride) {
      // whole lines from x's line on; one more when rows do not start on a line
      const bool aligned = reinterpret_cast<std::uintptr_t>(x) % 64 == 0 && stride * sizeof(T) % 64 == 0;
      return (n * sizeof(T) + 63) / 64 + (aligned ? 0 : 1);
    };
    auto line_of = [](const T* x) {
      return reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(x) / 64 * 64);
    };
    std::size_t nb = b, nh = hk, n0 = 0;
    bool next = true;
    if (i0 >= ni) {
      n0 = i0 - ni;
    } else {
      if (++nh == p.kv_heads) {
        nh = 0;
        ++nb;
      }
      next = nb < p.batch;
      n0 = (p.tq - 1) / ni * ni;
    }
    const std::size_t n1 = std::min(n0 + ni, p.tq);
    if (next) {
      const std::size_t rows_next = (n1 - n0) * group;
      for (std::size_t r = 0; r < rows_next; ++r) row[at++] = line_of(q.row(nb, nh * group + r % group, n0 + r / group));
      f.add(rows_next, lines(q.row(nb, nh * group, n0), d, q.stride_t));
    }
    if (next && reads) {
      const key_range first = a.mask.range(nb, n0, p.tq, p.tk), last = a.mask.range(nb, n1 - 1, p.tq, p.tk);
      const std::size_t k0 = first.lo, k1 = std::min({last.hi, t_lo, k0 + bk});
      if (nb == b && nh == hk && k0 < k1) {
        for (std::size_t j = k0; j < k1; ++j) row[at++] = line_of(keys + j * kstride);
        f.add(k1 - k0, lines(keys + k0 * kstride, df, kstride));
        for (std::size_t j = k0; j < k1; ++j) row[at++] = line_of(v.row(b, hk, j));
        f.add(k1 - k0, lines(v.row(b, hk, k0), dv, v.stride_t));
      }
    }
    f.nread = at ? std::size_t(std::count_if(f.n, f.n + line_feed::groups, [](std::size_t x) { return x > 0; })) : 0;
    for (std::size_t r = 0; r < nr; ++r) row[at++] = line_of(out.row(b, sc.head[r], sc.qrow[r]));
    f.add(nr, lines(out.row(b, sc.head[0], sc.qrow[0]), dv, out.stride_t));
    f.row = row;
    // gemm_fwd's blocks per chunk (its rows per block: 8 below NV vectors on
    // 32-register targets); the band edges' thin segments add more, so the
    // feed ends early rather than late.
    constexpr std::size_t NV = blocking<T>::NV;
    const std::size_t mr = blocking<T>::MR == 6 && nv < NV ? 8 : blocking<T>::MR;
    const std::size_t nchunks = t_hi > t_lo ? (t_hi - t_lo + bk - 1) / bk : 0;
    const std::size_t blocks = nchunks * ((bk + mr - 1) / mr + (dv + mr - 1) / mr) * ((nv + NV - 1) / NV);
    std::size_t total = 0;
    for (std::size_t u = 0; u < line_feed::groups; ++u) total += f.n[u] * f.lines[u];
    f.per = blocks ? std::max<std::size_t>(1, (total + blocks - 1) / blocks) : 0;
    return f;
  }

  // A wide tile runs in three steps, so that a task can interleave several
  // tiles of one (batch, kv head) over the same keys (see forward()):
  // wide_begin (Qᵀ, row state, key spans, line feed), wide_chunks over a range
  // of its key chunks (any number of calls, in order), wide_end (output).
  // Chunk c covers keys [t_lo + c·bk, ...), so the chunks and every result
  // are the same however the calls split them.
  void wide_tile(scratch<T>& sc, std::size_t b, std::size_t hk, std::size_t i0, const T* keys, std::size_t kstride,
                 const T* kstar) const {
    wide_begin(sc, b, hk, i0, keys, kstride, kstar);
    wide_chunks(sc, b, hk, keys, kstride, 0, sc.chunks);
    wide_end(sc, b);
  }

  void wide_begin(scratch<T>& sc, std::size_t b, std::size_t hk, std::size_t i0, const T* keys, std::size_t kstride,
                  const T* kstar) const {
    const std::size_t R = rows;  // lanes per tile, a multiple of W
    const std::size_t i1 = std::min(i0 + ni, p.tq), nr = (i1 - i0) * group, nv = (nr + W - 1) / W;
    T *qt = sc.qt.data(), *ot = sc.ot.data();
    std::fill(ot, ot + dv * R, T(0));
    // Each row's query features go to row r % W of the stage; a full stage
    // (W rows) is transposed into Qᵀ's columns.
    T* const stage = sc.stage.data();
    for (std::size_t r = 0; r < R; ++r) {
      T* feat = stage + (r % W) * df;
      if (r >= nr) {  // padding lanes: zero queries, an empty key range
        std::fill(feat, feat + df, T(0));
        sc.m[r] = sc.l[r] = sc.lo[r] = sc.hi[r] = sc.slope[r] = sc.qposf[r] = sc.wkv[r] = T(0);
        sc.range[r] = {0, 0};
      } else {
        setup_lane(sc, b, hk, i0, r, feat, kstar);
      }
      if (r % W == W - 1) stage_to_columns(stage, qt + (r + 1 - W), R);
    }
    if constexpr (has_kv) {
      // the bias key's value: Oᵀ starts as v* ⊗ (its weight per row)
      for (std::size_t e = 0; e < dv; ++e) {
        const simd<T> vs(T(a.bias.vstar(hk, e, dv)));
        for (std::size_t g = 0; g < R; g += W)
          (simd<T>::load_aligned(sc.wkv.data() + g) * vs).store_aligned(ot + e * R + g);
      }
    }
    // Per row vector g: the keys any of its rows sees [span_lo, span_hi), and
    // the keys all of them see [full_lo, full_hi) (empty when it holds padding).
    std::size_t *span_lo = sc.span.data(), *span_hi = span_lo + nv, *full_lo = span_hi + nv, *full_hi = full_lo + nv;
    const std::size_t nvc = nv;
    for (std::size_t g = 0; g < nvc; ++g) {
      const std::size_t r0 = g * W, r1 = std::min(nr, r0 + W) - 1;
      span_lo[g] = sc.range[r0].lo;
      span_hi[g] = std::max(sc.range[r1].hi, span_lo[g]);
      const bool whole = r1 - r0 + 1 == W;
      full_lo[g] = whole ? sc.range[r1].lo : 1;
      full_hi[g] = whole ? sc.range[r0].hi : 0;
    }
    const std::size_t t_lo = span_lo[0], t_hi = span_hi[nvc - 1];
    sc.feed_state = make_feed(sc, b, hk, i0, nr, nv, t_lo, t_hi, keys, kstride);
    sc.nr = nr;
    sc.t_lo = t_lo;
    sc.t_hi = t_hi;
    sc.chunks = t_hi > t_lo ? (t_hi - t_lo + bk - 1) / bk : 0;
  }

  // Key chunks [c0, c1) of the tile begun in sc (clamped to its chunks).
  void wide_chunks(scratch<T>& sc, std::size_t b, std::size_t hk, const T* keys, std::size_t kstride, std::size_t c0,
                   std::size_t c1) const {
    const std::size_t R = rows, nvc = (sc.nr + W - 1) / W, t_hi = sc.t_hi;
    T *qt = sc.qt.data(), *st = sc.st.data(), *ot = sc.ot.data();
    const std::size_t *span_lo = sc.span.data(), *span_hi = span_lo + nvc, *full_lo = span_hi + nvc,
                      *full_hi = full_lo + nvc;
    const feed_step between{&sc.feed_state};
    std::size_t* cut = sc.cut.data();
    segment* seg = sc.seg.data();
    for (std::size_t j0 = sc.t_lo + std::min(c0, sc.chunks) * bk, je = sc.t_lo + std::min(c1, sc.chunks) * bk;
         j0 < std::min(je, t_hi); j0 += bk) {
      const std::size_t j1 = std::min(j0 + bk, t_hi);
      // Cut [j0, j1) where the set of row vectors that see a key changes.
      std::size_t nc = 0;
      cut[nc++] = j0;
      cut[nc++] = j1;
      for (std::size_t g = 0; g < nvc; ++g) {
        if (span_lo[g] > j0 && span_lo[g] < j1) cut[nc++] = span_lo[g];
        if (span_hi[g] > j0 && span_hi[g] < j1) cut[nc++] = span_hi[g];
      }
      std::sort(cut, cut + nc);
      std::size_t ns = 0;
      for (std::size_t u = 0; u + 1 < nc; ++u) {
        const std::size_t lo = cut[u], hi = cut[u + 1];
        if (lo == hi) continue;
        std::size_t g0 = nvc, g1 = 0;  // masks are monotone, so the active vectors are contiguous
        for (std::size_t g = 0; g < nvc; ++g)
          if (span_lo[g] <= lo && span_hi[g] >= hi) {
            g0 = std::min(g0, g);
            g1 = g + 1;
          }
        if (g0 < g1) seg[ns++] = {lo, hi, g0, g1};
      }
      if (ns == 0) continue;
      for (std::size_t u = 0; u < ns; ++u) {
        const segment& sg = seg[u];
        T* sout = st + (sg.lo - j0) * R + sg.g0 * W;
        const T* kin = keys + sg.lo * kstride;
        if constexpr (fused) {
          const auto weigh = [this](const simd<T>& x) {
            simd<T> w, unused;
            norm_vec(a.norm, x, x, w, unused);
            return w;
          };
          gemm_fwd<false>(sg.hi - sg.lo, sg.g1 - sg.g0, kin, kstride, 1, qt + sg.g0 * W, R, df, sout, R, weigh,
                          between);
        } else {
          gemm_fwd<false>(sg.hi - sg.lo, sg.g1 - sg.g0, kin, kstride, 1, qt + sg.g0 * W, R, df, sout, R,
                          no_epilogue{}, between);
        }
      }
      for (std::size_t g = 0; g < nvc; ++g) {
        const std::size_t ja = std::max(j0, span_lo[g]), jb = std::min(j1, span_hi[g]);
        if (ja < jb) normalize(sc, b, g, ja, jb, j0, full_lo[g], full_hi[g]);
      }
      for (std::size_t u = 0; u < ns; ++u) {
        const segment& sg = seg[u];
        gemm_fwd<true>(dv, sg.g1 - sg.g0, v.row(b, hk, sg.lo), 1, v.stride_t, st + (sg.lo - j0) * R + sg.g0 * W, R,
                       sg.hi - sg.lo, ot + sg.g0 * W, R, no_epilogue{}, between);
      }
    }
  }

  void wide_end(scratch<T>& sc, std::size_t b) const {
    const std::size_t R = rows, nr = sc.nr;
    const T* ot = sc.ot.data();
    std::size_t r = 0;
    for (; r + W <= nr; r += W) columns_to_rows(sc, b, r, ot, R);
    for (; r < nr; ++r) {
      const T f = a.norm.finish(sc.m[r], sc.l[r]);
      T* o = out.row(b, sc.head[r], sc.qrow[r]);
      for (std::size_t e = 0; e < dv; ++e) o[e] = ot[e * R + r] * f;
      write_stats(sc, b, r);
    }
  }

  // Turns the scores of row vector g, keys [ja, jb) of the chunk starting at
  // j0, into weights in place, and folds them into the vector's (m, l).
  void normalize(scratch<T>& sc, std::size_t b, std::size_t g, std::size_t ja, std::size_t jb, std::size_t j0,
                 std::size_t full_lo, std::size_t full_hi) const {
    using V = simd<T>;
    const std::size_t R = rows, o = g * W;
    T* s0 = sc.st.data() + o;
    const V lo = V::load_aligned(sc.lo.data() + o), hi = V::load_aligned(sc.hi.data() + o);
    // Positions compare exactly in T (float: up to 2^24 tokens).
    auto visible = [&](std::size_t j) {
      const V jv = V(T(j));
      return (jv >= lo) & (jv < hi);
    };
    if constexpr (score_t::has_post || bias_t::additive) {
      const V slope = V::load_aligned(sc.slope.data() + o), qp = V::load_aligned(sc.qposf.data() + o);
      T* buf = sc.lanes.data();
      for (std::size_t j = ja; j < jb; ++j) {
        T* sj = s0 + (j - j0) * R;
        if constexpr (score_t::has_post)
          for (std::size_t w = 0; w < W; ++w) sj[w] = a.score.post(sj[w]);
        if constexpr (alibi_fast) {
          // -m_h (i - j) with i - j exact in T, as the scalar policy rounds it
          V s = V::load_aligned(sj);
          s = xsimd::fma(slope, V(T(j)) - qp, s);
          s.store_aligned(sj);
        } else if constexpr (bias_t::additive) {
          (void)buf;
          for (std::size_t w = 0; w < W; ++w) {
            const std::size_t r = o + w;
            if (sc.range[r].lo >= sc.range[r].hi) continue;
            sj[w] += T(a.bias.value(
                site{b, sc.head[r], p.heads, sc.qpos[r], std::ptrdiff_t(j), sc.qrow[r], p.tq, p.tk, causal}));
          }
        }
      }
    }
    V m = V::load_aligned(sc.m.data() + o), l = V::load_aligned(sc.l.data() + o);
    // Every row of the vector sees keys [u0, u1) (masks are monotone); the
    // keys before and after are masked lane by lane (under a window every
    // vector's row has such ends). The middle runs on independent chains
    // (max: 4, sum: 2), since one chain per key would wait on the last one.
    const std::size_t u0 = std::clamp(full_lo, ja, jb), u1 = std::max(u0, std::min(full_hi, jb));
    auto load = [&](std::size_t j) { return V::load_aligned(s0 + (j - j0) * R); };
    if constexpr (norm_t::tracks_max) {
      const V ninf(math::neg_inf<T>());
      V mx = ninf, mx1 = ninf, mx2 = ninf, mx3 = ninf;
      for (std::size_t j = ja; j < u0; ++j) mx = xsimd::max(mx, xsimd::select(visible(j), load(j), ninf));
      for (std::size_t j = u1; j < jb; ++j) mx1 = xsimd::max(mx1, xsimd::select(visible(j), load(j), ninf));
      std::size_t j = u0;
      for (; j + 4 <= u1; j += 4) {
        mx = xsimd::max(mx, load(j));
        mx1 = xsimd::max(mx1, load(j + 1));
        mx2 = xsimd::max(mx2, load(j + 2));
        mx3 = xsimd::max(mx3, load(j + 3));
      }
      for (; j < u1; ++j) mx2 = xsimd::max(mx2, load(j));
      mx = xsimd::max(xsimd::max(mx, mx1), xsimd::max(mx2, mx3));
      const V mn = xsimd::max(m, mx);
      // both -inf (nothing seen yet): keep the factor 1 rather than NaN
      const V f = xsimd::select(mn == ninf, V(T(1)), xsimd::exp(m - mn));
      // rows that have seen nothing yet (m = -inf) hold no output to rescale
      if (xsimd::any(f != V(T(1))) && !xsimd::all(m == ninf)) {
        l *= f;
        T* oc = sc.ot.data() + o;
        for (std::size_t e = 0; e < dv; ++e) (V::load_aligned(oc + e * R) * f).store_aligned(oc + e * R);
      }
      m = mn;
      m.store_aligned(sc.m.data() + o);
    }
    const V zero(T(0));
    if constexpr (fused) {
      auto edge = [&](std::size_t j) { xsimd::select(visible(j), load(j), zero).store_aligned(s0 + (j - j0) * R); };
      for (std::size_t j = ja; j < u0; ++j) edge(j);
      for (std::size_t j = u1; j < jb; ++j) edge(j);
      return;
    }
    // Key j's weights in place, its masses into acc.
    auto weigh = [&](std::size_t j, bool edge, V& acc) {
      T* sj = s0 + (j - j0) * R;
      const V s = V::load_aligned(sj);
      V w, ms = zero;
      if constexpr (vec_norm<norm_t>) {
        norm_vec(a.norm, s, m, w, ms);
      } else {
        alignas(64) T wb[W], mb[W], mm[W];
        m.store_aligned(mm);
        for (std::size_t u = 0; u < W; ++u) {
          wb[u] = a.norm.weight(sj[u], mm[u]);
          mb[u] = norm_t::has_denominator ? a.norm.mass(sj[u], mm[u]) : T(0);
        }
        w = V::load_aligned(wb);
        ms = V::load_aligned(mb);
      }
      if (edge) {
        const auto vis = visible(j);
        w = xsimd::select(vis, w, zero);
        if constexpr (norm_t::has_denominator) ms = xsimd::select(vis, ms, zero);
      }
      w.store_aligned(sj);
      if constexpr (norm_t::has_denominator) acc += ms;
    };
    V sum(T(0)), sum1(T(0));
    for (std::size_t j = ja; j < u0; ++j) weigh(j, true, sum);
    std::size_t j = u0;
    for (; j + 2 <= u1; j += 2) {
      weigh(j, false, sum);
      weigh(j + 1, false, sum1);
    }
    for (; j < u1; ++j) weigh(j, false, sum);
    for (j = u1; j < jb; ++j) weigh(j, true, sum1);
    if constexpr (norm_t::has_denominator) (l + (sum + sum1)).store_aligned(sc.l.data() + o);
  }

  void put_stats(std::size_t b, std::size_t h, std::size_t i, T m, T l) const {
    const std::size_t row = (b * p.heads + h) * p.tq + i;
    if (stats.max) stats.max[row] = m;
    if (stats.sum) stats.sum[row] = l;
  }
  void write_stats(const scratch<T>& sc, std::size_t b, std::size_t r) const {
    put_stats(b, sc.head[r], sc.qrow[r], sc.m[r], sc.l[r]);
  }
  // Output row (b, h, i) = acc · finish(m, l), and its (m, l).
  void finish_row(std::size_t b, std::size_t h, std::size_t i, T m, T l, const T* acc) const {
    const T f = a.norm.finish(m, l);
    T* o = out.row(b, h, i);
    for (std::size_t e = 0; e < dv; ++e) o[e] = acc[e] * f;
    put_stats(b, h, i, m, l);
  }

  // ---- small kernel: rows row-major (decode, tiles thinner than a vector)
  // Keys [ka, kb) only (whole key tiles; all keys: 0, tk). With `part`, the
  // rows' states are left there unfinished, (m, l, acc) per row; `first` is
  // the part that starts from the norm's initial state and the bias key, the
  // others start from (init m, 0).
  void small_tile(scratch<T>& sc, std::size_t b, std::size_t hk, std::size_t i0, const T* keys, std::size_t kstride,
                  const T* kstar, std::size_t ka, std::size_t kb, T* part = nullptr, bool first = true) const {
    const std::size_t i1 = std::min(i0 + ni, p.tq);
    const std::size_t nr = (i1 - i0) * group, nrp = (nr + 3) / 4 * 4;
    for (std::size_t r = 0; r < nrp; ++r) {
      T* qr = sc.q.data() + r * df;
      T* ar = sc.acc.data() + r * dv;
      std::fill(ar, ar + dv, T(0));
      if (r >= nr) {
        std::fill(qr, qr + df, T(0));
        sc.m[r] = sc.l[r] = T(0);
        sc.range[r] = {0, 0};
        continue;
      }
      const row_init init = setup_row(sc, b, hk, i0, r, qr);
      T m = T(init.m), l = first ? T(init.l) : T(0);
      if constexpr (has_kv) {
        if (first) {
          const T w = bias_key(qr, kstar, m, l);
          for (std::size_t e = 0; e < dv; ++e) ar[e] = w * T(a.bias.vstar(hk, e, dv));
        }
      }
      sc.m[r] = m;
      sc.l[r] = l;
      key_range& kr = sc.range[r];
      kr.lo = std::clamp(kr.lo, ka, kb);
      kr.hi = std::clamp(kr.hi, kr.lo, kb);
    }
    const key_range lo_row = sc.range[0], hi_row = sc.range[nr - 1];
    if (hi_row.hi > lo_row.lo) {
      read_ahead<T> ahead;
      for (std::size_t j0 = lo_row.lo / bk * bk; j0 < hi_row.hi; j0 += bk) {
        const std::size_t nk = std::min(bk, p.tk - j0);
        const tile_visibility vis = classify(a.mask, b, i0, i1, j0, j0 + nk, p.tq, p.tk);
        if (vis == tile_visibility::skip) continue;
        // Decode streams K and V once with little work per byte: the next
        // tile's rows are requested while this one's products run.
        if (const std::size_t j2 = j0 + bk; j2 < hi_row.hi)
          ahead.tile(keys + j2 * kstride, kstride, df, v.row(b, hk, j2), v.stride_t, dv, std::min(bk, hi_row.hi - j2), nk);
        else
          ahead.tile(nullptr, 0, df, nullptr, 0, dv, 0, nk);
        dots(sc.q.data(), df, nrp, keys + j0 * kstride, kstride, nk, sc.s.data(), bk, &ahead);
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
                s[jj] += T(a.bias.value(site{b, sc.head[r], p.heads, sc.qpos[r], std::ptrdiff_t(j0 + jj),
                                             sc.qrow[r], p.tq, p.tk, causal}));
            }
          update(sc, r, s, c0, c1, nk);
        }
        gemm_acc(sc.s.data(), bk, v.row(b, hk, j0), v.stride_t, nk, sc.acc.data(), dv, nrp, dv, &ahead);
      }
    }
    if (part) {
      for (std::size_t r = 0; r < nr; ++r) {
        T* x = part + r * (dv + 2);
        x[0] = sc.m[r];
        x[1] = sc.l[r];
        std::copy(sc.acc.data() + r * dv, sc.acc.data() + (r + 1) * dv, x + 2);
      }
      return;
    }
    for (std::size_t r = 0; r < nr; ++r)
      finish_row(b, sc.head[r], sc.qrow[r], sc.m[r], sc.l[r], sc.acc.data() + r * dv);
  }

  // The rows of small tile (b, hk, i0) from its `parts` unfinished states
  // (small_tile's `part` layout, one after another): the largest m, the
  // others' l and acc rescaled to it by e^{m_s - m} (tracks_max only), then
  // finish_row as in small_tile.
  void merge_parts(std::size_t b, std::size_t hk, std::size_t i0, const T* part, std::size_t parts,
                   std::size_t stride, T* acc) const {
    const std::size_t nr = (std::min(i0 + ni, p.tq) - i0) * group;
    for (std::size_t r = 0; r < nr; ++r) {
      T m = part[r * (dv + 2)];
      if constexpr (norm_t::tracks_max)
        for (std::size_t s = 1; s < parts; ++s) m = std::max(m, part[s * stride + r * (dv + 2)]);
      T l = T(0);
      std::fill(acc, acc + dv, T(0));
      for (std::size_t s = 0; s < parts; ++s) {
        const T* x = part + s * stride + r * (dv + 2);
        T f = T(1);
        if constexpr (norm_t::tracks_max) f = x[0] == m ? T(1) : T(math::exp(x[0] - m));
        l += f * x[1];
        for (std::size_t e = 0; e < dv; ++e) acc[e] += f * x[2 + e];
      }
      finish_row(b, hk * group + r % group, i0 + r / group, m, l, acc);
    }
  }

  // Folds the visible scores s[c0, c1) of row r into its state; leaves the
  // weights in s (zero outside [c0, c1), up to n).
  void update(scratch<T>& sc, std::size_t r, T* s, std::size_t c0, std::size_t c1, std::size_t n) const {
    std::fill(s, s + c0, T(0));
    std::fill(s + c1, s + n, T(0));
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
  std::size_t bk = std::max<std::size_t>(1, opt.key_tile);
  // Tiles thinner than one vector of rows (decode) go to the row-major kernel.
  const bool wide = p.tq * group >= W;
  std::size_t ni, rows, tiles_per_task = 1, span_chunks = 1;
  if (wide) {
    std::size_t want = std::max(W, (opt.query_tile + W - 1) / W * W);
    // Under a band (no row of any batch sees more than `band` < tk keys, as
    // under a sliding window), each vector of rows joins and leaves the band
    // 16 keys after the one before, in thin segments that run the small
    // blocks; a tile of n vectors spends about (n - 1)·W of each vector's
    // band + W keys there. At most band / (8·W) vectors (at least one) keep
    // that near 1/8. On 32-register targets a tile has at least 3 vectors
    // where the band holds 6 (band / (2·W), up to 3): the band's middle then
    // runs 8 × 3 blocks (24 accumulators, 11 loads per 24 FMAs) rather than
    // 8 × 2 (16, 10 per 16). Paired runs, window 256 ÷ causal softmax, 2
    // threads (AVX-512, 2026-12-06, Intel Xeon VM): 3 vectors against 2,
    // +3-14% at T = 512-4096, d = 64 and 128; window 128, 3 against 1:
    // +17-19%. (On an AMD EPYC VM, 2026-12-05, 3 against 2 was -1.3% at
    // window 256, T = 4096, d = 64.) One scan of every row's key range
    // (O(batch · rows) mask lookups) gives the band and the rows' visible
    // keys, used below.
    std::size_t band = 0, visible = 0;
    for (std::size_t b = 0; b < p.batch; ++b)
      for (std::size_t i = 0; i < p.tq; ++i) {
        const key_range r = a.mask.range(b, i, p.tq, p.tk);
        band = std::max(band, r.hi - r.lo);
        visible += r.hi - r.lo;
      }
    if (band < p.tk) {
      std::size_t n = band / (8 * W);
      if constexpr (cpu_detail::blocking<T>::MR == 6) n = std::max(n, std::min<std::size_t>(3, band / (2 * W)));
      want = std::min(want, std::max<std::size_t>(1, n) * W);
    }
    ni = std::max<std::size_t>(1, std::min(p.tq, want / group));
    rows = (ni * group + W - 1) / W * W;
    // Under a band, one key chunk covers a whole tile's keys (band + ni - 1
    // for a window: the band edges are then cut once, not in every chunk,
    // and the row state is rescaled once), up to 2048 keys per chunk.
    // Paired runs, window 256 (AVX-512, 2 threads, 2026-12-05): 288-key
    // chunks against 64, T = 4096 +5-7%, T = 1024 +3-6%; window 1024, +2-4%.
    if (band < p.tk) {
      const std::size_t span = (band + ni - 1 + W - 1) / W * W;
      if (span <= 2048) bk = std::max(bk, span);
    }
    // Tiles per task: when the keys and values a tile streams (its rows'
    // mean visible keys) fill a core's L2 and no band limits the rows' keys,
    // a task runs 4 tiles of one pair side by side over each span of 256
    // keys, so those keys come from L3 once per 4 tiles instead of once per
    // tile. Paired runs (2 threads, AVX-512, 2026-11-29), 4 tiles against 1:
    // 4 MiB per pair (T = 4096, d = 128) +6% unmasked, +5% causal (2 MiB on
    // average); 2 MiB unmasked (T = 2048, d = 128; T = 4096, d = 64) +2-4%;
    // 1 MiB on average (the same two causal) level to -1.4%.
    const bool big =
        band >= p.tk && visible / (p.batch * p.tq) * (df + dv) * sizeof(T) >= cpu_detail::l2_bytes();
    tiles_per_task = opt.tile_group ? opt.tile_group : big ? 4 : 1;
    span_chunks = std::max<std::size_t>(1, (opt.group_keys ? opt.group_keys : 256) / bk);
  } else {
    ni = std::max<std::size_t>(1, std::min(p.tq, opt.query_tile / group));
    rows = (ni * group + 3) / 4 * 4;
  }
  K kern{a, q, k, v, out, stats, p, d, dv, df, group, ni, rows, bk, T(a.score.scale(d)), a.mask.is_causal()};

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
  const std::size_t G = std::min(tiles_per_task, qtiles), groups = (qtiles + G - 1) / G;
  // Decode's key parts (see backend::cpu::key_splits), in whole key tiles.
  const std::size_t ktiles = (p.tk + bk - 1) / bk;
  std::size_t parts = 1;
  if (!wide) {
    const std::size_t tasks = pairs * qtiles, want = 2 * std::size_t(tbb::this_task_arena::max_concurrency());
    parts = opt.key_splits ? opt.key_splits
            : tasks >= want ? 1
                            : std::min((want + tasks - 1) / tasks, std::max<std::size_t>(1, p.tk / 1024));
    parts = std::max<std::size_t>(1, std::min(parts, ktiles));
  }
  const std::size_t part_stride = rows * (dv + 2);
  cpu_detail::aligned_vector<T> part_buf(parts > 1 ? std::min(chunk, pairs) * groups * parts * part_stride : 0);
  tbb::enumerable_thread_specific<std::vector<cpu_detail::scratch<T>>> scratch([&] {
    std::vector<cpu_detail::scratch<T>> s(G);
    for (auto& x : s)
      if (wide) x.reserve_wide(rows, bk, df, dv, std::max(d, df));
      else x.reserve_small(rows, bk, df, dv, std::max(d, df));
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
          kern.features(x.data(), kbuf.data() + idx * df);
        }
      });
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, (c1 - c0) * groups * parts, 1), [&](const auto& rg) {
      auto& sc = scratch.local();
      for (std::size_t t = rg.begin(); t != rg.end(); ++t) {
        // Last query tiles first: under a causal mask they see the most keys,
        // and starting the longest tasks first keeps the threads' ends even.
        const std::size_t task = t / parts, sp = t % parts;
        const std::size_t pr = c0 + task / groups, grp = groups - 1 - task % groups;
        const std::size_t b = pr / p.kv_heads, hk = pr % p.kv_heads;
        const T* keys = prep ? kbuf.data() + (pr - c0) * per_pair : k.row(b, hk, 0);
        const std::size_t kstride = prep ? df : k.stride_t;
        const T* ks = K::has_kv ? kstar.data() + pr * df : nullptr;
        const std::size_t q0 = grp * G, n = std::min(G, qtiles - q0);
        if (!wide) {
          // Part sp of parts (the whole key range when parts == 1).
          const std::size_t ka = std::min(p.tk, ktiles * sp / parts * bk);
          const std::size_t kb = std::min(p.tk, ktiles * (sp + 1) / parts * bk);
          kern.small_tile(sc[0], b, hk, q0 * ni, keys, kstride, ks, ka, kb,
                          parts > 1 ? part_buf.data() + t * part_stride : nullptr, sp == 0);
        } else if (n == 1) {
          kern.wide_tile(sc[0], b, hk, q0 * ni, keys, kstride, ks);
        } else {
          // Tiles last-first, each over the same span of chunks in turn.
          std::size_t most = 0;
          for (std::size_t u = 0; u < n; ++u) {
            kern.wide_begin(sc[u], b, hk, (q0 + n - 1 - u) * ni, keys, kstride, ks);
            most = std::max(most, sc[u].chunks);
          }
          for (std::size_t s0 = 0; s0 < most; s0 += span_chunks)
            for (std::size_t u = 0; u < n; ++u) kern.wide_chunks(sc[u], b, hk, keys, kstride, s0, s0 + span_chunks);
          for (std::size_t u = 0; u < n; ++u) kern.wide_end(sc[u], b);
        }
      }
    });
    if (parts > 1)
      tbb::parallel_for(tbb::blocked_range<std::size_t>(0, (c1 - c0) * groups, 1), [&](const auto& rg) {
        std::vector<T> acc(dv);
        for (std::size_t task = rg.begin(); task != rg.end(); ++task) {
          const std::size_t pr = c0 + task / groups, grp = groups - 1 - task % groups;
          kern.merge_parts(pr / p.kv_heads, pr % p.kv_heads, grp * ni, part_buf.data() + task * parts * part_stride,
                           parts, part_stride, acc.data());
        }
      });
  }
}

namespace cpu_detail {
// A contiguous double copy of a (possibly strided) float tensor, in buf.
inline tensor4<const double> widen(const tensor4<const float>& x, std::vector<double>& buf) {
  buf.resize(x.size());
  std::size_t n = 0;
  for (std::size_t b = 0; b < x.batch; ++b)
    for (std::size_t h = 0; h < x.heads; ++h)
      for (std::size_t t = 0; t < x.tokens; ++t) {
        const float* r = x.row(b, h, t);
        for (std::size_t e = 0; e < x.dim; ++e) buf[n++] = r[e];
      }
  return {buf.data(), x.batch, x.heads, x.tokens, x.dim};
}
// Writes a contiguous double buffer back into a (possibly strided) float tensor.
inline void narrow(const std::vector<double>& buf, const tensor4<float>& x) {
  std::size_t n = 0;
  for (std::size_t b = 0; b < x.batch; ++b)
    for (std::size_t h = 0; h < x.heads; ++h)
      for (std::size_t t = 0; t < x.tokens; ++t) {
        float* r = x.row(b, h, t);
        for (std::size_t e = 0; e < x.dim; ++e) r[e] = float(buf[n++]);
      }
}

template <class A>
void forward_in_double(const backend::cpu& opt, const A& a, tensor4<const float> q, tensor4<const float> k,
                       tensor4<const float> v, tensor4<float> out, row_stats<float> stats) {
  std::vector<double> qd, kd, vd, od(out.size());
  std::vector<double> md(stats.max ? q.batch * q.heads * q.tokens : 0), ld(stats.sum ? q.batch * q.heads * q.tokens : 0);
  forward(opt, a, widen(q, qd), widen(k, kd), widen(v, vd), tensor4<double>(od.data(), out.batch, out.heads, out.tokens, out.dim),
          row_stats<double>{stats.max ? md.data() : nullptr, stats.sum ? ld.data() : nullptr});
  narrow(od, out);
  for (std::size_t i = 0; i < md.size(); ++i) stats.max[i] = float(md[i]);
  for (std::size_t i = 0; i < ld.size(); ++i) stats.sum[i] = float(ld[i]);
}
}  // namespace cpu_detail

}  // namespace attnsink
