// attnsink/kokkos_compat.hpp — the differences between the Kokkos releases the
// Kokkos backend builds with: Debian 12's Trilinos Kokkos 3.4.01 and current
// 4.x/5.x. Everything version- or device-dependent that the backend needs
// from Kokkos sits here, so backend/kokkos.hpp names one spelling.
#pragma once

#include <type_traits>

#include <Kokkos_Core.hpp>

#ifndef KOKKOS_VERSION
#error "attnsink/kokkos_compat.hpp: Kokkos_Core.hpp did not define KOKKOS_VERSION (Kokkos older than 3.0?)"
#endif

// Full unrolling of loops over a compile-time register array: without it nvcc
// indexes the array at run time and moves it to local memory.
// ATTNSINK_UNROLL_DIM(n): the same for a loop over a head-dim register array
// of n elements, up to n = 128; wider arrays (the 256 capacity) live in local
// memory whatever the unrolling (four of them per thread are 4 KiB), and
// unrolling them fully only multiplied ptxas's time (one variant's backward:
// 79 s for sm_90 against 35 s without the 256-wide kernels).
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define ATTNSINK_UNROLL _Pragma("unroll")
#define ATTNSINK_PRAGMA_(x) _Pragma(#x)
#define ATTNSINK_UNROLL_DIM(n) ATTNSINK_PRAGMA_(unroll((n) <= 128 ? (n) : 1))
#else
#define ATTNSINK_UNROLL
#define ATTNSINK_UNROLL_DIM(n)
#endif

namespace attnsink::kokkos_compat {

// Kokkos 3.4-3.6 have the math functions in Kokkos::Experimental; 3.7 moved
// them to Kokkos:: and 5.0 removed the Experimental names.
#if KOKKOS_VERSION >= 30700
using Kokkos::exp;
using Kokkos::log;
#else
using Kokkos::Experimental::exp;
using Kokkos::Experimental::log;
#endif

// Whether host code may dereference pointers into Space's memory.
template <class Space>
inline constexpr bool host_accessible =
    Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename Space::memory_space>::accessible;

// Four consecutive values from 16-byte aligned memory: one 128-bit load on
// CUDA/HIP (the shared-memory bandwidth a broadcast load uses is per
// instruction, so this quarters it), four scalar loads elsewhere.
template <class T>
KOKKOS_FORCEINLINE_FUNCTION void load4(const T* p, T& a, T& b, T& c, T& d) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  if constexpr (std::is_same_v<T, float>) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    a = x.x, b = x.y, c = x.z, d = x.w;
    return;
  }
#endif
  a = p[0], b = p[1], c = p[2], d = p[3];
}

}  // namespace attnsink::kokkos_compat
