// attnsink_bench, forward part: this machine's fp32 FMA peak and copy
// bandwidth, the fused CPU forward for every benchmarked variant, paired
// variant ÷ softmax ratios, the naive xtensor route, decode bandwidth, and
// peak memory at T = 32768.
//
// Counters: GFLOPS (forward FLOPs = 4·B·H·d · visible (query, key) pairs, so
// a causal mask halves it and a window counts its band), peak_frac (GFLOPS
// over BM_fma_peak's GFLOPS in the same process), GB_s and copy_frac for
// decode; ratio/ cases run a variant and softmax in alternation, decode/
// cases a decode and a copy, peak/ cases the forward and the FMA
// microbenchmark, and each reports the median of its per-pair ratios. Times
// are wall-clock; threads = ATTNSINK_BENCH_THREADS or every hardware thread.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <sys/resource.h>
#include <time.h>

#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <xsimd/xsimd.hpp>

#include <attnsink/cpu.hpp>
#include <attnsink/variants.hpp>

#include "bench_common.hpp"

#ifdef ATTNSINK_BENCH_XTENSOR_BLAS
#include <xtensor-blas/xlinalg.hpp>
#include <xtensor/xadapt.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xtensor.hpp>
#endif

namespace {

using namespace attnsink;
using clock_type = std::chrono::steady_clock;

std::size_t bench_threads() { return bench::threads(); }

// Caps TBB (our forward) at the benchmark's thread count for the whole process.
const tbb::global_control& thread_cap() {
  static const tbb::global_control cap(tbb::global_control::max_allowed_parallelism, bench_threads());
  return cap;
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

using bench::process_cpu_seconds;

// ---- the machine: FMA peak and copy bandwidth

using bench::fma_gflops;
using bench::peak_gflops;

void BM_fma_peak(benchmark::State& state) {
  double best = 0, best_cpu = 0;
  for (auto _ : state) {
    double c = 0;
    best = std::max(best, fma_gflops(bench_threads(), 20'000'000, &c));
    best_cpu = std::max(best_cpu, c);
  }
  bench::peak_store() = std::max(bench::peak_store(), best);
  state.counters["GFLOPS"] = best;
  state.counters["cpu_GFLOPS"] = best_cpu;
  state.counters["threads"] = double(bench_threads());
  state.counters["simd_width"] = double(xsimd::batch<float>::size);
}

// Copy bandwidth over `bytes`, decode's reference: a source and a
// destination of `bytes` each, both written before timing (no page faults
// timed); one contiguous slice per benchmark thread, each copied by memcpy
// in one TBB task; GB/s = 2·bytes / wall time (STREAM convention: bytes read
// + bytes written; the destination's write-allocate reads, where memcpy does
// not stream its stores, are not counted). Decode's GB/s counts K and V bytes
// read once, so copy_frac = decode read rate / copy's read + write rate.
struct copy_buffers {
  std::vector<float> src, dst;
  explicit copy_buffers(std::size_t bytes) : src(bytes / sizeof(float), 1.0f), dst(bytes / sizeof(float), 0.0f) {}
  // One timed copy, in GB/s.
  double run() {
    const std::size_t n = src.size(), parts = bench_threads();
    const auto t0 = clock_type::now();
    tbb::parallel_for(std::size_t(0), parts, [&](std::size_t p) {
      const std::size_t a = n * p / parts, b = n * (p + 1) / parts;
      std::memcpy(dst.data() + a, src.data() + a, (b - a) * sizeof(float));
    });
    const double gbs = 2.0 * double(n * sizeof(float)) / seconds_since(t0) * 1e-9;
    benchmark::DoNotOptimize(dst.data());
    return gbs;
  }
};

// ---- inputs

// Uniform in [-sqrt(3), sqrt(3)) (unit variance) from a counter hash: fast
// enough for the 512 MiB of operands the memory case needs.
void fill(std::vector<float>& x, std::uint64_t seed) {
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, x.size(), 1 << 16), [&](const auto& rg) {
    for (std::size_t i = rg.begin(); i != rg.end(); ++i) {
      std::uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      x[i] = (float(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * 1.7320508f;
    }
  });
}

struct operands {
  std::size_t heads, kv_heads, tq, tk, d;
  std::vector<float> q, k, v, o, sink, kstar, vstar;
  operands(std::size_t h, std::size_t hk, std::size_t tq_, std::size_t tk_, std::size_t d_)
      : heads(h), kv_heads(hk), tq(tq_), tk(tk_), d(d_), q(h * tq_ * d_), k(hk * tk_ * d_), v(hk * tk_ * d_),
        o(h * tq_ * d_), sink(h), kstar(hk * d_), vstar(hk * d_) {
    fill(q, 1);
    fill(k, 2);
    fill(v, 3);
    fill(sink, 4);
    fill(kstar, 5);
    fill(vstar, 6);
  }
  tensor4<const float> Q() const { return {q.data(), 1, heads, tq, d}; }
  tensor4<const float> K() const { return {k.data(), 1, kv_heads, tk, d}; }
  tensor4<const float> V() const { return {v.data(), 1, kv_heads, tk, d}; }
  tensor4<float> O() { return {o.data(), 1, heads, tq, d}; }
  variants::settings settings(mask::dynamic m) const {
    variants::settings s;
    s.rope.enabled = false;
    s.mask = m;
    s.sink = param_ref(sink.data(), sink.size());
    s.kstar = param_ref(kstar.data(), kstar.size());
    s.vstar = param_ref(vstar.data(), vstar.size());
    return s;
  }
};

// 4·H·d per visible (query, key) pair.
double forward_flops(const operands& x, const mask::dynamic& m) {
  double pairs = 0;
  for (std::size_t i = 0; i < x.tq; ++i) {
    const key_range r = m.range(0, i, x.tq, x.tk);
    pairs += double(r.hi - r.lo);
  }
  return 4.0 * double(x.heads) * double(x.d) * pairs;
}

// ---- our forward, per variant

// The backend's tile options; ATTNSINK_BENCH_QTILE / _KTILE / _TGROUP / _GKEYS
// / _SPLITS override query_tile, key_tile, tile_group, group_keys and
// key_splits (tuning).
backend::cpu bench_backend() {
  backend::cpu be{};
  auto env = [](const char* name, std::size_t& field) {
    if (const char* s = std::getenv(name); s && std::atoi(s) > 0) field = std::size_t(std::atoi(s));
  };
  env("ATTNSINK_BENCH_QTILE", be.query_tile);
  env("ATTNSINK_BENCH_KTILE", be.key_tile);
  env("ATTNSINK_BENCH_TGROUP", be.tile_group);
  env("ATTNSINK_BENCH_GKEYS", be.group_keys);
  env("ATTNSINK_BENCH_SPLITS", be.key_splits);
  return be;
}

// Seconds of one forward of `attn` on x's inputs into o (the paired cases' unit).
template <class Attn>
double forward_seconds(const backend::cpu& be, const Attn& attn, const operands& x, tensor4<float> o) {
  const auto t0 = clock_type::now();
  forward(be, attn, x.Q(), x.K(), x.V(), o);
  benchmark::ClobberMemory();
  return seconds_since(t0);
}

template <class V>
void BM_forward(benchmark::State& state, mask::dynamic m, std::size_t heads = 8, std::size_t keys = 0) {
  thread_cap();
  const std::size_t t = std::size_t(state.range(0)), d = std::size_t(state.range(1));
  operands x(heads, heads, t, keys ? keys : t, d);
  const auto a = variants::make<V>(x.settings(m));
  const backend::cpu be = bench_backend();
  forward(be, a, x.Q(), x.K(), x.V(), x.O());  // warm: threads, pages
  const auto t0 = clock_type::now();
  const double c0 = process_cpu_seconds();
  for (auto _ : state) {
    forward(be, a, x.Q(), x.K(), x.V(), x.O());
    benchmark::ClobberMemory();
  }
  const double flops = forward_flops(x, m) * double(state.iterations());
  const double gflops = flops / seconds_since(t0) * 1e-9;
  state.counters["GFLOPS"] = gflops;
  state.counters["peak_frac"] = gflops / peak_gflops();
  state.counters["cpu_GFLOPS"] = flops / (process_cpu_seconds() - c0) * 1e-9;
}

using kind = mask::dynamic::kind;

// The forward cases' shapes: T in {512, 1024, 2048, 4096}, d in {64, 128}.
benchmark::internal::Benchmark* forward_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "d"})->UseRealTime()->Unit(benchmark::kMillisecond);
  for (int d : {64, 128})
    for (int t : {512, 1024, 2048, 4096}) b->Args({t, d});
  return b;
}

