// attnsink-train — train a tiny decoder-only LM with any attention variant
// and log how its attention sinks form.
//
//   attnsink-train --variant softmax --synthetic bigram-backcopy --layers 2 --d-model 128 --heads 1 \
//                  --ctx 64 --batch 512 --lr 3e-4 --wd 1e-4 --steps 600 --metrics-every 50 --log softmax.jsonl
//
// Bad input exits with status 2 and one line naming the flag.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <unistd.h>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <tbb/global_control.h>

#include "train.hpp"

namespace {

using namespace attnsink;
using namespace attnsink::train;

const char* usage = R"(usage: attnsink-train [options]

model:     --variant NAME (default softmax; see below)  --layers N (2)  --d-model D (128)  --heads H (4)
           --kv-heads K (= heads)  --ffn F (2·d)  --ctx T (64)  --batch B (32)
           --pos nope|rope|alibi|t5|sinusoidal|learned (nope)  --norm pre|post (pre)
           --ffn-act swiglu|relu|gelu|swish|reglu|geglu (swiglu)  --gate  --learn-vstar
optimizer: --lr X (3e-4)  --warmup N (100)  --wd X (0.1)  --clip X (1.0, 0 = off)  --schedule constant|cosine
data:      --data FILE...  |  --synthetic bigram-backcopy
           --fix-token POS[:ID]  --random-tokens S:E  --prefix-lm P  --window W
run:       --steps N (1000, the total)  --seed N (1)  --threads N  --eval-every N (100)  --metrics-every N (100)
           --log-every N (10: progress line and JSONL record)
           --log run.jsonl  --ckpt DIR  --ckpt-every N (0: only at the end)  --resume  --quiet
           --stop-at N (stop and checkpoint after step N; the schedule still spans --steps)
           --dump-attention FILE.npy (after training: (layers, heads, T, keys) attention on a held-out sequence)

variants: )";

std::size_t count(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end || v < 0) throw value_error(flag, "expected a whole number >= 0, got '" + s + "'");
  return std::size_t(v);
}
double number(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end || !std::isfinite(v)) throw value_error(flag, "expected a finite number, got '" + s + "'");
  return v;
}
template <class E>
E choose(const std::string& flag, const std::string& s, const std::vector<std::pair<const char*, E>>& options) {
  std::string all;
  for (const auto& [name, value] : options) {
    if (s == name) return value;
    all += (all.empty() ? "" : ", ") + std::string(name);
  }
  throw value_error(flag, "expected one of " + all + ", got '" + s + "'");
}

using train_fn = int (*)(const run_setup&);
const std::map<std::string, train_fn>& registry() {
#define ATTNSINK_ENTRY(name) {#name, &train_##name},
  static const std::map<std::string, train_fn> r = {ATTNSINK_TRAIN_VARIANTS(ATTNSINK_ENTRY)};
#undef ATTNSINK_ENTRY
  return r;
}

