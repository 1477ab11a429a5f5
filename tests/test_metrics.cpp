// Sink metrics: hand-checked values, the two routes (materialized weights and
// streaming from row state) against each other for every named variant and
// mask, the reducers under oneTBB, the capture interface, the CLI, bad input.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>

#include <attnsink/cpu.hpp>
#include <attnsink/metrics.hpp>
#include <attnsink/npy.hpp>

#include <tbb/blocked_range.h>
#include <tbb/parallel_reduce.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "metrics_cases.hpp"

using namespace attnsink;
namespace M = attnsink::metrics;

namespace {

// The cpu backend's row state for `a` over p in T, and the α streamed from it.
struct cpu_route {
  template <class T, class A>
  static M::alpha_map alphas(const A& a, const test::operands& p, const M::options& opt) {
    test::result<T> got(p);
    forward(backend::cpu{}, a, p.Q<T>(), p.K<T>(), p.V<T>(), got.O(p), got.stats());
    REQUIRE(test::all_finite(got.l));
    return M::alphas_streamed(backend::cpu{}, a, p.Q<T>(), p.K<T>(), got.stats(), opt);
  }
};
template <class T, class A>
M::alpha_map streamed_alphas(const A& a, const test::operands& p, const M::options& opt) {
  return cpu_route::alphas<T>(a, p, opt);
}
using test::expect_close;
using test::reference_alphas;

// Fills q (1 sample, `heads`, T, d) and k so that every key j >= 1 is the same
// vector per head: every score in a row is equal, so softmax is uniform.
struct uniform_case {
  std::size_t heads = 2, T = 64, d = 8;
  std::vector<double> q, k;
  uniform_case() : q(test::random_vector(heads * T * d, 7)), k(heads * T * d) {
    const std::vector<double> u = test::random_vector(heads * d, 8);
    for (std::size_t h = 0; h < heads; ++h)
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t e = 0; e < d; ++e) k[(h * T + t) * d + e] = u[h * d + e];
  }
};

double harmonic(std::size_t n) {
  double s = 0;
  for (std::size_t i = 1; i <= n; ++i) s += 1.0 / double(i);
  return s;
}

}  // namespace

TEST_CASE("uniform causal attention at T = 64 has alpha_1 = H_64 / 64", "[metrics][hand]") {
  const uniform_case c;
  const test::operands shape(1, c.heads, c.heads, c.T, c.T, c.d, c.d, 1);
  test::operands p = shape;
  p.q = c.q;
  p.k = c.k;
  const attention<> softmax;  // causal
  const M::options opt;       // eps 0.3, k 1
  const M::alpha_map ref = reference_alphas(softmax, p, opt);
  std::vector<double> m(c.heads * c.T), l(m.size()), o(c.heads * c.T * c.d);
  test::poison(m);
  test::poison(l);
  forward(backend::cpu{}, softmax, p.Q<double>(), p.K<double>(), p.V<double>(),
          tensor4<double>(o.data(), 1, c.heads, c.T, c.d), row_stats<double>{m.data(), l.data()});
  const M::alpha_map str = M::alphas_streamed(softmax, p.Q<double>(), p.K<double>(), row_stats<double>{m.data(), l.data()}, opt);
  const double exact = harmonic(64) / 64.0;
  CHECK(std::abs(exact - 0.074123) < 5e-7);
  for (std::size_t h = 0; h < c.heads; ++h) {
    CHECK(std::abs(ref.at(0, h) - exact) < 1e-12);
    CHECK(std::abs(str.at(0, h) - exact) < 1e-12);
  }
  CHECK(M::sink_rate(ref, opt.eps) == 0.0);
  CHECK(M::sink_rate(str, opt.eps) == 0.0);
}