// ---- paired ratios: a variant against a reference, on the same inputs
//
// Each iteration runs the variant and the reference once each, timed apart,
// in alternating order. Counters: GFLOPS and ref_GFLOPS (medians over the
// iterations), ratio (median of the per-iteration GFLOP/s ratios) and
// ratio_lo / ratio_hi (its quartiles). A shared machine drifts by several
// percent between cases run seconds apart (separate forward/ cases of the
// same kernel have differed by up to ±10% on a 2-vCPU VM); a pair milliseconds
// apart sees the same state, so these ratios resolve differences of a few
// percent that the separate cases cannot.
double quantile(std::vector<double> x, double f) {
  if (x.empty()) return 0;
  std::sort(x.begin(), x.end());
  const double pos = f * double(x.size() - 1);
  const std::size_t i = std::size_t(pos);
  const double w = pos - double(i);
  return i + 1 < x.size() ? x[i] * (1 - w) + x[i + 1] * w : x[i];
}

// One call of `f` and one of `g` per benchmark iteration, timed by
// themselves (each returns its rate), in alternating order. Counters
// names[0] and names[1]: the medians of f's and g's rates; names[2]: the
// median of the per-pair ratios f / g, with names[2] + "_lo" / "_hi" its
// quartiles; pairs.
template <class F, class G>
void paired(benchmark::State& state, F&& f, G&& g, const std::array<std::string, 3>& names) {
  std::vector<double> rf, rg, ratio;
  bool g_first = false;
  for (auto _ : state) {
    double x, y;
    if (g_first) {
      y = g();
      x = f();
    } else {
      x = f();
      y = g();
    }
    g_first = !g_first;
    rf.push_back(x);
    rg.push_back(y);
    ratio.push_back(x / y);
  }
  state.counters[names[0]] = quantile(rf, 0.5);
  state.counters[names[1]] = quantile(rg, 0.5);
  state.counters[names[2]] = quantile(ratio, 0.5);
  state.counters[names[2] + "_lo"] = quantile(ratio, 0.25);
  state.counters[names[2] + "_hi"] = quantile(ratio, 0.75);
  state.counters["pairs"] = double(ratio.size());
}