int run(int argc, char** argv) {
  run_setup s;
  run_config& c = s.cfg;
  std::vector<std::string> files;
  std::string synthetic, pos = "nope", threads;
  std::size_t ffn = 0, kv = 0;
  bool steps_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw value_error(f, "expects a value");
      return argv[++i];
    };
    if (f == "--help" || f == "-h") {
      std::fputs(usage, stdout);
      for (const auto& [name, fn] : registry()) std::printf("%s ", name.c_str());
      std::printf("\n");
      return 0;
    }
    if (f == "--variant") c.variant = value();
    else if (f == "--layers") c.model.layers = count(f, value());
    else if (f == "--d-model") c.model.d_model = count(f, value());
    else if (f == "--heads") c.model.heads = count(f, value());
    else if (f == "--kv-heads") kv = count(f, value());
    else if (f == "--ffn") ffn = count(f, value());
    else if (f == "--ctx") c.model.ctx = count(f, value());
    else if (f == "--batch") c.batch = count(f, value());
    else if (f == "--pos") pos = value();
    else if (f == "--norm") c.model.norm = choose<norm_place>(f, value(), {{"pre", norm_place::pre}, {"post", norm_place::post}});
    else if (f == "--ffn-act")
      c.model.act = choose<ffn_act>(f, value(), {{"swiglu", ffn_act::swiglu}, {"relu", ffn_act::relu}, {"gelu", ffn_act::gelu},
                                                 {"swish", ffn_act::swish}, {"reglu", ffn_act::reglu}, {"geglu", ffn_act::geglu}});
    else if (f == "--gate") c.model.gate = true;
    else if (f == "--learn-vstar") c.model.learn_vstar = true;
    else if (f == "--lr") c.opt.lr = number(f, value());
    else if (f == "--warmup") c.opt.warmup = count(f, value());
    else if (f == "--wd") c.opt.weight_decay = number(f, value());
    else if (f == "--clip") c.opt.clip = number(f, value());
    else if (f == "--schedule") c.opt.sched = choose<schedule>(f, value(), {{"constant", schedule::constant}, {"cosine", schedule::cosine}});
    else if (f == "--data") {
      while (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0) files.push_back(argv[++i]);
      if (files.empty()) throw value_error(f, "expects at least one file");
    } else if (f == "--synthetic") synthetic = value();
    else if (f == "--fix-token") {
      const std::string v = value();
      const auto colon = v.find(':');
      c.tr.fix_pos = long(count(f, v.substr(0, colon)));
      if (colon != std::string::npos) c.tr.fix_id = std::int32_t(count(f, v.substr(colon + 1)));
    } else if (f == "--random-tokens") {
      const std::string v = value();
      const auto colon = v.find(':');
      if (colon == std::string::npos) throw value_error(f, "expected S:E, got '" + v + "'");
      c.tr.rand_begin = long(count(f, v.substr(0, colon)));
      c.tr.rand_end = long(count(f, v.substr(colon + 1)));
      if (c.tr.rand_end <= c.tr.rand_begin) throw value_error(f, "expected S < E, got '" + v + "'");
    } else if (f == "--prefix-lm") c.tr.prefix_lm = count(f, value());
    else if (f == "--window") {
      c.window = count(f, value());
      if (c.window < 1) throw value_error(f, "expected a window of at least 1");
    } else if (f == "--steps") {
      c.opt.steps = count(f, value());
      steps_set = true;
    } else if (f == "--seed") c.seed = count(f, value());
    else if (f == "--threads") threads = value();
    else if (f == "--eval-every") c.eval_every = count(f, value());
    else if (f == "--metrics-every") c.metrics_every = count(f, value());
    else if (f == "--log-every") c.log_every = count(f, value());
    else if (f == "--log") c.log_path = value();
    else if (f == "--ckpt") c.ckpt_dir = value();
    else if (f == "--ckpt-every") c.ckpt_every = count(f, value());
    else if (f == "--resume") c.resume = true;
    else if (f == "--stop-at") c.stop_at = count(f, value());
    else if (f == "--quiet") c.quiet = true;
    else if (f == "--dump-attention") s.dump_attention = value();
    else throw value_error(f, "unknown option (see attnsink-train --help)");
  }
  (void)steps_set;
  c.model.ffn = ffn ? ffn : 2 * c.model.d_model;
  c.model.kv_heads = kv ? kv : c.model.heads;
  if (c.model.heads == 0 || c.model.d_model % c.model.heads)
    throw value_error("--heads", "expected a divisor of --d-model (" + std::to_string(c.model.d_model) + ")");
  if (c.model.heads % c.model.kv_heads) throw value_error("--kv-heads", "expected a divisor of --heads");
  // Positions: rope and the absolute schemes work with every variant; ALiBi and
  // T5 biases are the alibi and t5_relative variants (softmax with that bias).
  if (pos == "rope") c.model.rope = true;
  else if (pos == "sinusoidal") c.model.pos = abs_pos::sinusoidal;
  else if (pos == "learned") c.model.pos = abs_pos::learned;
  else if (pos == "alibi" || pos == "t5") {
    const std::string want = pos == "alibi" ? "alibi" : "t5_relative";
    if (c.variant != "softmax" && c.variant != want)
      throw value_error("--pos", pos + " is the " + want + " variant (softmax with that bias); use --variant softmax");
    c.variant = want;
  } else if (pos != "nope") {
    throw value_error("--pos", "expected nope, rope, alibi, t5, sinusoidal or learned, got '" + pos + "'");
  }
  if (c.model.rope && c.model.head_dim() % 2) throw value_error("--pos", "rope needs an even head dimension");
  const auto it = registry().find(c.variant);
  if (it == registry().end()) throw value_error("--variant", "unknown variant '" + c.variant + "' (see --help)");
  if (c.model.learn_vstar && c.variant != "kv_bias") throw value_error("--learn-vstar", "needs --variant kv_bias");
  if (!files.empty() && !synthetic.empty()) throw value_error("--data", "give either --data or --synthetic, not both");
  if (!synthetic.empty()) {
    if (synthetic != "bigram-backcopy") throw value_error("--synthetic", "expected bigram-backcopy, got '" + synthetic + "'");
    s.data = std::make_unique<bigram_backcopy>();
  } else if (!files.empty()) {
    s.data = std::make_unique<text_dataset>(files, c.model.ctx);
  } else {
    throw value_error("--data", "expected --data FILE... or --synthetic bigram-backcopy");
  }
  c.model.vocab = s.data->vocab();
  if (c.tr.fix_pos >= long(c.model.ctx)) throw value_error("--fix-token", "position outside the context");
  if (c.tr.fix_id >= std::int32_t(c.model.vocab)) throw value_error("--fix-token", "token id outside the vocabulary");
  if (c.tr.rand_end > long(c.model.ctx) + 1) throw value_error("--random-tokens", "range outside the context");
  std::optional<tbb::global_control> tc;
  if (!threads.empty()) {
    const std::size_t n = count("--threads", threads);
    if (n < 1) throw value_error("--threads", "expected at least 1");
    tc.emplace(tbb::global_control::max_allowed_parallelism, n);
  }
  return it->second(s);
}

}  // namespace

// Debian 12's OpenBLAS (0.3.21) does not recognize some current x86-64 CPUs
// (Sapphire Rapids among them) and falls back to its SSE3 ("Prescott")
// kernels, 2-3x slower here. When the user has not chosen a core type, run
// again with the best kernels the CPU can run: SkylakeX (AVX-512: F, BW, DQ,
// VL) or Haswell (AVX2+FMA). On this machine the SkylakeX sgemm does the
// trainer's products in 0.55-0.65 of the time of the Haswell one, and the
// trainer's tests pass with either.
void prefer_vector_blas(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE")) return;
  const char* core = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    core = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    core = "Haswell";
  if (!core) return;
  setenv("OPENBLAS_CORETYPE", core, 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then carry on as we are
}

int main(int argc, char** argv) {
  prefer_vector_blas(argv);
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnsink-train: error: %s\n", e.what());
    return 2;
  }
}
