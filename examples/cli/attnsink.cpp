// attnsink — run any named attention variant on .npy tensors.
//
//   attnsink list
//   attnsink run --variant NAME --q q.npy --k k.npy --v v.npy --out o.npy [options]
//
// Bad input exits with code 2 and one line naming the argument; no output
// file is written unless every step succeeded.
#include <attnsink/cpu.hpp>
#include <attnsink/npy.hpp>
#include <attnsink/variants.hpp>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <tbb/global_control.h>

namespace {

using namespace attnsink;

const char* usage =
    "usage:\n"
    "  attnsink list\n"
    "  attnsink run --variant NAME --q q.npy --k k.npy --v v.npy --out o.npy\n"
    "               [--mask causal|none|window:W|prefix:P] [--backend reference|cpu] [--rope] [--rope-base B]\n"
    "               [--sink s.npy] [--kstar k.npy] [--vstar v.npy] [--t5-table t.npy]\n"
    "               [--alpha A] [--cap C] [--sigmoid-bias B]\n"
    "               [--lse l.npy] [--stats s.npy] [--probs p.npy] [--threads N]\n"
    "\n"
    "Tensors are float32 or float64, shaped (batch, heads, tokens, head_dim); k and v may have fewer heads\n"
    "(grouped-query attention). Outputs keep q's dtype. The reference backend computes in float64, the cpu\n"
    "backend in float32. --lse writes (batch, heads, tokens) m + log l, --stats (batch, heads, tokens, 2) [m, l],\n"
    "--probs (reference only) the weights (batch, heads, tokens, keys [+1 for kv_bias, at index 0]).\n";

struct args {
  std::string command;
  std::map<std::string, std::string> opt;
  bool has(const std::string& k) const { return opt.count(k) != 0; }
  const std::string& get(const std::string& k) const {
    auto it = opt.find(k);
    if (it == opt.end()) throw value_error(k, "is required");
    return it->second;
  }
};

args parse(int argc, char** argv) {
  static const std::vector<std::string> flags = {"--rope"};
  static const std::vector<std::string> valued = {
      "--variant", "--q",     "--k",        "--v",    "--out",   "--mask",         "--backend",
      "--rope-base", "--sink", "--kstar",   "--vstar", "--t5-table", "--alpha", "--cap",
      "--sigmoid-bias", "--lse", "--stats", "--probs", "--threads"};
  args a;
  if (argc < 2) throw value_error("command", "expected 'list' or 'run'");
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    if (std::find(flags.begin(), flags.end(), k) != flags.end()) {
      a.opt[k] = "1";
    } else if (std::find(valued.begin(), valued.end(), k) != valued.end()) {
      if (i + 1 >= argc) throw value_error(k, "expects a value");
      a.opt[k] = argv[++i];
    } else {
      throw value_error(k, "unknown option (see 'attnsink --help')");
    }
  }
  return a;
}

double parse_number(const std::string& flag, const std::string& s) {
  try {
    std::size_t pos = 0;
    const double x = std::stod(s, &pos);
    if (pos != s.size() || !std::isfinite(x)) throw std::invalid_argument("");
    return x;
  } catch (const std::exception&) {
    throw value_error(flag, "expected a finite number, got '" + s + "'");
  }
}

std::size_t parse_count(const std::string& flag, const std::string& s) {
  const double x = parse_number(flag, s);
  if (x < 0 || x != std::floor(x)) throw value_error(flag, "expected a whole number >= 0, got '" + s + "'");
  return std::size_t(x);
}

mask::dynamic parse_mask(const std::string& s) {
  mask::dynamic m;
  using K = mask::dynamic::kind;
  if (s == "causal") m.which = K::causal;
  else if (s == "none") m.which = K::none;
  else if (s.rfind("window:", 0) == 0) {
    m.which = K::window;
    const double w = parse_number("--mask", s.substr(7));
    if (w < 1 || w != std::floor(w)) throw value_error("--mask", "expected window:W with a whole W >= 1, got '" + s + "'");
    m.param = std::size_t(w);
  } else if (s.rfind("prefix:", 0) == 0) {
    m.which = K::prefix;
    m.param = parse_count("--mask", s.substr(7));
  } else
    throw value_error("--mask", "expected causal, none, window:W or prefix:P, got '" + s + "'");
  return m;
}

template <class T>
tensor4<const T> view4(const npy::array<T>& a, const std::string& argument) {
  npy::require_rank(a, 4, argument, "(batch, heads, tokens, head_dim)");
  const auto& s = a.data.shape();
  return {a.data.data(), s[0], s[1], s[2], s[3]};
}

// A learnable parameter file read as double; `rank` dimensions expected.
struct param_file {
  npy::array<double> a;
  param_ref ref() const { return {a.data.data(), a.data.size()}; }
};