TEST_CASE("half the attention on the first token gives alpha_1 = 0.5078125 and Sink_1 = 1", "[metrics][hand]") {
  // d = 2: k_1 = (1, 0), k_j = (0, 1) for j > 1; query t (1-based, t >= 2)
  // scores log(t - 1) + u_t on k_1 and u_t on each of its t - 1 other keys,
  // so softmax gives k_1 exactly one half; query 1 sees k_1 alone.
  const std::size_t T = 64, d = 2;
  test::operands p(1, 1, 1, T, T, d, d, 3);
  const std::vector<double> u = test::random_vector(T, 4);
  for (std::size_t t = 0; t < T; ++t) {
    p.k[t * d] = t == 0 ? 1.0 : 0.0;
    p.k[t * d + 1] = t == 0 ? 0.0 : 1.0;
    const double gap = t == 0 ? 0.0 : std::log(double(t));
    p.q[t * d] = std::sqrt(2.0) * (gap + u[t]);
    p.q[t * d + 1] = std::sqrt(2.0) * u[t];
  }
  const attention<> softmax;
  const M::options opt;
  std::vector<double> probs;
  const M::alpha_map ref = reference_alphas(softmax, p, opt, &probs);
  for (std::size_t t = 1; t < T; ++t) REQUIRE(std::abs(probs[t * T] - 0.5) < 1e-14);
  const M::alpha_map str = streamed_alphas<double>(softmax, p, opt);
  CHECK(std::abs(ref.at(0, 0) - 0.5078125) < 1e-14);
  CHECK(std::abs(str.at(0, 0) - 0.5078125) < 1e-14);
  CHECK(M::sink_rate(ref, 0.3) == 1.0);
  CHECK(M::sink_rate(str, 0.3) == 1.0);
  CHECK(M::sink_rate(str, 0.6) == 0.0);
}

TEST_CASE("alpha exactly eps is not a sink", "[metrics][hand]") {
  // T = 4: column 1 holds (1, 0, 0, 0), so α_1 = 1/4 exactly.
  std::vector<double> w = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0.5, 0.5, 0, 0, 0.25, 0.25, 0.5};
  const M::weights_view<double> view{w.data(), 1, 1, 4, false};
  M::options opt;
  opt.eps = 0.25;
  const M::alpha_map a = M::alphas(view, opt);
  REQUIRE(a.at(0, 0) == 0.25);
  CHECK(M::sink_rate(a, 0.25) == 0.0);
  CHECK(M::sink_rate(a, std::nextafter(0.25, 0.0)) == 1.0);
  // The reducer alone, at the paper's threshold.
  const M::exceed_rate r{0.3};
  M::exceed_rate::value_type v;
  r.init(v);
  r.add(v, 0.3);
  r.add(v, std::nextafter(0.3, 1.0));
  CHECK(r.final(v) == 0.5);
}

TEST_CASE("the sink rate averages per-sample indicators, not the indicator of the average", "[metrics][hand]") {
  // Two samples, T = 5: α_1 = 3/5 in the first, 1/5 in the second. Their mean
  // 2/5 is above ε = 0.3, but only one of the two samples has a sink.
  std::vector<double> w(2 * 5 * 5, 0.0);
  const double col0[2][5] = {{1, 0.5, 0.5, 0.5, 0.5}, {1, 0, 0, 0, 0}};
  for (std::size_t s = 0; s < 2; ++s)
    for (std::size_t t = 0; t < 5; ++t) {
      w[(s * 5 + t) * 5] = col0[s][t];
      w[(s * 5 + t) * 5 + t] += 1.0 - col0[s][t];  // the rest on the diagonal: rows sum to 1
    }
  const M::alpha_map a = M::alphas(M::weights_view<double>{w.data(), 2, 1, 5, false}, M::options{});
  REQUIRE(std::abs(a.at(0, 0) - 0.6) < 1e-15);
  REQUIRE(std::abs(a.at(1, 0) - 0.2) < 1e-15);
  CHECK(a.head_mean(0) > 0.3);           // the indicator of the average would say 1
  CHECK(M::sink_rate(a, 0.3) == 0.5);    // per sample: 1 and 0
}

TEST_CASE("signed kernels are read through |s| / sum |s|", "[metrics][hand]") {
  // d = 1, q_t = 1, k = (2, -1, 1): kernel_identity weights are k_j themselves.
  // Rows |p|/Σ|p| on key 1: 2/2, 2/3, 2/4, so α_1 = (1 + 2/3 + 1/2) / 3 = 13/18.
  test::operands p(1, 1, 1, 3, 3, 1, 1, 5);
  p.q = {1, 1, 1};
  p.k = {2, -1, 1};
  const auto a = variants::make<variants::kernel_identity>(variants::settings{});  // causal, no RoPE
  const M::options opt;
  const M::alpha_map ref = reference_alphas(a, p, opt);
  const M::alpha_map str = streamed_alphas<double>(a, p, opt);
  CHECK(ref.weights == M::proxy::absolute);
  CHECK(std::abs(ref.at(0, 0) - 13.0 / 18.0) < 1e-15);
  CHECK(std::abs(str.at(0, 0) - 13.0 / 18.0) < 1e-15);
  // The raw weights instead: (2 + 2 + 2) / 3.
  M::options raw = opt;
  raw.weights = M::weighting::raw;
  CHECK(std::abs(streamed_alphas<double>(a, p, raw).at(0, 0) - 2.0) < 1e-15);
}

