// attnsink_bench, backward part: the flash-style CPU backward (cpu_backward.hpp).
//
// Counters: GFLOPS with backward FLOPs = 2.5 × the forward's (forward =
// 4·B·H·d · visible (query, key) pairs, so a causal mask halves both), counted
// the same way for every variant whatever its own cost; peak_frac = GFLOPS over
// BM_fma_peak (the FMA peak measured in the same process with the same threads);
// cpu_GFLOPS = FLOPs per CPU-second of the process times the threads, and
// cpu_peak_frac = cpu_GFLOPS over the FMA peak per CPU-second (both robust to a
// shared machine's load); threads. The forward runs once outside the timing;
// the timed loop is the backward alone, given the forward's output and row state.
// Threads = ATTNSINK_BENCH_THREADS or every hardware thread.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
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
// The FMA peak per CPU-second (each thread's FMA rate over its own CPU time,
// summed), measured once: what cpu_GFLOPS compares with on a shared machine.
double bwd_cpu_peak() {
  static const double peak = [] {
    double cpu = 0;
    bench::fma_gflops(threads_to_use(), 20'000'000, &cpu);
    return cpu;
  }();
  return peak;
}

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& e : x) e = normal(gen);
  return x;
}

struct bwd_shape {
  std::size_t batch, heads, kv_heads, tokens, dim;
};

// One backward problem: random q, k, v, dO; the forward's output and row state.
template <class V>
struct bwd_problem {
  bwd_shape s;
  std::vector<float> q, k, v, dO, out, mx, sm, dq, dk, dv;
  std::vector<double> sink, kstar, vstar;
  decltype(variants::make<V>(variants::settings{})) a;
  bwd_problem(const bwd_shape& sh, mask::dynamic m)
      : s(sh),
        q(random_floats(sh.batch * sh.heads * sh.tokens * sh.dim, 1)),
        k(random_floats(sh.batch * sh.kv_heads * sh.tokens * sh.dim, 2)),
        v(random_floats(sh.batch * sh.kv_heads * sh.tokens * sh.dim, 3)),
        dO(random_floats(sh.batch * sh.heads * sh.tokens * sh.dim, 4)),
        out(q.size()), mx(sh.batch * sh.heads * sh.tokens), sm(mx.size()), dq(q.size()), dk(k.size()), dv(v.size()),
        sink(sh.heads, 0.5), kstar(sh.kv_heads * sh.dim, 0.1), vstar(sh.kv_heads * sh.dim, 0.1),
        a(make(m)) {
    forward(backend::cpu{}, a, Q(), K(), Vv(), tensor4<float>(out.data(), s.batch, s.heads, s.tokens, s.dim),
            row_stats<float>{mx.data(), sm.data()});
  }
  auto make(mask::dynamic m) {
    variants::settings st;
    st.mask = m;
    st.sink = param_ref(sink.data(), s.heads);
    st.kstar = param_ref(kstar.data(), kstar.size());
    st.vstar = param_ref(vstar.data(), vstar.size());
    return variants::make<V>(st);
  }
  tensor4<const float> Q() const { return {q.data(), s.batch, s.heads, s.tokens, s.dim}; }
  tensor4<const float> K() const { return {k.data(), s.batch, s.kv_heads, s.tokens, s.dim}; }
  tensor4<const float> Vv() const { return {v.data(), s.batch, s.kv_heads, s.tokens, s.dim}; }
  tensor4<const float> G() const { return {dO.data(), s.batch, s.heads, s.tokens, s.dim}; }
  saved_forward<float> saved() const {
    return {tensor4<const float>(out.data(), s.batch, s.heads, s.tokens, s.dim), mx.data(), sm.data()};
  }
  gradients<float> grads() {
    return {{dq.data(), s.batch, s.heads, s.tokens, s.dim},
            {dk.data(), s.batch, s.kv_heads, s.tokens, s.dim},
            {dv.data(), s.batch, s.kv_heads, s.tokens, s.dim}};
  }
  void run() { backward(backend::cpu{}, a, Q(), K(), Vv(), G(), grads(), saved()); }
  // backward FLOPs: 2.5 × the forward's 4·B·H·d per visible (query, key) pair
  double flops(const mask::dynamic& m) const {
    double pairs = 0;
    for (std::size_t i = 0; i < s.tokens; ++i) {
      const key_range r = m.range(0, i, s.tokens, s.tokens);
      pairs += double(r.hi - r.lo);
    }
    return 2.5 * 4.0 * double(s.batch * s.heads * s.dim) * pairs;
  }
};

