// The attnsink CLI as a NumPy user drives it: .npy in, .npy out, exit code 2
// and one line on bad input, output files untouched then.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <attnsink/cpu.hpp>
#include <attnsink/npy.hpp>
#include <attnsink/variants.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <sys/wait.h>
#include <xtensor/xnpy.hpp>

#include "common.hpp"

using namespace attnsink;
namespace fs = std::filesystem;

namespace {

struct outcome {
  int code;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class workdir {
 public:
  workdir() : dir_(fs::temp_directory_path() / ("attnsink-cli-" + std::to_string(::getpid()) + "-" + std::to_string(n_++))) {
    fs::create_directories(dir_);
  }
  ~workdir() { fs::remove_all(dir_); }
  std::string operator/(const std::string& name) const { return (dir_ / name).string(); }
  outcome run(const std::string& args) const {
    const std::string cmd = std::string(ATTNSINK_CLI) + " " + args + " >" + (*this / "stdout") + " 2>" + (*this / "stderr");
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(*this / "stdout"), slurp(*this / "stderr")};
  }

 private:
  fs::path dir_;
  static inline int n_ = 0;
};

template <class T>
xt::xarray<T> random_array(std::vector<std::size_t> shape, std::uint64_t seed) {
  std::size_t n = 1;
  for (auto s : shape) n *= s;
  const auto v = test::round_to_float(test::random_vector(n, seed));
  xt::xarray<T> a = xt::zeros<T>(shape);
  std::copy(v.begin(), v.end(), a.begin());
  return a;
}

}  // namespace

TEST_CASE("attnsink list prints every named variant with its formula", "[cli]") {
  workdir w;
  const outcome r = w.run("list");
  REQUIRE(r.code == 0);
  variants::for_each([&](auto v) {
    CHECK_THAT(r.out, Catch::Matchers::ContainsSubstring(std::string(decltype(v)::name) + " "));
    CHECK_THAT(r.out, Catch::Matchers::ContainsSubstring(decltype(v)::formula));
  });
}

TEST_CASE("attnsink run: float32, grouped-query heads, cpu backend", "[cli]") {
  workdir w;
  const auto q = random_array<float>({2, 4, 33, 16}, 1), k = random_array<float>({2, 2, 33, 16}, 2),
             v = random_array<float>({2, 2, 33, 16}, 3);
  xt::dump_npy(w / "q.npy", q);
  xt::dump_npy(w / "k.npy", k);
  xt::dump_npy(w / "v.npy", v);
  for (const std::string mask : {"causal", "none", "window:5", "prefix:10"}) {
    INFO(mask);
    const outcome r = w.run("run --variant alibi --rope --mask " + mask + " --q " + (w / "q.npy") + " --k " + (w / "k.npy") +
                            " --v " + (w / "v.npy") + " --out " + (w / "o.npy") + " --lse " + (w / "lse.npy") + " --threads 2");
    REQUIRE(r.code == 0);
    const auto o = npy::read<double>(w / "o.npy", "o");
    CHECK(o.stored == npy::dtype::float32);
    REQUIRE(o.data.shape() == std::vector<std::size_t>{2, 4, 33, 16});
    // The same call through the library, in double.
    variants::settings s;
    s.rope.enabled = true;
    const std::vector<std::size_t> params = {0, 0, 5, 10};
    const std::size_t which = mask == "causal" ? 1 : mask == "none" ? 0 : mask[0] == 'w' ? 2 : 3;
    s.mask = {mask::dynamic::kind(which), params[which]};
    const xt::xarray<double> qd = q, kd = k, vd = v;
    std::vector<double> ref(2 * 4 * 33 * 16), m(2 * 4 * 33), l(m.size());
    forward(backend::reference{}, variants::make<variants::alibi>(s), tensor4<const double>(qd.data(), 2, 4, 33, 16),
            tensor4<const double>(kd.data(), 2, 2, 33, 16), tensor4<const double>(vd.data(), 2, 2, 33, 16),
            tensor4<double>(ref.data(), 2, 4, 33, 16), row_stats<double>{m.data(), l.data()});
    const std::vector<double> got(o.data.begin(), o.data.end());
    CHECK(test::rel_l2(got, ref) <= 1e-5);
    const auto lse = npy::read<double>(w / "lse.npy", "lse");
    REQUIRE(lse.data.shape() == std::vector<std::size_t>{2, 4, 33});
    for (std::size_t i = 0; i < m.size(); ++i) CHECK(std::abs(lse.data.data()[i] - (m[i] + std::log(l[i]))) < 1e-4);
  }
}