TEST_CASE("proxies follow the variant's traits", "[metrics]") {
  CHECK(M::proxy_for<variants::softmax::type>() == M::proxy::none);
  CHECK(M::proxy_for<variants::sigmoid_normalized::type>() == M::proxy::none);
  CHECK(M::proxy_for<variants::kv_bias::type>() == M::proxy::none);
  CHECK(M::proxy_for<variants::sigmoid::type>() == M::proxy::nonnegative);
  CHECK(M::proxy_for<variants::elu1::type>() == M::proxy::nonnegative);
  CHECK(M::proxy_for<variants::kernel_elu1::type>() == M::proxy::nonnegative);
  CHECK(M::proxy_for<variants::softmax_off_by_one::type>() == M::proxy::nonnegative);
  CHECK(M::proxy_for<variants::kernel_identity::type>() == M::proxy::absolute);
  CHECK(M::proxy_for<variants::kernel_identity_abs_clamped::type>() == M::proxy::absolute);
  CHECK(M::proxy_for<variants::sigmoid::type>(M::weighting::raw) == M::proxy::none);
  CHECK(M::apply_proxy(M::proxy::nonnegative, 0.25, 1.0) == 0.25 / (1.0 + 1e-8));
  CHECK(M::apply_proxy(M::proxy::absolute, -0.5, 2.0) == 0.25);
  CHECK(M::apply_proxy(M::proxy::absolute, 0.0, 0.0) == 0.0);
}

// Every named variant × every mask × RoPE off/on (metrics_cases.hpp).
TEMPLATE_LIST_TEST_CASE("streamed alpha equals alpha of the materialized weights", "[metrics][routes]", variants::all) {
  test::streamed_alpha_matches_reference<TestType, cpu_route>(4000);
}

TEST_CASE("alpha streamed from float32 row state is close to the double reference", "[metrics][routes]") {
  test::float_streamed_alpha_is_close<cpu_route>(77);
}

TEST_CASE("column_alpha reduces under tbb::parallel_reduce to the serial answer", "[metrics][tbb]") {
  const test::operands p(1, 2, 1, 300, 300, 24, 24, 91);
  const test::shape s{1, 2, 1, 300, 300, 24, 24};
  const test::variant_params vp(s, 91);
  auto a = variants::make<variants::kv_bias>(vp.settings());
  a.pos.enabled = true;
  test::result<double> res(p);
  forward(backend::cpu{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), res.O(p), res.stats());
  const std::size_t col = 4, d = p.dim;
  std::vector<double> kf(d), ks(d);
  for (std::size_t e = 0; e < d; ++e) kf[e] = p.k[col * d + e], ks[e] = a.bias.kstar(0, e, d);
  a.pos.apply(kf.data(), d, std::ptrdiff_t(col), 1);
  using CA = M::column_alpha<decltype(a), double>;
  for (std::size_t h = 0; h < 2; ++h) {
    const CA f{a, p.Q<double>(), res.m.data(), res.l.data(), nullptr, M::proxy::none, 0, h, col,
               kf.data(), ks.data(), p.tk, a.score.scale(d), true};
    CA::value_type serial;
    f.init(serial);
    for (std::size_t i = 0; i < p.tq; ++i) f(i, serial);
    CA::value_type zero;
    f.init(zero);
    const CA::value_type par = tbb::parallel_reduce(
        tbb::blocked_range<std::size_t>(0, p.tq, 7), zero,
        [&](const tbb::blocked_range<std::size_t>& r, CA::value_type v) {
          for (std::size_t i = r.begin(); i != r.end(); ++i) f(i, v);
          return v;
        },
        [&](CA::value_type x, const CA::value_type& y) {
          f.join(x, y);
          return x;
        });
    const auto want = f.final(serial), got = f.final(par);
    CHECK(std::abs(got.key - want.key) <= 1e-13 * want.key);
    CHECK(std::abs(got.bias - want.bias) <= 1e-13 * want.bias);
    CHECK(par.key.count == double(p.tq - col));
    CHECK(par.bias.count == double(p.tq));
    // And it is what the driver reports for this head.
    M::options opt;
    opt.k = col + 1;
    const M::alpha_map m = M::alphas_streamed(a, p.Q<double>(), p.K<double>(), res.stats(), opt);
    CHECK(std::abs(m.at(0, h) - want.key) <= 1e-13 * want.key);
    CHECK(std::abs(m.bias_at(0, h) - want.bias) <= 1e-13 * want.bias);
  }
}