template <class V, class R>
void BM_ratio(benchmark::State& state, mask::dynamic m, mask::dynamic mr) {
  thread_cap();
  const std::size_t t = std::size_t(state.range(0)), d = std::size_t(state.range(1));
  operands x(8, 8, t, t, d);
  std::vector<float> o_ref(x.o.size());
  const tensor4<float> O_ref{o_ref.data(), 1, x.heads, x.tq, x.d};
  const auto a = variants::make<V>(x.settings(m));
  const auto r = variants::make<R>(x.settings(mr));
  const backend::cpu be = bench_backend();
  const double fa = forward_flops(x, m), fr = forward_flops(x, mr);
  auto timed = [&](auto& attn, tensor4<float> o, double flops) {
    return flops / forward_seconds(be, attn, x, o) * 1e-9;
  };
  timed(a, x.O(), fa);  // warm: threads, pages
  timed(r, O_ref, fr);
  paired(state, [&] { return timed(a, x.O(), fa); }, [&] { return timed(r, O_ref, fr); },
         {"GFLOPS", "ref_GFLOPS", "ratio"});
}

// peak/softmax/full: the forward paired with BM_fma_peak's microbenchmark
// (10 million iterations a thread, about 30 ms on 2 cores), timed apart in
// alternating order. peak_frac is the median of the per-pair ratios, with
// quartiles peak_frac_lo / _hi. On a shared VM the FMA rate itself swings
// (160-340 GFLOP/s between runs of BM_fma_peak within one session,
// 2026-12-06), so forward/ cases' peak_frac, against one BM_fma_peak run
// seconds away, can read above 1; a pair milliseconds apart sees one state.
void BM_peak_pair(benchmark::State& state) {
  thread_cap();
  const std::size_t t = std::size_t(state.range(0)), d = std::size_t(state.range(1));
  operands x(8, 8, t, t, d);
  const mask::dynamic full{kind::none, 0};
  const auto a = variants::make<variants::softmax>(x.settings(full));
  const backend::cpu be = bench_backend();
  const double flops = forward_flops(x, full);
  auto fwd = [&] { return flops / forward_seconds(be, a, x, x.O()) * 1e-9; };
  auto fma = [] { return fma_gflops(bench_threads(), 10'000'000); };
  fwd();  // warm: threads, pages
  fma();
  paired(state, fwd, fma, {"GFLOPS", "peak_GFLOPS", "peak_frac"});
}

