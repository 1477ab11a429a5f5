// benchmarks/bench_common.hpp — what every part of attnsink_bench shares: the
// thread count, this machine's fp32 FMA peak measured in the same process,
// process CPU time, and the peak-RSS measurement of the memory cases.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <time.h>

#include <xsimd/xsimd.hpp>

namespace attnsink::bench {

// ATTNSINK_BENCH_THREADS, or every hardware thread.
inline std::size_t threads() {
  if (const char* s = std::getenv("ATTNSINK_BENCH_THREADS"); s && std::atoi(s) > 0) return std::size_t(std::atoi(s));
  return std::max(1u, std::thread::hardware_concurrency());
}

// CPU seconds of the whole process (every thread).
inline double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// GFLOP/s of `n` threads each running independent chains of vector FMAs at
// the SIMD width this binary's kernels use. 12 chains cover latency × ports
// (4 × 2) on current x86 cores with room to spare, and fit 16 registers.
// cpu_gflops, when given, receives the same per CPU-second of each thread, summed.
inline double fma_gflops(std::size_t n, std::size_t iters, double* cpu_gflops = nullptr) {
  using V = xsimd::batch<float>;
  constexpr std::size_t chains = 12;
  std::atomic<std::size_t> ready{0};
  std::atomic<bool> go{false};
  std::vector<float> sink(n);
  std::vector<double> cpu(n);
  const double flops_per_thread = 2.0 * double(V::size) * chains * double(iters);
  std::vector<std::thread> pool;
  for (std::size_t t = 0; t < n; ++t)
    pool.emplace_back([&, t] {
      V acc[chains];
      for (std::size_t c = 0; c < chains; ++c) acc[c] = V(float(c + t) * 1e-3f);
      const V mul(0.9999999f), add(1e-7f);
      ready.fetch_add(1);
      while (!go.load()) {
      }
      timespec c0{}, c1{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
      for (std::size_t i = 0; i < iters; ++i)
#pragma GCC unroll 12
        for (std::size_t c = 0; c < chains; ++c) acc[c] = xsimd::fma(acc[c], mul, add);
      V s(0.f);
      for (std::size_t c = 0; c < chains; ++c) s += acc[c];
      sink[t] = xsimd::hadd(s);
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
      cpu[t] = double(c1.tv_sec - c0.tv_sec) + 1e-9 * double(c1.tv_nsec - c0.tv_nsec);
    });
  while (ready.load() < n) {
  }
  const auto t0 = std::chrono::steady_clock::now();
  go.store(true);
  for (auto& th : pool) th.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  benchmark::DoNotOptimize(sink.data());
  if (cpu_gflops) {
    *cpu_gflops = 0;
    for (double c : cpu) *cpu_gflops += flops_per_thread / c * 1e-9;
  }
  return flops_per_thread * double(n) / s * 1e-9;
}

// The best FMA peak this process has measured (BM_fma_peak raises it); the
// first call, if nothing has been measured yet, takes the best of three runs
// as BM_fma_peak does (a single first run can read far low: 193 against 328
// GFLOP/s was seen when the backward cases ran before BM_fma_peak).
inline double& peak_store() {
  static double peak = 0;
  return peak;
}
inline double peak_gflops() {
  if (peak_store() == 0)
    for (int r = 0; r < 3; ++r) peak_store() = std::max(peak_store(), fma_gflops(threads(), 20'000'000));
  return peak_store();
}

// A field of /proc/self/status in KiB ("VmRSS:", "VmHWM:"); 0 if absent.
inline std::size_t status_kib(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0) return std::stoull(line.substr(n + 1));
  return 0;
}

// The memory cases: run() once per iteration with the peak-RSS mark (VmHWM)
// reset to the current RSS before it, and report io_MiB (the caller's inputs
// and outputs), peak_rss_MiB, extra_MiB (peak RSS during run() beyond the RSS
// before it) and hwm_reset (1 if the reset worked). Returns the seconds of
// the last run().
template <class Run>
double measure_peak_rss(benchmark::State& state, double io_mib, Run&& run) {
  double extra = 0, hwm = 0, seconds = 0;
  bool reset = false;
  for (auto _ : state) {
    // "5" resets the peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0).
    reset = bool(std::ofstream("/proc/self/clear_refs") << "5");
    const double before = double(status_kib("VmRSS:")) / 1024;
    const auto t0 = std::chrono::steady_clock::now();
    run();
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    hwm = double(status_kib("VmHWM:")) / 1024;
    extra = hwm - before;
  }
  state.counters["io_MiB"] = io_mib;
  state.counters["peak_rss_MiB"] = hwm;
  state.counters["extra_MiB"] = extra;
  state.counters["hwm_reset"] = reset ? 1 : 0;
  return seconds;
}

}  // namespace attnsink::bench