TEST_CASE("L2 norms, the massive-activation ratio and cos(q_t, k_1) by hand", "[metrics][hand]") {
  // Hidden states: ‖h_1‖ = 10, every other ‖h_t‖ = 2 → ratio 5.
  const std::size_t T = 6, D = 4;
  std::vector<double> h(T * D, 0.0);
  const std::vector<double> dir = test::random_vector(T * D, 12);
  for (std::size_t t = 0; t < T; ++t) {
    double n = 0;
    for (std::size_t e = 0; e < D; ++e) n += dir[t * D + e] * dir[t * D + e];
    for (std::size_t e = 0; e < D; ++e) h[t * D + e] = dir[t * D + e] / std::sqrt(n) * (t == 0 ? 10.0 : 2.0);
  }
  const tensor4<const double> hv(h.data(), 1, 1, T, D);
  const std::vector<double> norms = M::token_norms(hv);
  for (std::size_t t = 0; t < T; ++t) CHECK(std::abs(norms[t] - (t == 0 ? 10.0 : 2.0)) < 1e-13);
  CHECK(std::abs(M::massive_activation_ratio(hv)[0] - 5.0) < 1e-13);

  // d = 2: k_1 = 3·(1, 0); q_t = r_t (cos θ_t, sin θ_t) → cos(q_t, k_1) = cos θ_t.
  std::vector<double> q(T * 2), k = test::random_vector(T * 2, 13), theta = test::random_vector(T, 14);
  k[0] = 3.0, k[1] = 0.0;
  for (std::size_t t = 0; t < T; ++t) q[t * 2] = 2.0 * std::cos(theta[t]), q[t * 2 + 1] = 2.0 * std::sin(theta[t]);
  const M::first_key_angles g = M::qk_angles(attention<>{}, tensor4<const double>(q.data(), 1, 1, T, 2),
                                             tensor4<const double>(k.data(), 1, 1, T, 2));
  CHECK(std::abs(g.k_norm[0] - 3.0) < 1e-14);
  for (std::size_t t = 0; t < T; ++t) {
    CHECK(std::abs(g.cos[t] - std::cos(theta[t])) < 1e-14);
    CHECK(std::abs(g.q_norm[t] - 2.0) < 1e-14);
  }
}