TEST_CASE("attnsink run: float64 on the reference backend writes weights and state", "[cli]") {
  workdir w;
  xt::dump_npy(w / "q.npy", random_array<double>({1, 2, 10, 8}, 4));
  xt::dump_npy(w / "k.npy", random_array<double>({1, 1, 10, 8}, 5));
  xt::dump_npy(w / "v.npy", random_array<double>({1, 1, 10, 8}, 6));
  xt::dump_npy(w / "kstar.npy", random_array<double>({1, 8}, 7));
  const outcome r = w.run("run --variant kv_bias --backend reference --q " + (w / "q.npy") + " --k " + (w / "k.npy") +
                          " --v " + (w / "v.npy") + " --out " + (w / "o.npy") + " --kstar " + (w / "kstar.npy") +
                          " --probs " + (w / "p.npy") + " --stats " + (w / "s.npy"));
  REQUIRE(r.code == 0);
  const auto p = npy::read<double>(w / "p.npy", "p");
  CHECK(p.stored == npy::dtype::float64);
  REQUIRE(p.data.shape() == std::vector<std::size_t>{1, 2, 10, 11});  // k* at column 0
  for (std::size_t h = 0; h < 2; ++h)
    for (std::size_t t = 0; t < 10; ++t) {
      double sum = 0;
      for (std::size_t j = 0; j < 11; ++j) sum += p.data(0, h, t, j);
      CHECK(std::abs(sum - 1.0) < 1e-12);
      CHECK(p.data(0, h, t, 0) > 0.0);                               // the bias key is always visible
      if (t + 2 < 11) CHECK(p.data(0, h, t, t + 2) == 0.0);         // causal: key t+1 hidden
    }
  const auto s = npy::read<double>(w / "s.npy", "s");
  CHECK(s.data.shape() == std::vector<std::size_t>{1, 2, 10, 2});
  const auto o = npy::read<double>(w / "o.npy", "o");
  CHECK(o.stored == npy::dtype::float64);
}

TEST_CASE("attnsink: bad input exits 2 with one line and leaves files untouched", "[cli][errors]") {
  workdir w;
  xt::dump_npy(w / "q.npy", random_array<float>({1, 4, 6, 8}, 8));
  xt::dump_npy(w / "k.npy", random_array<float>({1, 3, 6, 8}, 9));
  xt::dump_npy(w / "k2.npy", random_array<float>({1, 2, 6, 8}, 10));
  xt::dump_npy(w / "v.npy", random_array<float>({1, 2, 6, 8}, 11));
  xt::dump_npy(w / "v3.npy", random_array<float>({2, 6, 8}, 12));
  xt::xarray<std::int64_t> ints = xt::ones<std::int64_t>({1, 4, 6, 8});
  xt::dump_npy(w / "ints.npy", ints);
  {
    const std::string full = slurp(w / "q.npy");
    std::ofstream(w / "trunc.npy", std::ios::binary) << full.substr(0, full.size() - 40);
    std::ofstream(w / "junk.npy") << "not a numpy file at all\n";
  }
  std::ofstream(w / "o.npy") << "precious";
  const std::string base = " --out " + (w / "o.npy");
  auto qkv = [&](const std::string& q, const std::string& k, const std::string& v) {
    return " --q " + (w / q) + " --k " + (w / k) + " --v " + (w / v);
  };
  struct bad {
    std::string args, expect;
  };
  const bad cases[] = {
      {"run --variant softmax" + qkv("q.npy", "k.npy", "v.npy") + base, "k: kv heads (3) must divide the query heads (4)"},
      {"run --variant softmax" + qkv("nope.npy", "k2.npy", "v.npy") + base, "--q: cannot open"},
      {"run --variant softmax" + qkv("ints.npy", "k2.npy", "v.npy") + base, "--q: '"},
      {"run --variant softmax" + qkv("trunc.npy", "k2.npy", "v.npy") + base, "truncated"},
      {"run --variant softmax" + qkv("junk.npy", "k2.npy", "v.npy") + base, "not a readable .npy file"},
      {"run --variant softmax" + qkv("q.npy", "k2.npy", "v3.npy") + base, "--v: expected 4 dimensions"},
      {"run --variant nosuch" + qkv("q.npy", "k2.npy", "v.npy") + base, "--variant: unknown variant 'nosuch'"},
      {"run --variant softmax --mask window:0" + qkv("q.npy", "k2.npy", "v.npy") + base, "--mask: expected window:W"},
      {"run --variant softmax --mask prefix:7" + qkv("q.npy", "k2.npy", "v.npy") + base, "prefix: the prefix (7) exceeds"},
      {"run --variant softmax --mask diagonal" + qkv("q.npy", "k2.npy", "v.npy") + base, "--mask: expected causal"},
      {"run --variant sink_logit" + qkv("q.npy", "k2.npy", "v.npy") + base, "sink: expected 4 values, got none"},
      {"run --variant softmax --probs " + (w / "p.npy") + qkv("q.npy", "k2.npy", "v.npy") + base, "--probs: the weights come from the reference backend"},
      {"run --variant softmax --backend gpu" + qkv("q.npy", "k2.npy", "v.npy") + base, "--backend: expected reference or cpu"},
      {"run --variant softmax --bogus 1" + qkv("q.npy", "k2.npy", "v.npy") + base, "--bogus: unknown option"},
      {"run --variant softmax" + qkv("q.npy", "k2.npy", "v.npy"), "--out: is required"},
      {"run --variant softmax --threads 0" + qkv("q.npy", "k2.npy", "v.npy") + base, "--threads: expected at least 1"},
      {"frobnicate", "command: unknown command 'frobnicate'"},
  };
  for (const bad& c : cases) {
    INFO(c.args);
    const outcome r = w.run(c.args);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Catch::Matchers::StartsWith("attnsink: error: "));
    CHECK_THAT(r.err, Catch::Matchers::ContainsSubstring(c.expect));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(slurp(w / "o.npy") == "precious");
    CHECK(!fs::exists(w / "p.npy"));
  }
  // The dtype message names what it found.
  const outcome r = w.run("run --variant softmax" + qkv("ints.npy", "k2.npy", "v.npy") + base);
  CHECK_THAT(r.err, Catch::Matchers::ContainsSubstring("expected float32 (<f4) or float64 (<f8)"));
}
