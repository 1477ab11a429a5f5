// attnsink/train/blas.hpp — dense matrix products through CBLAS (OpenBLAS on
// Debian), for float and double, row-major.
#pragma once

#include <cstddef>

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

// y (n×out) = x (n×in) · W (in×out)
template <class T>
void matmul(const T* x, const T* w, T* y, std::size_t n, std::size_t in, std::size_t out, T beta = T(0)) {
  gemm(false, false, n, out, in, T(1), x, in, w, out, beta, y, out);
}
// dx (n×in) (+)= dy (n×out) · Wᵀ
template <class T>
void matmul_dx(const T* dy, const T* w, T* dx, std::size_t n, std::size_t in, std::size_t out, T beta) {
  gemm(false, true, n, in, out, T(1), dy, out, w, out, beta, dx, in);
}
// dW (in×out) += xᵀ · dy
template <class T>
void matmul_dw(const T* x, const T* dy, T* dw, std::size_t n, std::size_t in, std::size_t out) {
  gemm(true, false, in, out, n, T(1), x, in, dy, out, T(1), dw, out);
}

}  // namespace attnsink::train
