// attnsink/config.hpp — the one place for platform conditionals.
//
// Policies are written once and called from host code, from the CPU backend
// and from device kernels (Kokkos/CUDA). Every #if for host/device lives here;
// policy headers include neither Kokkos, xsimd nor TBB.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ATTNSINK_HD __host__ __device__
#else
#define ATTNSINK_HD
#endif

#define ATTNSINK_INLINE ATTNSINK_HD inline

namespace attnsink::math {

// Thin wrappers so that policy code names one function on host and device.
// Under nvcc/hipcc the global overloads (float and double) are host+device.
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
template <class T> ATTNSINK_INLINE T exp(T x) { return ::exp(x); }
template <class T> ATTNSINK_INLINE T expm1(T x) { return ::expm1(x); }
template <class T> ATTNSINK_INLINE T log(T x) { return ::log(x); }
template <class T> ATTNSINK_INLINE T tanh(T x) { return ::tanh(x); }
template <class T> ATTNSINK_INLINE T sqrt(T x) { return ::sqrt(x); }
template <class T> ATTNSINK_INLINE T fabs(T x) { return ::fabs(x); }
template <class T> ATTNSINK_INLINE T sin(T x) { return ::sin(x); }
template <class T> ATTNSINK_INLINE T cos(T x) { return ::cos(x); }
template <class T> ATTNSINK_INLINE T pow(T x, T y) { return ::pow(x, y); }
template <class T> ATTNSINK_INLINE bool isfinite(T x) { return ::isfinite(x); }
#else
template <class T> inline T exp(T x) { return std::exp(x); }
template <class T> inline T expm1(T x) { return std::expm1(x); }
template <class T> inline T log(T x) { return std::log(x); }
template <class T> inline T tanh(T x) { return std::tanh(x); }
template <class T> inline T sqrt(T x) { return std::sqrt(x); }
template <class T> inline T fabs(T x) { return std::fabs(x); }
template <class T> inline T sin(T x) { return std::sin(x); }
template <class T> inline T cos(T x) { return std::cos(x); }
template <class T> inline T pow(T x, T y) { return std::pow(x, y); }
template <class T> inline bool isfinite(T x) { return std::isfinite(x); }
#endif

template <class T> ATTNSINK_INLINE T max(T a, T b) { return a < b ? b : a; }
template <class T> ATTNSINK_INLINE T min(T a, T b) { return b < a ? b : a; }
template <class T> ATTNSINK_INLINE T neg_inf() { return -std::numeric_limits<T>::infinity(); }

}  // namespace attnsink::math