template <class V>
void BM_backward_shape(benchmark::State& state, mask::dynamic m, bwd_shape sh) {
  // The FMA peaks first: measured before this process's first TBB region, so
  // no spinning TBB worker shares the cores with them.
  const double peak = bwd_peak(), cpu_peak = bwd_cpu_peak();
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads_to_use());
  bwd_problem<V> x(sh, m);
  double seconds = 0;
  const double cpu0 = bench::process_cpu_seconds();
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    x.run();
    benchmark::DoNotOptimize(x.dq.data());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double cpu = bench::process_cpu_seconds() - cpu0;
  const double flops = x.flops(m) * double(state.iterations());
  const double gflops = flops / seconds * 1e-9;
  state.counters["GFLOPS"] = gflops;
  // per CPU-second of the whole process, over the threads used: what the kernel
  // reaches while it runs (the machine may be shared)
  state.counters["cpu_GFLOPS"] = flops / cpu * 1e-9 * double(threads_to_use());
  state.counters["cpu_peak_frac"] = state.counters["cpu_GFLOPS"] / cpu_peak;
  state.counters["peak_frac"] = gflops / peak;
  state.counters["threads"] = double(threads_to_use());
}

// B = 1, H = 8 query heads (kv heads: 8, or 2 for the grouped case), tokens T, head_dim d.
template <class V>
void BM_backward(benchmark::State& state, mask::dynamic m, std::size_t kv_heads) {
  const std::size_t T = std::size_t(state.range(0)), d = std::size_t(state.range(1));
  BM_backward_shape<V>(state, m, {1, 8, kv_heads, T, d});
}

// ---- memory: peak RSS of one T = 32768, H = 8, d = 128 causal softmax backward

// extra_MiB: the peak RSS during the backward beyond what the process held
// before it (inputs q, k, v, dO, the forward's output and row state, and the
// gradient buffers, all allocated and touched before).
void BM_backward_memory(benchmark::State& state) {
  const double peak = bwd_peak();
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads_to_use());
  const mask::dynamic m{kind::causal, 0};
  bwd_problem<variants::softmax> x({1, 8, 8, 32768, 128}, m);
  std::fill(x.dq.begin(), x.dq.end(), 0.f);
  std::fill(x.dk.begin(), x.dk.end(), 0.f);
  std::fill(x.dv.begin(), x.dv.end(), 0.f);
  double io = 0;
  for (const auto* b : {&x.q, &x.k, &x.v, &x.dO, &x.out, &x.mx, &x.sm, &x.dq, &x.dk, &x.dv}) io += double(b->size());
  const double seconds = bench::measure_peak_rss(state, io * sizeof(float) / (1 << 20), [&] { x.run(); });
  state.counters["GFLOPS"] = x.flops(m) / seconds * 1e-9;
  state.counters["peak_frac"] = x.flops(m) / seconds * 1e-9 / peak;
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
  // the trainer's attention (benchmarks/bench_train.cpp's model: batch 32, 4 heads, context 256, head_dim 32)
  benchmark::RegisterBenchmark("backward/softmax/causal/trainer_B32_H4_T256_d32", [](benchmark::State& s) {
    BM_backward_shape<variants::softmax>(s, {kind::causal, 0}, {32, 4, 4, 256, 32});
  })->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("backward/memory/softmax/causal/H8_d128_T32768", BM_backward_memory)
      ->Iterations(1)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  return true;
}();

}  // namespace