template <class T>
int run_typed(const args& a, const std::string& backend_name) {
  const std::string variant = a.get("--variant");
  const npy::array<T> qa = npy::read<T>(a.get("--q"), "--q"), ka = npy::read<T>(a.get("--k"), "--k"),
                      va = npy::read<T>(a.get("--v"), "--v");
  const auto q = view4(qa, "--q"), k = view4(ka, "--k"), v = view4(va, "--v");
  const std::string out_path = a.get("--out");

  variants::settings s;
  if (a.has("--mask")) s.mask = parse_mask(a.get("--mask"));
  s.rope.enabled = a.has("--rope");
  if (a.has("--rope-base")) s.rope.base = parse_number("--rope-base", a.get("--rope-base"));
  if (a.has("--alpha")) s.alpha = parse_number("--alpha", a.get("--alpha"));
  if (a.has("--cap")) s.cap = parse_number("--cap", a.get("--cap"));
  if (a.has("--sigmoid-bias")) s.sigmoid_bias = parse_number("--sigmoid-bias", a.get("--sigmoid-bias"));
  std::map<std::string, param_file> params;
  for (const char* f : {"--sink", "--kstar", "--vstar", "--t5-table"})
    if (a.has(f)) params[f].a = npy::read<double>(a.get(f), f);
  if (params.count("--sink")) {
    npy::require_rank(params["--sink"].a, 1, "--sink", "(heads)");
    s.sink = params["--sink"].ref();
  }
  if (params.count("--kstar")) {
    npy::require_rank(params["--kstar"].a, 2, "--kstar", "(kv_heads, head_dim)");
    s.kstar = params["--kstar"].ref();
  }
  if (params.count("--vstar")) {
    npy::require_rank(params["--vstar"].a, 2, "--vstar", "(kv_heads, value_dim)");
    s.vstar = params["--vstar"].ref();
  }
  if (params.count("--t5-table")) {
    npy::require_rank(params["--t5-table"].a, 2, "--t5-table", "(heads, 32)");
    s.t5_table = params["--t5-table"].ref();
  }
  if (a.has("--probs") && backend_name != "reference")
    throw value_error("--probs", "the weights come from the reference backend only (add --backend reference)");

  xt::xarray<T> out = xt::zeros<T>({q.batch, q.heads, q.tokens, v.dim});
  xt::xarray<T> m = xt::zeros<T>({q.batch, q.heads, q.tokens}), l = m;
  xt::xarray<T> probs;
  tensor4<T> o(out.data(), q.batch, q.heads, q.tokens, v.dim);
  row_stats<T> st{m.data(), l.data()};
  const bool found = variants::visit(variant, s, [&](const auto& attn) {
    using A = std::decay_t<decltype(attn)>;
    if (backend_name == "reference") {
      probs_view<T> pv;
      if (a.has("--probs")) {
        probs = xt::zeros<T>({q.batch, q.heads, q.tokens, k.tokens + (A::bias_type::has_kv ? 1 : 0)});
        pv.data = probs.data();
      }
      forward(backend::reference{}, attn, q, k, v, o, st, pv);
    } else {
      forward(backend::cpu{}, attn, q, k, v, o, st);
    }
  });
  if (!found) throw value_error("--variant", "unknown variant '" + variant + "'; one of: " + variants::names());

  const npy::dtype as = qa.stored;
  npy::write(out_path, "--out", out, as);
  if (a.has("--lse")) {
    xt::xarray<T> lse = m + xt::log(l);
    npy::write(a.get("--lse"), "--lse", lse, as);
  }
  if (a.has("--stats")) {
    xt::xarray<T> both = xt::stack(xt::xtuple(m, l), 3);
    npy::write(a.get("--stats"), "--stats", both, as);
  }
  if (a.has("--probs")) npy::write(a.get("--probs"), "--probs", probs, as);
  return 0;
}

int list() {
  std::printf("%-28s %s\n", "variant", "formula (s = score, j over the keys a query sees)");
  variants::for_each([](auto v) { std::printf("%-28s %s\n", decltype(v)::name, decltype(v)::formula); });
  std::printf("\nEvery variant takes --rope (RoPE, rotate-half, base 10000, positions 0..T-1; k* never rotated)\n"
              "and --mask causal|none|window:W|prefix:P.\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
      std::cout << usage;
      return 0;
    }
    const args a = parse(argc, argv);
    if (a.command == "list") return list();
    if (a.command != "run") throw value_error("command", "expected 'list' or 'run', got '" + a.command + "'");
    std::optional<tbb::global_control> threads;
    if (a.has("--threads")) {
      const std::size_t n = parse_count("--threads", a.get("--threads"));
      if (n < 1) throw value_error("--threads", "expected at least 1");
      threads.emplace(tbb::global_control::max_allowed_parallelism, n);
    }
    const std::string backend = a.has("--backend") ? a.get("--backend") : "cpu";
    if (backend == "reference") return run_typed<double>(a, backend);
    if (backend == "cpu") return run_typed<float>(a, backend);
    throw value_error("--backend", "expected reference or cpu, got '" + backend + "'");
  } catch (const attnsink::error& e) {
    std::fprintf(stderr, "attnsink: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnsink: error: %s\n", e.what());
    return 2;
  }
}
