// gpu_ceiling: the two arithmetic ceilings an fp32-accurate attention kernel
// has on this GPU, measured rather than taken from a datasheet.
//
// 1. fp32 FMA: every thread runs 8 independent FMA chains (FLOPs = 2 per FMA).
// 2. mma.sync.m16n8k8 TF32 (f32 accumulate), the instruction of attnsink's
//    CUDA kernel: every warp runs 8 independent accumulators (FLOPs = 2·16·8·8
//    per MMA). The 3xTF32 split (big·big + big·small + small·big) that keeps
//    fp32 accuracy costs three of these per product, so an fp32-accurate
//    kernel built on it cannot exceed a third of this rate.
//
// Build and run (CUDA ≥ 11, sm_80 or newer):
//   nvcc -O3 -arch=sm_90 benchmarks/kokkos/gpu_ceiling.cu -o gpu_ceiling && ./gpu_ceiling
// Prints the best of 5 timed launches per ceiling, in TFLOP/s.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(x)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));        \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

constexpr int kChains = 8;

__global__ void fma_kernel(float* out, int iters, float a, float b) {
  float x[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) x[c] = float(threadIdx.x + c);
  for (int i = 0; i < iters; ++i)
#pragma unroll
    for (int c = 0; c < kChains; ++c) x[c] = fmaf(x[c], a, b);
  float s = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += x[c];
  if (s == 12345.678f) out[threadIdx.x] = s;  // never true; keeps the chains live
}

__global__ void mma_kernel(float* out, int iters) {
  unsigned a[4], b[2];
  float acc[kChains][4];
#pragma unroll
  for (int u = 0; u < 4; ++u) a[u] = __float_as_uint(1.0f + float(threadIdx.x + u) * 1e-3f) & 0xffffe000u;
#pragma unroll
  for (int u = 0; u < 2; ++u) b[u] = __float_as_uint(1e-6f * float(u + 1)) & 0xffffe000u;
#pragma unroll
  for (int c = 0; c < kChains; ++c)
#pragma unroll
    for (int u = 0; u < 4; ++u) acc[c][u] = 0.0f;
  for (int i = 0; i < iters; ++i)
#pragma unroll
    for (int c = 0; c < kChains; ++c)
      asm volatile(
          "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(acc[c][0]), "+f"(acc[c][1]), "+f"(acc[c][2]), "+f"(acc[c][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  float s = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
  if (s == 12345.678f) out[threadIdx.x] = s;
}

template <class Launch>
double best_seconds(Launch launch) {
  cudaEvent_t t0, t1;
  CHECK(cudaEventCreate(&t0));
  CHECK(cudaEventCreate(&t1));
  launch();  // warm-up
  CHECK(cudaDeviceSynchronize());
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    CHECK(cudaEventRecord(t0));
    launch();
    CHECK(cudaEventRecord(t1));
    CHECK(cudaEventSynchronize(t1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, t0, t1));
    best = ms * 1e-3 < best ? ms * 1e-3 : best;
  }
  CHECK(cudaEventDestroy(t0));
  CHECK(cudaEventDestroy(t1));
  return best;
}

int main() {
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  float* out = nullptr;
  CHECK(cudaMalloc(&out, 1024 * sizeof(float)));
  const int sms = prop.multiProcessorCount;
  std::printf("# %s, %d SMs\n", prop.name, sms);

  {
    const int threads = 256, blocks = sms * 8, iters = 1 << 16;
    const double s = best_seconds([&] { fma_kernel<<<blocks, threads>>>(out, iters, 0.999f, 1e-3f); });
    CHECK(cudaGetLastError());
    const double flops = 2.0 * kChains * double(iters) * threads * blocks;
    std::printf("fp32_fma              %8.2f TFLOP/s\n", flops / s * 1e-12);
  }
  {
    const int threads = 128, blocks = sms * 8, iters = 1 << 14;
    const double s = best_seconds([&] { mma_kernel<<<blocks, threads>>>(out, iters); });
    CHECK(cudaGetLastError());
    const double flops = 2.0 * 16 * 8 * 8 * kChains * double(iters) * (threads / 32) * blocks;
    std::printf("mma_sync_tf32         %8.2f TFLOP/s\n", flops / s * 1e-12);
    std::printf("3xtf32_ceiling        %8.2f TFLOP/s (a third of mma_sync_tf32)\n", flops / s * 1e-12 / 3);
  }
  CHECK(cudaFree(out));
  return 0;
}
