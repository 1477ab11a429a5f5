// attnsink — run named attention variants on .npy tensors from the shell.
//
// Bad input exits with code 2 and one line naming the argument; output files
// are written only after every step succeeded.
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include <tbb/global_control.h>

#include "common.hpp"

namespace {

const char* usage =
    "usage:\n"
    "  attnsink list\n"
    "  attnsink run --variant NAME --q q.npy --k k.npy --v v.npy --out o.npy\n"
    "               [--mask causal|none|window:W|prefix:P] [--backend reference|cpu] [--rope] [--rope-base B]\n"
    "               [--sink s.npy] [--kstar k.npy] [--vstar v.npy] [--t5-table t.npy]\n"
    "               [--alpha A] [--cap C] [--sigmoid-bias B] [--lse l.npy] [--stats s.npy] [--probs p.npy]\n"
    "  attnsink metrics --variant NAME --q q.npy --k k.npy [--mask ...] [--rope] [variant flags as for run]\n"
    "               [--eps 0.3] [--k-index 1] [--raw]\n"
    "  attnsink metrics --probs a.npy [--eps 0.3] [--k-index 1] [--proxy none|nonnegative|absolute]\n"
    "  attnsink grad --variant NAME --q q.npy --k k.npy --v v.npy --dout dO.npy --dq dq.npy --dk dk.npy\n"
    "               --dv dv.npy [--dsink ds.npy] [--dkstar dk.npy] [--dvstar dv.npy] [--dt5-table dt.npy]\n"
    "               [--backend reference|cpu] [--mask ...] [--rope] [variant flags as for run]\n"
    "  (any command) [--threads N]\n"
    "\n"
    "Tensors are float32 or float64 .npy, shaped (batch, heads, tokens, head_dim); k and v may have fewer\n"
    "heads (grouped-query attention). Outputs keep q's dtype. The reference backend computes in float64,\n"
    "the cpu backend in float32. --lse writes (batch, heads, tokens) m + log l; --stats (batch, heads,\n"
    "tokens, 2) the row state [m, l]; --probs (reference only) the weights (batch, heads, tokens, keys),\n"
    "with the kv_bias key, when there is one, at index 0.\n"
    "metrics prints JSON: alpha_k per (layer, head) averaged over samples and Sink_k^eps (the share of\n"
    "(sample, layer, head) with alpha_k > eps); streamed from q, k (samples, heads, T, d) without a T x T\n"
    "buffer, or read from weights (samples, heads, T, T) or (layers, samples, heads, T, T); a last extent\n"
    "of T + 1 holds a kv-bias key at index 0 (alpha_bias, sink_rate_bias = Sink*). Variants whose weights\n"
    "do not sum to one are read through the paper's proxy unless --raw.\n"
    "grad writes dL/dq, dL/dk, dL/dv (shapes of q, k, v; grouped kv heads summed) for dO = dL/d out, and\n"
    "each requested parameter gradient in the shape of its parameter file (--dsink needs --sink, ...).\n";

struct command {
  const char* name;
  int (*fn)(int, char**);
};
const command commands[] = {
    {"list", attnsink::cli::cmd_list},
    {"run", attnsink::cli::cmd_run},
    {"metrics", attnsink::cli::cmd_metrics},
    {"grad", attnsink::cli::cmd_grad},
};

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
      std::fputs(usage, argc < 2 ? stderr : stdout);
      return argc < 2 ? 2 : 0;
    }
    // --threads applies to every command: take it out before the command parses.
    std::optional<tbb::global_control> threads;
    for (int i = 2; i + 1 < argc; ++i)
      if (!std::strcmp(argv[i], "--threads")) {
        const std::size_t n = attnsink::cli::parse_count("--threads", argv[i + 1]);
        if (n < 1) throw attnsink::value_error("--threads", "expected at least 1");
        threads.emplace(tbb::global_control::max_allowed_parallelism, n);
        for (int j = i; j + 2 < argc; ++j) argv[j] = argv[j + 2];
        argc -= 2;
        break;
      }
    for (const command& c : commands)
      if (!std::strcmp(argv[1], c.name)) return c.fn(argc, argv);
    throw attnsink::value_error("command", std::string("unknown command '") + argv[1] + "' (see 'attnsink --help')");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnsink: error: %s\n", e.what());
    return 2;
  }
}