// ratio/<name>/<mask>: V under mask m against softmax under mr (at least
// 2 s of pairs per shape, so that even T = 4096, d = 128 gets several).
template <class V>
void register_ratio(const std::string& name, const std::string& label, mask::dynamic m, mask::dynamic mr) {
  auto* b = benchmark::RegisterBenchmark(("ratio/" + name + "/" + label).c_str(), [m, mr](benchmark::State& s) {
    BM_ratio<V, variants::softmax>(s, m, mr);
  });
  forward_shapes(b)->MinTime(2.0);
}

template <class V>
void register_variant(const std::string& name, bool noncausal, bool causal, mask::dynamic other = {kind::none, 0},
                      const std::string& other_name = "") {
  auto add = [&](const std::string& label, mask::dynamic m) {
    auto* b = benchmark::RegisterBenchmark(("forward/" + name + "/" + label).c_str(),
                                           [m](benchmark::State& s) { BM_forward<V>(s, m); });
    forward_shapes(b);
  };
  if (noncausal) add("full", {kind::none, 0});
  if (causal) add("causal", {kind::causal, 0});
  if (!other_name.empty()) add(other_name, other);
}

// ---- the naive route a user would write with xtensor: S = QKᵀ, softmax, O = PS

#ifdef ATTNSINK_BENCH_XTENSOR_BLAS
void naive_forward(operands& x) {
  const std::size_t t = x.tq, d = x.d;
  const float c = 1.0f / std::sqrt(float(d));
  const std::array<std::size_t, 2> shape{t, d};
  for (std::size_t h = 0; h < x.heads; ++h) {
    auto q = xt::adapt(x.q.data() + h * t * d, t * d, xt::no_ownership(), shape);
    auto k = xt::adapt(x.k.data() + h * t * d, t * d, xt::no_ownership(), shape);
    auto v = xt::adapt(x.v.data() + h * t * d, t * d, xt::no_ownership(), shape);
    auto o = xt::adapt(x.o.data() + h * t * d, t * d, xt::no_ownership(), shape);
    xt::xtensor<float, 2> s = xt::linalg::dot(q, xt::transpose(k)) * c;
    xt::xtensor<float, 2> m = xt::amax(s, {1}, xt::keep_dims);
    s = xt::exp(s - m);
    xt::xtensor<float, 2> l = xt::sum(s, {1}, xt::keep_dims);
    s /= l;
    o = xt::linalg::dot(s, v);
  }
}

