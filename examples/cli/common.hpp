// examples/cli/common.hpp — argument parsing and conversions shared by the
// attnsink CLI's subcommands. Every problem is an attnsink::error naming the
// flag; main() turns it into exit code 2 and one line.
#pragma once

#include <attnsink/attnsink.hpp>
#include <attnsink/npy.hpp>
#include <attnsink/variants.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace attnsink::cli {

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

// Parses argv[2..] as --flag [value] pairs: `flags` take no value, `valued` one.
inline args parse(int argc, char** argv, const std::vector<std::string>& flags,
                  const std::vector<std::string>& valued) {
  args a;
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    if (std::find(flags.begin(), flags.end(), k) != flags.end()) {
      a.opt[k] = "1";
    } else if (std::find(valued.begin(), valued.end(), k) != valued.end()) {
      if (i + 1 >= argc) throw value_error(k, "expects a value");
      a.opt[k] = argv[++i];
    } else {
      throw value_error(k, "unknown option for '" + a.command + "' (see 'attnsink --help')");
    }
  }
  return a;
}

inline double parse_number(const std::string& flag, const std::string& s) {
  try {
    std::size_t pos = 0;
    const double x = std::stod(s, &pos);
    if (pos != s.size() || !std::isfinite(x)) throw std::invalid_argument("");
    return x;
  } catch (const std::exception&) {
    throw value_error(flag, "expected a finite number, got '" + s + "'");
  }
}

inline std::size_t parse_count(const std::string& flag, const std::string& s) {
  const double x = parse_number(flag, s);
  if (x < 0 || x != std::floor(x)) throw value_error(flag, "expected a whole number >= 0, got '" + s + "'");
  return std::size_t(x);
}

inline mask::dynamic parse_mask(const std::string& s) {
  mask::dynamic m;
  using K = mask::dynamic::kind;
  if (s == "causal") {
    m.which = K::causal;
  } else if (s == "none") {
    m.which = K::none;
  } else if (s.rfind("window:", 0) == 0) {
    m.which = K::window;
    const double w = parse_number("--mask", s.substr(7));
    if (w < 1 || w != std::floor(w)) throw value_error("--mask", "expected window:W with a whole W >= 1, got '" + s + "'");
    m.param = std::size_t(w);
  } else if (s.rfind("prefix:", 0) == 0) {
    m.which = K::prefix;
    m.param = parse_count("--mask", s.substr(7));
  } else {
    throw value_error("--mask", "expected causal, none, window:W or prefix:P, got '" + s + "'");
  }
  return m;
}

// A (batch, heads, tokens, head_dim) view of a read array.
template <class T>
tensor4<const T> view4(const npy::array<T>& a, const std::string& argument) {
  npy::require_rank(a, 4, argument, "(batch, heads, tokens, head_dim)");
  const auto& s = a.data.shape();
  return {a.data.data(), s[0], s[1], s[2], s[3]};
}

// A learnable parameter read from a file, kept alive for the settings that point at it.
struct param_file {
  npy::array<double> a;
  param_ref ref() const { return {a.data.data(), a.data.size()}; }
};

// The flags read_settings understands, for parse().
inline const std::vector<std::string>& variant_flags() {
  static const std::vector<std::string> f = {"--variant", "--mask",  "--rope-base", "--sink",
                                             "--kstar",   "--vstar", "--t5-table",  "--alpha",
                                             "--cap",     "--sigmoid-bias"};
  return f;
}

// Reads --mask, --rope, --rope-base, --alpha, --cap, --sigmoid-bias and the
// parameter files (--sink, --kstar, --vstar, --t5-table) into variant settings.
// `files` keeps the parameter arrays alive while the settings are in use.
inline variants::settings read_settings(const args& a, std::map<std::string, param_file>& files) {
  variants::settings s;
  if (a.has("--mask")) s.mask = parse_mask(a.get("--mask"));
  s.rope.enabled = a.has("--rope");
  if (a.has("--rope-base")) s.rope.base = parse_number("--rope-base", a.get("--rope-base"));
  if (a.has("--alpha")) s.alpha = parse_number("--alpha", a.get("--alpha"));
  if (a.has("--cap")) s.cap = parse_number("--cap", a.get("--cap"));
  if (a.has("--sigmoid-bias")) s.sigmoid_bias = parse_number("--sigmoid-bias", a.get("--sigmoid-bias"));
  struct spec {
    const char* flag;
    std::size_t rank;
    const char* dims;
    param_ref variants::settings::*field;
  };
  for (const spec& p : {spec{"--sink", 1, "(heads)", &variants::settings::sink},
                        spec{"--kstar", 2, "(kv_heads, head_dim)", &variants::settings::kstar},
                        spec{"--vstar", 2, "(kv_heads, value_dim)", &variants::settings::vstar},
                        spec{"--t5-table", 2, "(heads, 32)", &variants::settings::t5_table}}) {
    if (!a.has(p.flag)) continue;
    param_file& f = files[p.flag];
    f.a = npy::read<double>(a.get(p.flag), p.flag);
    npy::require_rank(f.a, p.rank, p.flag, p.dims);
    s.*(p.field) = f.ref();
  }
  return s;
}

// Subcommands, each in its own translation unit (cmd_*.cpp).
int cmd_list(int argc, char** argv);
int cmd_run(int argc, char** argv);
int cmd_metrics(int argc, char** argv);
int cmd_grad(int argc, char** argv);

}  // namespace attnsink::cli
