// attnsink/train/blas.hpp — dense matrix products through CBLAS (OpenBLAS on
// Debian), for float and double, row-major.
#pragma once

#include <algorithm>
#include <cstddef>

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

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

// The products below split their output into one block per TBB thread and
// run single-threaded BLAS in each (call openblas_set_num_threads(1)): one
// thread pool for the whole step, instead of OpenBLAS's spinning threads
// fighting TBB's for the same cores. A block's arithmetic does not depend on
// how many blocks there are, so results do not depend on the thread count.
template <class F>
void for_blocks(std::size_t n, std::size_t min_block, F&& f) {
  const std::size_t parts = std::max<std::size_t>(1, std::min<std::size_t>(
                                                        std::size_t(tbb::this_task_arena::max_concurrency()), n / min_block));
  if (parts == 1) return f(std::size_t(0), n);
  tbb::parallel_for(std::size_t(0), parts, [&](std::size_t p) { f(n * p / parts, n * (p + 1) / parts); });
}

// y (n×out) = x (n×in) · W (in×out) + beta · y
template <class T>
void matmul(const T* x, const T* w, T* y, std::size_t n, std::size_t in, std::size_t out, T beta = T(0)) {
  for_blocks(n, 64, [&](std::size_t r0, std::size_t r1) {
    gemm(false, false, r1 - r0, out, in, T(1), x + r0 * in, in, w, out, beta, y + r0 * out, out);
  });
}
// dx (n×in) = dy (n×out) · Wᵀ + beta · dx
template <class T>
void matmul_dx(const T* dy, const T* w, T* dx, std::size_t n, std::size_t in, std::size_t out, T beta) {
  for_blocks(n, 64, [&](std::size_t r0, std::size_t r1) {
    gemm(false, true, r1 - r0, in, out, T(1), dy + r0 * out, out, w, out, beta, dx + r0 * in, in);
  });
}
// dW (in×out) += xᵀ · dy, split over the rows of dW (each block reduces over all n)
template <class T>
void matmul_dw(const T* x, const T* dy, T* dw, std::size_t n, std::size_t in, std::size_t out) {
  for_blocks(in, 16, [&](std::size_t r0, std::size_t r1) {
    gemm(true, false, r1 - r0, out, n, T(1), x + r0, in, dy, out, T(1), dw + r0 * out, out);
  });
}

}  // namespace attnsink::train