void BM_naive_xtensor(benchmark::State& state) {
  thread_cap();
  const std::size_t t = std::size_t(state.range(0)), d = std::size_t(state.range(1));
  operands x(8, 8, t, t, d);
  naive_forward(x);
  const auto t0 = clock_type::now();
  const double c0 = process_cpu_seconds();
  for (auto _ : state) {
    naive_forward(x);
    benchmark::ClobberMemory();
  }
  const double flops = forward_flops(x, {kind::none, 0}) * double(state.iterations());
  const double gflops = flops / seconds_since(t0) * 1e-9;
  state.counters["GFLOPS"] = gflops;
  state.counters["peak_frac"] = gflops / peak_gflops();
  state.counters["cpu_GFLOPS"] = flops / (process_cpu_seconds() - c0) * 1e-9;
}
#endif

// ---- decode: one query per head, 32 query heads on 8 kv heads, d = 128

// copy/KV:n: the copy alone, best of its runs (5 a benchmark iteration).
void BM_copy(benchmark::State& state) {
  thread_cap();
  copy_buffers c(2 * 8 * std::size_t(state.range(0)) * 128 * sizeof(float));  // as decode's K + V
  double best = 0;
  for (auto _ : state)
    for (int r = 0; r < 5; ++r) best = std::max(best, c.run());
  state.counters["GB_s"] = best;
  state.counters["MiB"] = double(c.src.size() * sizeof(float)) / (1 << 20);
}

// decode/...: each benchmark iteration is a pair, one decode forward and one
// copy of as many bytes as K + V, timed apart, in alternating order (as the
// ratio/ cases: memory bandwidth on a shared machine drifts by tens of
// percent within seconds, and a pair milliseconds apart sees the same
// state). The copy between decodes also evicts K and V from the caches, so
// every decode reads them from memory. Counters: GB_s and copy_GB_s (medians),
// copy_frac (median of the per-pair ratios) with copy_frac_lo / _hi (its
// quartiles), pairs.
void BM_decode(benchmark::State& state, std::size_t heads, std::size_t kv_heads) {
  thread_cap();
  const std::size_t n = std::size_t(state.range(0));
  operands x(heads, kv_heads, 1, n, 128);
  const auto a = variants::make<variants::softmax>(x.settings({kind::causal, 0}));
  const backend::cpu be = bench_backend();
  const double bytes = double((x.k.size() + x.v.size()) * sizeof(float));
  copy_buffers c{static_cast<std::size_t>(bytes)};
  auto decode = [&] { return bytes / forward_seconds(be, a, x, x.O()) * 1e-9; };
  decode();  // warm: threads, pages
  c.run();
  paired(state, decode, [&] { return c.run(); }, {"GB_s", "copy_GB_s", "copy_frac"});
}

// ---- memory: peak RSS of one T = 32768, H = 8, d = 128 causal softmax forward

void BM_memory_T32768(benchmark::State& state) {
  thread_cap();
  operands x(8, 8, 32768, 32768, 128);
  const auto a = variants::make<variants::softmax>(x.settings({kind::causal, 0}));
  const backend::cpu be = bench_backend();
  const double io_mib = double((x.q.size() + x.k.size() + x.v.size() + x.o.size()) * sizeof(float)) / (1 << 20);
  const double seconds = bench::measure_peak_rss(state, io_mib, [&] { forward(be, a, x.Q(), x.K(), x.V(), x.O()); });
  state.counters["GFLOPS"] = forward_flops(x, {kind::causal, 0}) / seconds * 1e-9;
}