TEST_CASE("capture collects per-layer, per-head statistics during a forward pass", "[metrics][capture]") {
  const test::shape s{2, 4, 2, 40, 40, 16, 16};
  const test::variant_params vp(s, 55);
  const auto softmax = variants::make<variants::softmax>(vp.settings());
  const auto kvb = variants::make<variants::kv_bias>(vp.settings());
  M::capture cap;
  std::vector<M::alpha_map> direct(2);
  double key_norm_sum_t3 = 0;
  // Layer 0 twice (two batches: samples add up), layer 1 once with a kv bias.
  for (int call = 0; call < 3; ++call) {
    const std::size_t layer = call == 2 ? 1 : 0;
    const test::operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, 600 + call);
    test::result<float> r(p);
    auto run = [&](const auto& a) {
      forward(backend::cpu{}, a, p.Q<float>(), p.K<float>(), p.V<float>(), r.O(p), r.stats());
      cap.attention(backend::cpu{}, layer, a, p.Q<float>(), p.K<float>(), r.stats());
      direct[layer].append(M::alphas_streamed(a, p.Q<float>(), p.K<float>(), r.stats(), cap.settings()));
    };
    if (layer == 0) run(softmax);
    else run(kvb);
    cap.keys(layer, p.K<float>());
    cap.values(layer, p.V<float>());
    cap.hidden(layer, tensor4<const float>(p.qf.data(), s.batch, 1, s.tq, s.heads * s.dim));
    if (layer == 0)
      for (std::size_t b = 0; b < s.batch; ++b)
        for (std::size_t hk = 0; hk < s.kv_heads; ++hk) {
          double n = 0;
          for (std::size_t e = 0; e < s.dim; ++e) n += double(p.K<float>().row(b, hk, 3)[e]) * double(p.K<float>().row(b, hk, 3)[e]);
          key_norm_sum_t3 += std::sqrt(n);
        }
  }
  REQUIRE(cap.layers() == 2);
  CHECK(cap.alphas(0).samples == 4);
  CHECK(cap.alphas(1).has_bias());
  for (std::size_t layer = 0; layer < 2; ++layer)
    for (std::size_t h = 0; h < s.heads; ++h) CHECK(cap.alpha(layer, h) == direct[layer].head_mean(h));
  CHECK(cap.sink_rate() == M::sink_rate(std::span<const M::alpha_map>(direct), 0.3));
  CHECK(cap.bias_sink_rate() == M::sink_rate(direct[1], 0.3, true));
  CHECK(cap.alpha_bias(1, 2) == direct[1].head_mean(2, true));
  CHECK(std::abs(cap.key_norms(0)[3] - key_norm_sum_t3 / 8.0) < 1e-12 * key_norm_sum_t3);
  CHECK(cap.value_norms(1).size() == s.tk);
  CHECK(std::isfinite(cap.massive_ratio(0)));
  CHECK(cap.cos_first(0, 1) >= -1.0);
  CHECK(cap.cos_first(0, 1) <= 1.0);
  CHECK_THROWS_AS(cap.alpha(2, 0), value_error);
  CHECK_THROWS_AS(cap.alpha(0, 4), value_error);
  CHECK_THROWS_AS(cap.alpha_bias(0, 0), value_error);
  CHECK_THROWS_AS(cap.keys(0, tensor4<const float>(nullptr, 1, 1, 1, 1)), value_error);
}

namespace {
template <class E, class Fn>
void expect_error(Fn&& fn, const std::string& argument) {
  try {
    fn();
    FAIL("expected an error naming " << argument);
  } catch (const E& e) {
    CHECK(e.argument() == argument);
  }
}
}  // namespace

TEST_CASE("bad input to the metrics is a typed error naming the argument", "[metrics][errors]") {
  const test::operands p(1, 2, 1, 10, 10, 8, 8, 31);
  const test::operands longer(1, 2, 1, 12, 12, 8, 8, 32);
  test::result<double> r(p);
  const attention<> a;
  forward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), r.O(p), r.stats());
  auto stream = [&](tensor4<const double> k, row_stats<double> st, M::options opt) {
    return M::alphas_streamed(a, p.Q<double>(), k, st, opt);
  };
  M::options good;
  expect_error<shape_error>([&] { stream(longer.K<double>(), r.stats(), good); }, "k");  // T mismatch
  expect_error<shape_error>([&] { stream(tensor4<const double>(p.k.data(), 1, 1, 10, 4), r.stats(), good); }, "k");
  expect_error<value_error>([&] { stream(p.K<double>(), row_stats<double>{}, good); }, "stats");
  for (double eps : {1.0, -0.1, std::nan("")}) {
    M::options o;
    o.eps = eps;
    expect_error<value_error>([&] { stream(p.K<double>(), r.stats(), o); }, "options.eps");
  }
  for (std::size_t k : {std::size_t(0), std::size_t(11)}) {
    M::options o;
    o.k = k;
    expect_error<value_error>([&] { stream(p.K<double>(), r.stats(), o); }, "options.k");
  }
  M::options last;
  last.k = 10;
  CHECK_NOTHROW(stream(p.K<double>(), r.stats(), last));

  std::vector<double> w(2 * 10 * 11, 0.1);
  expect_error<value_error>([&] { M::alphas(M::weights_view<double>{nullptr, 1, 2, 10, false}, good); }, "probs");
  expect_error<shape_error>([&] { M::alphas(M::weights_view<double>{w.data(), 1, 2, 0, false}, good); }, "probs");
  expect_error<shape_error>([&] { M::alphas(a, M::weights_view<double>{w.data(), 1, 2, 10, true}, good); }, "probs");
  M::options far;
  far.k = 11;
  expect_error<value_error>([&] { M::alphas(M::weights_view<double>{w.data(), 1, 2, 10, true}, far); }, "options.k");
  expect_error<value_error>([&] { M::sink_rate(M::alpha_map{}, 1.5); }, "eps");
  expect_error<value_error>([&] { M::qk_angles(a, p.Q<double>(), p.K<double>(), 0); }, "key");
  expect_error<shape_error>([&] { M::massive_activation_ratio(tensor4<const double>(p.q.data(), 1, 1, 1, 8), "h"); }, "h");
  M::options bad_eps;
  bad_eps.eps = 2;
  expect_error<value_error>([&] { M::capture c(bad_eps); }, "options.eps");
  // kv_bias without its k*: the policy's own check names it.
  variants::settings st;
  const auto kvb = variants::make<variants::kv_bias>(st);
  expect_error<value_error>([&] { M::alphas_streamed(kvb, p.Q<double>(), p.K<double>(), r.stats(), good); }, "kstar");
}

