// attnsink_bench, trainer part: one optimizer step of a small LM.
//
// Shape from issue 6: 4 layers, d = 128, 4 heads, context 256, batch 32
// sequences, Bigram-Backcopy tokens. Counters: tokens_per_s; GFLOPS with model
// FLOPs = 6 × (parameters − the embedding table, whose lookup is no product) ×
// tokens + attention FLOPs (causal forward 2·T²·d per sequence and layer, × 3.5
// for forward + backward at 2.5 × forward); MFU = GFLOPS over the FMA peak
// measured in this process (BM_fma_peak). On a shared machine the wall clock
// also counts other processes' time: cpu_GFLOPS is the same FLOPs per second
// of this process's CPU time, and cpu_MFU that over the FMA peak per CPU
// second (measured here too) times the thread count, i.e. the share of the
// CPU time it used that went into model FLOPs.
//
// Debian 12's OpenBLAS (0.3.21) misdetects some current CPUs and falls back to
// SSE3 kernels; attnsink-train re-executes itself with OPENBLAS_CORETYPE=SkylakeX
// on AVX-512 machines (Haswell on AVX2+FMA ones), this benchmark does not. Run it as
//   OPENBLAS_CORETYPE=SkylakeX attnsink_bench --benchmark_filter='BM_fma_peak|train_step'
// to measure what the trainer runs on this machine.
#include <benchmark/benchmark.h>

#include <chrono>

#include <tbb/global_control.h>

#include <attnsink/backend/cpu_backward.hpp>
#include <attnsink/cpu.hpp>
#include <attnsink/train/trainer.hpp>
#include <attnsink/variants.hpp>

#include "bench_common.hpp"

namespace {

using namespace attnsink;
using namespace attnsink::train;

template <class V>
void BM_train_step(benchmark::State& state) {
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, bench::threads());
  model_config c;
  c.layers = 4;
  c.d_model = 128;
  c.heads = 4;
  c.kv_heads = 4;
  c.ffn = 256;
  c.ctx = 256;
  c.rope = true;
  const bigram_backcopy data;
  c.vocab = data.vocab();
  const std::size_t batch_size = 32;
  variants::settings vs;
  vs.rope.enabled = true;
  auto attn = variants::make<V>(vs);
  attn.mask = {mask::dynamic::kind::causal, 0};
  model<typename V::type, backend::cpu, float> m(c, attn);
  m.init(1);
  optim_config oc;
  adamw<float> opt(m.parameter_count());
  std::size_t step = 0;
  const double peak = bench::peak_gflops();  // measured before the clock starts
  double cpu_peak = 0;                       // FMA GFLOP per CPU second, summed over the threads
  bench::fma_gflops(bench::threads(), 20'000'000, &cpu_peak);
  const double c0 = bench::process_cpu_seconds();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const batch b = data.make_batch(1, step, batch_size, c.ctx, split::train, {});
    const float loss = m.forward(b.ids, b.targets, b.loss_mask, b.size, b.tokens);
    m.backward();
    adamw<float>::clip_norm(m.grads(), oc.clip);
    opt.step(m.params(), m.grads(), oc, oc.rate(step++));
    benchmark::DoNotOptimize(loss);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu_seconds = bench::process_cpu_seconds() - c0;
  const double tokens = double(batch_size * c.ctx) * double(state.iterations());
  const double dense = 6.0 * double(m.parameter_count() - c.vocab * c.d_model);
  const double attention = 3.5 * 2.0 * double(c.ctx) * double(c.d_model) * double(c.layers);  // per token
  const double gflops = tokens * (dense + attention) * 1e-9 / seconds;
  state.counters["tokens_per_s"] = tokens / seconds;
  state.counters["GFLOPS"] = gflops;
  state.counters["MFU"] = gflops / peak;
  const double cpu_gflops = tokens * (dense + attention) * 1e-9 / cpu_seconds;
  state.counters["cpu_GFLOPS"] = cpu_gflops;
  state.counters["cpu_MFU"] = cpu_gflops / (cpu_peak / double(bench::threads()));
  state.counters["parameters"] = double(m.parameter_count());
}

void configure(benchmark::internal::Benchmark* b) { b->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(3.0); }

[[maybe_unused]] const bool registered = [] {
  configure(benchmark::RegisterBenchmark("train_step/softmax/L4_d128_H4_ctx256_B32", BM_train_step<variants::softmax>));
  configure(benchmark::RegisterBenchmark("train_step/sigmoid/L4_d128_H4_ctx256_B32", BM_train_step<variants::sigmoid>));
  return true;
}();

}  // namespace