[[maybe_unused]] const bool registered = [] {
  benchmark::RegisterBenchmark("BM_fma_peak", BM_fma_peak)->Iterations(3)->UseRealTime();
  register_variant<variants::softmax>("softmax", true, true);
  register_variant<variants::sigmoid>("sigmoid", true, true);
  register_variant<variants::softmax_off_by_one>("softmax_off_by_one", true, true);
  register_variant<variants::sink_logit>("sink_logit", true, true);
  register_variant<variants::alibi>("alibi", false, true);
  register_variant<variants::softmax>("softmax", false, false, {kind::window, 256}, "sliding_window_256");
  register_variant<variants::kv_bias>("kv_bias", true, true);
  register_variant<variants::kernel_elu1>("kernel_elu1", true, true);
  // Paired ratios against softmax under the same mask (the window: against
  // causal softmax, the mask it narrows; causal softmax: against unmasked).
  {
    const mask::dynamic full{kind::none, 0}, causal{kind::causal, 0};
    const auto both = [&](auto tag, const std::string& name) {
      using V = typename decltype(tag)::type;
      register_ratio<V>(name, "full", full, full);
      register_ratio<V>(name, "causal", causal, causal);
    };
    both(std::type_identity<variants::sigmoid>{}, "sigmoid");
    both(std::type_identity<variants::softmax_off_by_one>{}, "softmax_off_by_one");
    both(std::type_identity<variants::sink_logit>{}, "sink_logit");
    both(std::type_identity<variants::kv_bias>{}, "kv_bias");
    both(std::type_identity<variants::kernel_elu1>{}, "kernel_elu1");
    register_ratio<variants::alibi>("alibi", "causal", causal, causal);
    register_ratio<variants::softmax>("sliding_window_256", "causal", {kind::window, 256}, causal);
    // Causal softmax against unmasked softmax (issue point 4: hidden tiles
    // skipped, work balanced across threads).
    register_ratio<variants::softmax>("softmax_causal", "full", causal, full);
  }
  // Softmax without a mask against the FMA peak, in pairs (issue point 1's shapes).
  benchmark::RegisterBenchmark("peak/softmax/full", BM_peak_pair)
      ->ArgNames({"T", "d"})
      ->Args({2048, 128})
      ->Args({4096, 128})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->MinTime(2.0);
  // The window's work without its band: every query row sees the same 256
  // keys, no mask (the visible pairs of sliding_window_256 past its first 255
  // rows, with the same rows per key). Window ÷ this is the cost of the band's
  // edges; this ÷ causal, of the rows' own work over fewer keys each.
  {
    auto* b = benchmark::RegisterBenchmark("forward/softmax/full_keys256", [](benchmark::State& s) {
      BM_forward<variants::softmax>(s, {kind::none, 0}, 8, 256);
    });
    b->ArgNames({"T", "d"})->UseRealTime()->Unit(benchmark::kMillisecond);
    for (int d : {64, 128})
      for (int t : {2048, 4096}) b->Args({t, d});
  }
  // The trainer's attention shape (B=32, H=4, T=256, d=32, causal) as B=1, H=128:
  // the same (batch, head) pairs and tiles for the backend.
  benchmark::RegisterBenchmark("forward/softmax/causal/trainer_BH128", [](benchmark::State& s) {
    BM_forward<variants::softmax>(s, {kind::causal, 0}, 128);
  })->ArgNames({"T", "d"})->Args({256, 32})->UseRealTime()->Unit(benchmark::kMillisecond);
#ifdef ATTNSINK_BENCH_XTENSOR_BLAS
  forward_shapes(benchmark::RegisterBenchmark("naive_xtensor/softmax/full", BM_naive_xtensor));
#endif
  {
    const auto by_kv = [](const char* name, auto fn, std::initializer_list<int> kv) {
      auto* b = benchmark::RegisterBenchmark(name, fn);
      b->ArgNames({"KV"})->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
      for (int n : kv) b->Arg(n);
    };
    by_kv("copy", BM_copy, {4096, 8192, 16384, 32768});
    by_kv("decode/softmax/H32_KV8_d128", [](benchmark::State& s) { BM_decode(s, 32, 8); }, {4096, 8192, 16384, 32768});
    // One kv head (multi-query): one tile per batch, so the keys are split
    // into parts across the threads (backend::cpu::key_splits).
    by_kv("decode/softmax/H8_KV1_d128", [](benchmark::State& s) { BM_decode(s, 8, 1); }, {32768, 131072});
  }
  benchmark::RegisterBenchmark("memory/softmax/causal/H8_d128_T32768", BM_memory_T32768)
      ->Iterations(1)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  return true;
}();

}  // namespace