// ---------------------------------------------------------------------------
// The CLI: `attnsink metrics` prints what the library computes.

namespace {

struct cli_result {
  int code;
  std::string out;
};

cli_result run_cli(const std::string& args) {
  const std::string cmd = std::string(ATTNSINK_CLI) + " " + args + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  REQUIRE(f != nullptr);
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const int status = pclose(f);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// The number after "key": in a JSON text.
double json_number(const std::string& json, const std::string& key) {
  const std::size_t at = json.find("\"" + key + "\":");
  REQUIRE(at != std::string::npos);
  return std::stod(json.substr(at + key.size() + 3));
}

// The numbers of "key": [[...], [...]] in order.
std::vector<double> json_numbers(const std::string& json, const std::string& key) {
  std::size_t at = json.find("\"" + key + "\":");
  REQUIRE(at != std::string::npos);
  at = json.find('[', at);
  std::vector<double> out;
  int depth = 0;
  for (std::size_t i = at; i < json.size(); ++i) {
    const char ch = json[i];
    if (ch == '[') ++depth;
    else if (ch == ']') {
      if (--depth == 0) break;
    } else if (ch == '-' || std::isdigit(static_cast<unsigned char>(ch))) {
      std::size_t used = 0;
      out.push_back(std::stod(json.substr(i), &used));
      i += used - 1;
    }
  }
  return out;
}

struct temp_dir {
  std::filesystem::path path;
  temp_dir() : path(std::filesystem::temp_directory_path() / ("attnsink_metrics_" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path);
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace

TEST_CASE("attnsink metrics prints the library's numbers as JSON", "[metrics][cli]") {
  if (!std::filesystem::exists(ATTNSINK_CLI)) SKIP("attnsink CLI not built (ninja attnsink_cli)");
  const temp_dir dir;
  const std::size_t L = 2, S = 3, H = 2, T = 16, D = 8;
  const attention<score::scaled_dot, norm::softmax, bias::none, pos::nope, mask::dynamic> a;

  SECTION("--probs, (layers, samples, heads, T, T)") {
    std::vector<double> all;
    std::vector<M::alpha_map> maps;
    M::options opt;
    opt.k = 2;
    opt.eps = 0.1;
    for (std::size_t layer = 0; layer < L; ++layer) {
      const test::operands p(S, H, H, T, T, D, D, 700 + layer, 2.0);
      std::vector<double> probs;
      maps.push_back(reference_alphas(a, p, opt, &probs));
      all.insert(all.end(), probs.begin(), probs.end());
    }
    npy::write(dir / "p.npy", "p", xt::adapt(all, std::vector<std::size_t>{L, S, H, T, T}), npy::dtype::float64);
    const cli_result r = run_cli("metrics --probs " + (dir / "p.npy") + " --eps 0.1 --k-index 2");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(json_number(r.out, "sink_rate") == M::sink_rate(std::span<const M::alpha_map>(maps), 0.1));
    CHECK(json_number(r.out, "eps") == 0.1);
    CHECK(json_number(r.out, "k") == 2);
    const std::vector<double> alpha = json_numbers(r.out, "alpha");
    REQUIRE(alpha.size() == L * H);
    for (std::size_t layer = 0; layer < L; ++layer)
      for (std::size_t h = 0; h < H; ++h) CHECK(std::abs(alpha[layer * H + h] - maps[layer].head_mean(h)) < 1e-15);
    // 4-D weights are one layer.
    const std::vector<double> one(all.begin(), all.begin() + S * H * T * T);
    npy::write(dir / "p4.npy", "p", xt::adapt(one, std::vector<std::size_t>{S, H, T, T}), npy::dtype::float32);
    const cli_result r4 = run_cli("metrics --probs " + (dir / "p4.npy"));
    INFO(r4.out);
    REQUIRE(r4.code == 0);
    CHECK(json_numbers(r4.out, "alpha").size() == H);
  }

  SECTION("--variant with q and k streams") {
    const test::operands p(S, H, 1, T, T, D, D, 710);
    npy::write(dir / "q.npy", "q", xt::adapt(p.q, std::vector<std::size_t>{S, H, T, D}), npy::dtype::float64);
    npy::write(dir / "k.npy", "k", xt::adapt(p.k, std::vector<std::size_t>{S, 1, T, D}), npy::dtype::float64);
    variants::settings st;
    st.mask.which = mask::dynamic::kind::window;
    st.mask.param = 5;
    const auto sig = variants::make<variants::sigmoid>(st);
    const M::alpha_map want = streamed_alphas<double>(sig, p, M::options{});
    const cli_result r = run_cli("metrics --variant sigmoid --q " + (dir / "q.npy") + " --k " + (dir / "k.npy") +
                                 " --mask window:5");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("\"proxy\": \"nonnegative\"") != std::string::npos);
    const std::vector<double> alpha = json_numbers(r.out, "alpha");
    REQUIRE(alpha.size() == H);
    for (std::size_t h = 0; h < H; ++h) CHECK(std::abs(alpha[h] - want.head_mean(h)) <= 1e-12 * want.head_mean(h));
    CHECK(json_number(r.out, "sink_rate") == M::sink_rate(want, 0.3));
  }

  SECTION("bad input exits 2 naming the flag") {
    const std::vector<double> x(4 * T * D, 0.5);
    npy::write(dir / "q3.npy", "q", xt::adapt(x, std::vector<std::size_t>{4, T, D}), npy::dtype::float32);
    npy::write(dir / "k4.npy", "k", xt::adapt(x, std::vector<std::size_t>{1, 4, T, D}), npy::dtype::float32);
    npy::write(dir / "kshort.npy", "k", xt::adapt(x, std::vector<std::size_t>{1, 4, T / 2, 2 * D}), npy::dtype::float32);
    npy::write(dir / "q4.npy", "q", xt::adapt(x, std::vector<std::size_t>{1, 4, T, D}), npy::dtype::float32);
    npy::write(dir / "ns.npy", "p", xt::adapt(x, std::vector<std::size_t>{1, 4, T, D}), npy::dtype::float32);
    const std::string qk = " --q " + (dir / "q4.npy") + " --k " + (dir / "k4.npy");
    const std::pair<std::string, std::string> cases[] = {
        {"metrics --variant softmax --q " + (dir / "q3.npy") + " --k " + (dir / "k4.npy"), "--q:"},
        {"metrics --variant softmax --q " + (dir / "q4.npy") + " --k " + (dir / "kshort.npy"), "--k:"},
        {"metrics --variant softmax" + qk + " --eps 1", "--eps:"},
        {"metrics --variant softmax" + qk + " --eps -0.5", "--eps:"},
        {"metrics --variant softmax" + qk + " --k-index 0", "--k-index:"},
        {"metrics --variant softmax" + qk + " --k-index 17", "--k-index:"},
        {"metrics --variant nonesuch" + qk, "--variant:"},
        {"metrics --probs " + (dir / "ns.npy"), "--probs:"},
        {"metrics --probs " + (dir / "q3.npy"), "--probs:"},
        {"metrics --variant softmax --probs " + (dir / "ns.npy") + qk, "--probs:"},
        {"metrics" + qk, "--variant:"},
    };
    for (const auto& [args, flag] : cases) {
      const cli_result r = run_cli(args);
      INFO(args << "\n" << r.out);
      CHECK(r.code == 2);
      CHECK(r.out.find("error: " + flag) != std::string::npos);
    }
  }
}
