// attnsink_bench, backward part: the flash-style CPU backward (cpu_backward.hpp).
//
// Counters: GFLOPS with backward FLOPs = 2.5 × the forward's (forward =
// 4·B·H·d · visible (query, key) pairs, so a causal mask halves both), counted
// the same way for every variant whatever its own cost; peak_frac = GFLOPS over
// BM_fma_peak (the FMA peak measured in the same process with the same threads); threads. The forward runs once outside the timing;
// the timed loop is the backward alone, given the forward's output and row state.
// Threads = ATTNSINK_BENCH_THREADS or every hardware thread.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <tbb/global_control.h>
#include <xsimd/xsimd.hpp>

#include <attnsink/backend/cpu_backward.hpp>
#include <attnsink/cpu.hpp>
#include <attnsink/variants.hpp>

#include "bench_common.hpp"

namespace {

using namespace attnsink;
using kind = mask::dynamic::kind;

std::size_t threads_to_use() { return bench::threads(); }
double bwd_peak() { return bench::peak_gflops(); }

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& e : x) e = normal(gen);
  return x;
}

// B = 1, H = 8 query heads (kv heads: 8, or 2 for the grouped case), tokens T, head_dim d.
template <class V>
void BM_backward(benchmark::State& state, mask::dynamic m, std::size_t kv_heads) {
  const std::size_t T = std::size_t(state.range(0)), d = std::size_t(state.range(1)), H = 8;
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads_to_use());
  const auto q = random_floats(H * T * d, 1), k = random_floats(kv_heads * T * d, 2),
             v = random_floats(kv_heads * T * d, 3), dO = random_floats(H * T * d, 4);
  std::vector<double> sink(H, 0.5), kstar(kv_heads * d, 0.1), vstar(kv_heads * d, 0.1);
  variants::settings st;
  st.mask = m;
  st.sink = param_ref(sink.data(), H);
  st.kstar = param_ref(kstar.data(), kstar.size());
  st.vstar = param_ref(vstar.data(), vstar.size());
  const auto a = variants::make<V>(st);
  const tensor4<const float> Q(q.data(), 1, H, T, d), K(k.data(), 1, kv_heads, T, d), Vv(v.data(), 1, kv_heads, T, d),
      G(dO.data(), 1, H, T, d);
  std::vector<float> out(H * T * d), mx(H * T), sm(H * T), dq(q.size()), dk(k.size()), dv(v.size());
  forward(backend::cpu{}, a, Q, K, Vv, tensor4<float>(out.data(), 1, H, T, d), row_stats<float>{mx.data(), sm.data()});
  const saved_forward<float> saved{tensor4<const float>(out.data(), 1, H, T, d), mx.data(), sm.data()};
  gradients<float> g{{dq.data(), 1, H, T, d}, {dk.data(), 1, kv_heads, T, d}, {dv.data(), 1, kv_heads, T, d}};
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    backward(backend::cpu{}, a, Q, K, Vv, G, g, saved);
    benchmark::DoNotOptimize(dq.data());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // visible (query, key) pairs under the mask
  double pairs = 0;
  for (std::size_t i = 0; i < T; ++i) {
    const key_range r = m.range(0, i, T, T);
    pairs += double(r.hi - r.lo);
  }
  const double flops = 2.5 * 4.0 * double(H) * double(d) * pairs;
  const double gflops = flops * double(state.iterations()) / seconds * 1e-9;
  state.counters["GFLOPS"] = gflops;
  state.counters["peak_frac"] = gflops / bwd_peak();
  state.counters["threads"] = double(threads_to_use());
}

template <class V>
void register_backward(const std::string& name, mask::dynamic m, std::size_t kv_heads,
                       std::initializer_list<int> tokens, std::initializer_list<int> dims) {
  auto* b = benchmark::RegisterBenchmark(("backward/" + name).c_str(), [m, kv_heads](benchmark::State& s) {
    BM_backward<V>(s, m, kv_heads);
  });
  b->ArgNames({"T", "d"})->UseRealTime()->Unit(benchmark::kMillisecond);
  for (int d : dims)
    for (int t : tokens) b->Args({t, d});
}

[[maybe_unused]] const bool registered = [] {
  register_backward<variants::softmax>("softmax/full", {kind::none, 0}, 8, {512, 2048, 4096}, {64, 128});
  register_backward<variants::softmax>("softmax/causal", {kind::causal, 0}, 8, {2048, 4096}, {128});
  register_backward<variants::softmax>("softmax/causal/gqa4", {kind::causal, 0}, 2, {2048}, {128});
  register_backward<variants::sink_logit>("sink_logit/causal", {kind::causal, 0}, 8, {2048}, {128});
  register_backward<variants::kv_bias>("kv_bias/causal", {kind::causal, 0}, 8, {2048}, {128});
  register_backward<variants::sigmoid>("sigmoid/causal", {kind::causal, 0}, 8, {2048}, {128});
  register_backward<variants::alibi>("alibi/causal", {kind::causal, 0}, 8, {2048}, {128});
  return true;
}();

}  // namespace
