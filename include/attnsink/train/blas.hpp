// attnsink/train/blas.hpp — dense matrix products through CBLAS (OpenBLAS on
// Debian), for float and double, row-major.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include <tbb/parallel_for.h>

extern "C" {
#include <cblas.h>
}

namespace attnsink::train {

// C (m×n) = alpha · op(A) · op(B) + beta · C, row-major; op(X) = Xᵀ when trans_x.
inline void gemm(bool ta, bool tb, std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a,
                 std::size_t lda, const float* b, std::size_t ldb, float beta, float* c, std::size_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}
inline void gemm(bool ta, bool tb, std::size_t m, std::size_t n, std::size_t k, double alpha, const double* a,
                 std::size_t lda, const double* b, std::size_t ldb, double beta, double* c, std::size_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// The products below cut their work into blocks of a fixed size, run
// single-threaded BLAS on each block (call openblas_set_num_threads(1)) and
// spread the blocks over TBB's threads: one thread pool for the whole step,
// instead of OpenBLAS's spinning threads fighting TBB's for the same cores.
// Block boundaries depend only on the shapes, never on the thread count, so
// results are the same whatever the number of threads.
inline constexpr std::size_t row_block = 512;   // rows of x per block in y = x·W and dx = dy·Wᵀ
inline constexpr std::size_t token_chunk = 1024;  // tokens per partial product in dW = xᵀ·dy

template <class F>
void for_chunks(std::size_t n, std::size_t chunk, F&& f) {
  const std::size_t parts = (n + chunk - 1) / chunk;
  if (parts <= 1) return f(std::size_t(0), n);
  tbb::parallel_for(std::size_t(0), parts, [&](std::size_t p) { f(p * chunk, std::min(n, (p + 1) * chunk)); });
}

// What runs on a block of rows [r0, r1) right after its product, while the
// rows are still in cache (an activation, a norm); none by default.
struct no_epilogue {
  void operator()(std::size_t, std::size_t) const {}
};

// y (n×out, row stride ldy) = x (n×in, row stride ldx) · W (in×out) + beta · y,
// or, when `add` (n×out, row stride ldy) is given, add + x · W; then epi(r0, r1).
template <class T, class Epi = no_epilogue>
void matmul(const T* x, std::size_t ldx, const T* w, T* y, std::size_t ldy, std::size_t n, std::size_t in,
            std::size_t out, T beta = T(0), const T* add = nullptr, Epi&& epi = {}) {
  for_chunks(n, row_block, [&](std::size_t r0, std::size_t r1) {
    if (add) std::copy(add + r0 * ldy, add + r1 * ldy, y + r0 * ldy);
    gemm(false, false, r1 - r0, out, in, T(1), x + r0 * ldx, ldx, w, out, add ? T(1) : beta, y + r0 * ldy, ldy);
    epi(r0, r1);
  });
}
template <class T, class Epi = no_epilogue>
void matmul(const T* x, const T* w, T* y, std::size_t n, std::size_t in, std::size_t out, T beta = T(0),
            const T* add = nullptr, Epi&& epi = {}) {
  matmul(x, in, w, y, out, n, in, out, beta, add, epi);
}

// dx (n×in) = dy (n×out, row stride ldy) · Wᵀ + beta · dx, W (in×out); then epi(r0, r1)
template <class T, class Epi = no_epilogue>
void matmul_dx(const T* dy, std::size_t ldy, const T* w, T* dx, std::size_t n, std::size_t in, std::size_t out,
               T beta, Epi&& epi = {}) {
  for_chunks(n, row_block, [&](std::size_t r0, std::size_t r1) {
    gemm(false, true, r1 - r0, in, out, T(1), dy + r0 * ldy, ldy, w, out, beta, dx + r0 * in, in);
    epi(r0, r1);
  });
}
template <class T, class Epi = no_epilogue>
void matmul_dx(const T* dy, const T* w, T* dx, std::size_t n, std::size_t in, std::size_t out, T beta,
               Epi&& epi = {}) {
  matmul_dx(dy, out, w, dx, n, in, out, beta, epi);
}

// Where the columns of a weight gradient go: `cols` columns into dst (row stride cols).
template <class T>
struct dw_part {
  T* dst;
  std::size_t cols;
};

// dW += xᵀ · dy for x (n×in), dy (n×Σcols, row stride ldy); dW's columns are
// split into `parts` (e.g. W_q | W_k | W_v stored apart). A product over
// thousands of tokens is cut into fixed chunks of tokens: each chunk's
// xᵀ·dy goes into its own scratch slice (in parallel; a short reduction keeps
// OpenBLAS's packed panels in cache), then the slices are added in chunk order.
template <class T, std::size_t P>
void matmul_dw(const T* x, std::size_t ldx, const T* dy, std::size_t ldy, std::size_t n, std::size_t in,
               const dw_part<T> (&parts)[P], std::vector<T>& scratch) {
  std::size_t out = 0;
  for (const auto& p : parts) out += p.cols;
  const std::size_t chunks = (n + token_chunk - 1) / token_chunk;
  if (chunks <= 1) {  // few tokens: straight into dW, split over its rows
    std::size_t c0 = 0;
    for (const auto& p : parts) {
      for_chunks(in, 16, [&](std::size_t r0, std::size_t r1) {
        gemm(true, false, r1 - r0, p.cols, n, T(1), x + r0, ldx, dy + c0, ldy, T(1), p.dst + r0 * p.cols, p.cols);
      });
      c0 += p.cols;
    }
    return;
  }
  const std::size_t slice = in * out;
  if (scratch.size() < chunks * slice) scratch.resize(chunks * slice);
  T* s = scratch.data();
  for_chunks(n, token_chunk, [&](std::size_t t0, std::size_t t1) {
    gemm(true, false, in, out, t1 - t0, T(1), x + t0 * ldx, ldx, dy + t0 * ldy, ldy, T(0),
         s + (t0 / token_chunk) * slice, out);
  });
  for_chunks(in, 8, [&](std::size_t r0, std::size_t r1) {
    for (std::size_t r = r0; r < r1; ++r) {
      std::size_t c0 = 0;
      for (const auto& p : parts) {
        T* d = p.dst + r * p.cols;
        for (std::size_t ch = 0; ch < chunks; ++ch) {
          const T* src = s + ch * slice + r * out + c0;
          for (std::size_t c = 0; c < p.cols; ++c) d[c] += src[c];
        }
        c0 += p.cols;
      }
    }
  });
}
template <class T>
void matmul_dw(const T* x, const T* dy, T* dw, std::size_t n, std::size_t in, std::size_t out,
               std::vector<T>& scratch) {
  const dw_part<T> parts[1] = {{dw, out}};
  matmul_dw(x, in, dy, out, n, in, parts, scratch);
}

}  // namespace attnsink::train
