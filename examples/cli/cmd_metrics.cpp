// attnsink metrics — α_k per (layer, head) and Sink_k^ε as JSON, streamed from
// q and k (no tokens × tokens buffer) or read from materialized weights.
#include <attnsink/cpu.hpp>
#include <attnsink/metrics.hpp>

#include <cstdio>
#include <cstdlib>

#include "common.hpp"

namespace attnsink::cli {
namespace {

namespace M = attnsink::metrics;

// The library names its arguments; the user typed flags.
std::string flag_for(const std::string& argument) {
  static const std::map<std::string, std::string> flags = {
      {"q", "--q"},           {"k", "--k"},         {"probs", "--probs"}, {"options.eps", "--eps"},
      {"eps", "--eps"},       {"options.k", "--k-index"}, {"kstar", "--kstar"}, {"vstar", "--vstar"},
      {"sink", "--sink"},     {"t5_table", "--t5-table"}, {"window", "--mask"}, {"prefix", "--mask"},
      {"pos.base", "--rope-base"}, {"norm.alpha", "--alpha"}, {"score.cap", "--cap"},
      {"norm.bias", "--sigmoid-bias"}};
  const auto it = flags.find(argument);
  return it == flags.end() ? argument : it->second;
}

// Runs fn, renaming the argument of any attnsink error to the flag it came from.
template <class Fn>
auto with_flags(Fn&& fn) {
  auto message = [](const error& e) {
    const std::string w = e.what();
    return w.substr(std::min(w.size(), e.argument().size() + 2));
  };
  try {
    return fn();
  } catch (const shape_error& e) {
    throw shape_error(flag_for(e.argument()), message(e));
  } catch (const value_error& e) {
    throw value_error(flag_for(e.argument()), message(e));
  }
}

// The shortest decimal that reads back as the same double.
std::string num(double x) {
  char buf[32];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

void print_rows(const char* key, const std::vector<M::alpha_map>& layers, bool at_bias) {
  std::printf("  \"%s\": [", key);
  for (std::size_t l = 0; l < layers.size(); ++l) {
    std::printf("%s[", l ? ", " : "");
    for (std::size_t h = 0; h < layers[l].heads; ++h)
      std::printf("%s%s", h ? ", " : "", num(layers[l].head_mean(h, at_bias)).c_str());
    std::printf("]");
  }
  std::printf("]");
}

void print_json(const std::string& route, const std::string& variant, const std::string& mask_name,
                const M::options& opt, const std::vector<M::alpha_map>& layers) {
  const M::alpha_map& first = layers.front();
  std::printf("{\n  \"route\": \"%s\",\n", route.c_str());
  if (!variant.empty()) std::printf("  \"variant\": \"%s\",\n  \"mask\": \"%s\",\n", variant.c_str(), mask_name.c_str());
  std::printf("  \"proxy\": \"%s\",\n  \"eps\": %s,\n  \"k\": %zu,\n", M::name(first.weights), num(opt.eps).c_str(), opt.k);
  std::printf("  \"layers\": %zu,\n  \"samples\": %zu,\n  \"heads\": %zu,\n  \"tokens\": %zu,\n", layers.size(),
              first.samples, first.heads, first.tokens);
  std::printf("  \"sink_rate\": %s,\n", num(M::sink_rate(std::span<const M::alpha_map>(layers), opt.eps)).c_str());
  print_rows("alpha", layers, false);
  if (first.has_bias()) {
    std::printf(",\n  \"sink_rate_bias\": %s,\n", num(M::sink_rate(std::span<const M::alpha_map>(layers), opt.eps, true)).c_str());
    print_rows("alpha_bias", layers, true);
  }
  std::printf("\n}\n");
}

M::proxy parse_proxy(const std::string& s) {
  if (s == "none") return M::proxy::none;
  if (s == "nonnegative") return M::proxy::nonnegative;
  if (s == "absolute") return M::proxy::absolute;
  throw value_error("--proxy", "expected none, nonnegative or absolute, got '" + s + "'");
}

// (samples, heads, T, T [+1]) or (layers, samples, heads, T, T [+1]).
std::vector<M::alpha_map> from_probs(const args& a, const M::options& opt) {
  const npy::array<double> w = npy::read<double>(a.get("--probs"), "--probs");
  const auto& s = w.data.shape();
  const std::size_t rank = w.data.dimension();
  if (rank != 4 && rank != 5) {
    std::string shape;
    for (std::size_t i = 0; i < rank; ++i) shape += (i ? ", " : "") + std::to_string(s[i]);
    throw shape_error("--probs", "expected (samples, heads, T, T) or (layers, samples, heads, T, T), got shape (" +
                                     shape + ")");
  }
  const std::size_t layers = rank == 5 ? s[0] : 1, o = rank - 4, T = s[o + 2], cols = s[o + 3];
  if (cols != T && cols != T + 1)
    throw shape_error("--probs", "expected T × T weights (or T × (T + 1) with a kv-bias key at 0), got T = " +
                                     std::to_string(T) + " queries and " + std::to_string(cols) + " keys");
  const M::proxy px = a.has("--proxy") ? parse_proxy(a.get("--proxy")) : M::proxy::none;
  const std::size_t per_layer = s[o] * s[o + 1] * T * cols;
  std::vector<M::alpha_map> out;
  for (std::size_t l = 0; l < layers; ++l)
    out.push_back(with_flags([&] {
      return M::alphas(M::weights_view<double>{w.data.data() + l * per_layer, s[o], s[o + 1], T, cols == T + 1}, opt,
                       px);
    }));
  return out;
}

// Streams α from q, k and the row state of a cpu forward pass (float64).
std::vector<M::alpha_map> from_qk(const args& a, M::options opt) {
  const std::string variant = a.get("--variant");
  const npy::array<double> qa = npy::read<double>(a.get("--q"), "--q"), ka = npy::read<double>(a.get("--k"), "--k");
  const tensor4<const double> q = view4(qa, "--q"), k = view4(ka, "--k");
  if (k.tokens != q.tokens)
    throw shape_error("--k", "expected " + std::to_string(q.tokens) + " tokens (as --q), got " + std::to_string(k.tokens));
  std::map<std::string, param_file> files;
  const variants::settings s = read_settings(a, files);
  opt.weights = a.has("--raw") ? M::weighting::raw : M::weighting::paper;
  std::vector<M::alpha_map> out;
  const bool found = variants::visit(variant, s, [&](const auto& attn) {
    out.push_back(with_flags([&] {
      // The row state does not depend on v: one unit value column is enough.
      const std::vector<double> ones(k.batch * k.heads * k.tokens, 1.0);
      std::vector<double> o(q.batch * q.heads * q.tokens), m(o.size()), l(o.size());
      opt.check(q.tokens);  // before the forward pass, which is the slow part
      forward(backend::cpu{}, attn, q, k, tensor4<const double>(ones.data(), k.batch, k.heads, k.tokens, 1),
              tensor4<double>(o.data(), q.batch, q.heads, q.tokens, 1), row_stats<double>{m.data(), l.data()});
      return M::alphas_streamed(backend::cpu{}, attn, q, k, row_stats<const double>{m.data(), l.data()}, opt);
    }));
  });
  if (!found) throw value_error("--variant", "unknown variant '" + variant + "'; one of: " + variants::names());
  return out;
}

std::string mask_name(const args& a) { return a.has("--mask") ? a.get("--mask") : "causal"; }

}  // namespace

int cmd_metrics(int argc, char** argv) {
  std::vector<std::string> valued = variant_flags();
  for (const char* f : {"--q", "--k", "--probs", "--eps", "--k-index", "--proxy"}) valued.push_back(f);
  const args a = parse(argc, argv, {"--rope", "--raw"}, valued);
  M::options opt;
  if (a.has("--eps")) opt.eps = parse_number("--eps", a.get("--eps"));
  if (a.has("--k-index")) opt.k = parse_count("--k-index", a.get("--k-index"));
  std::vector<M::alpha_map> layers;
  if (a.has("--probs")) {
    for (const std::string& f : variant_flags())
      if (a.has(f)) throw value_error("--probs", "weights are read as they are; " + f + " applies to --q/--k only");
    for (const char* f : {"--q", "--k", "--rope", "--raw"})
      if (a.has(f)) throw value_error("--probs", std::string("takes no ") + f + " (give either --probs or --variant with --q, --k)");
    layers = from_probs(a, opt);
    print_json("weights", "", "", opt, layers);
  } else {
    if (a.has("--proxy")) throw value_error("--proxy", "applies to --probs; streamed variants pick the paper's proxy (or --raw)");
    layers = from_qk(a, opt);
    print_json("streaming", a.get("--variant"), mask_name(a), opt, layers);
  }
  return 0;
}

}  // namespace attnsink::cli
