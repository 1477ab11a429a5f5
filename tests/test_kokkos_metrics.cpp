// The streaming sink metrics on the Kokkos backend (metrics/kokkos.hpp): α
// streamed from a Kokkos forward's row state against α of the reference's
// materialized weights — every named variant and mask, RoPE off/on, GQA,
// k = 1 and a later k, the proxies' row-mass pass; float row state; the
// hand-checked uniform case; the device entry point; capture with the
// Kokkos backend; bad input.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>

#include <attnsink/kokkos.hpp>
#include <attnsink/metrics.hpp>
#include <attnsink/metrics/kokkos.hpp>

#include "forward_cases.hpp"
#include "test_kokkos_main.hpp"

using namespace attnsink;
namespace M = attnsink::metrics;
using space = Kokkos::DefaultExecutionSpace;
using kokkos_be = backend::kokkos<space>;

namespace {

// α of the reference backend's materialized weights of `a` over p (double).
template <class A>
M::alpha_map reference_alphas(const A& a, const test::operands& p, const M::options& opt) {
  constexpr bool kv = A::bias_type::has_kv;
  std::vector<double> probs(p.batch * p.heads * p.tq * (p.tk + kv));
  test::poison(probs);
  test::result<double> ref(p);
  forward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), ref.O(p), ref.stats(),
          probs_view<double>{probs.data()});
  REQUIRE(test::all_finite(probs));
  return M::alphas(a, M::weights_view<double>{probs.data(), p.batch, p.heads, p.tq, kv}, opt);
}

// The Kokkos forward's row state for `a` over p in T (poisoned first), and α streamed from it on Kokkos.
template <class T, class A>
M::alpha_map kokkos_alphas(const A& a, const test::operands& p, const M::options& opt) {
  test::result<T> got(p);
  forward(kokkos_be{}, a, p.Q<T>(), p.K<T>(), p.V<T>(), got.O(p), got.stats());
  REQUIRE(test::all_finite(got.l));
  return M::alphas_streamed(kokkos_be{}, a, p.Q<T>(), p.K<T>(), got.stats(), opt);
}

// |got - want| <= rel·|want| + abs for every α (and α_*), and the same layout.
void expect_close(const M::alpha_map& got, const M::alpha_map& want, double rel, double abs = 1e-15) {
  REQUIRE(got.samples == want.samples);
  REQUIRE(got.heads == want.heads);
  REQUIRE(got.has_bias() == want.has_bias());
  REQUIRE(got.weights == want.weights);
  double worst = 0;
  std::size_t bad = 0;
  auto cmp = [&](const std::vector<double>& g, const std::vector<double>& w) {
    REQUIRE(g.size() == w.size());
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double err = std::abs(g[i] - w[i]);
      worst = std::max(worst, err / std::max(std::abs(w[i]), 1e-300));
      bad += !(err <= rel * std::abs(w[i]) + abs) || !std::isfinite(g[i]);
    }
  };
  cmp(got.alpha, want.alpha);
  cmp(got.alpha_bias, want.alpha_bias);
  INFO("worst relative difference " << worst);
  CHECK(bad == 0);
}

}  // namespace

// The two routes agree (≤ 1e-6 relative, double), as test_metrics.cpp checks for the cpu backend.
TEMPLATE_LIST_TEST_CASE("kokkos streamed alpha equals alpha of the materialized weights", "[metrics][kokkos]",
                        variants::all) {
  using V = TestType;
  const test::shape shapes[] = {{2, 4, 2, 37, 37, 16, 16}, {1, 3, 1, 50, 50, 17, 9}};
  std::uint64_t seed = 14000;
  for (const test::shape& s : shapes)
    for (const mask::dynamic& m : test::masks_for(s.tk))
      for (int rope = 0; rope < 2; ++rope) {
        if (rope && s.dim % 2) continue;
        ++seed;
        const test::operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, seed);
        const test::variant_params vp(s, seed);
        variants::settings st = vp.settings();
        st.mask = m;
        st.rope.enabled = rope != 0;
        st.vstar = param_ref(vp.vstar.data(), s.kv_heads * s.vdim);
        const auto a = variants::make<V>(st);
        for (std::size_t k : {std::size_t(1), s.tk / 3}) {
          M::options opt;
          opt.k = k;
          INFO(V::name << " " << test::describe(s, m, rope) << " k=" << k);
          expect_close(kokkos_alphas<double>(a, p, opt), reference_alphas(a, p, opt), 1e-6);
        }
      }
}

TEST_CASE("kokkos alpha streamed from float32 row state is close to the double reference", "[metrics][kokkos]") {
  const test::shape s{2, 4, 2, 64, 64, 32, 32};
  const test::operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, 177);
  const test::variant_params vp(s, 177);
  const M::options opt;
  auto check = [&](auto v) {
    using V = decltype(v);
    INFO(V::name);
    const auto a = variants::make<V>(vp.settings());
    expect_close(kokkos_alphas<float>(a, p, opt), reference_alphas(a, p, opt), 2e-5, 1e-9);
  };
  check(variants::softmax{});
  check(variants::sigmoid{});
  check(variants::kv_bias{});
  check(variants::softpick{});
  check(variants::kernel_identity_abs_clamped{});
}

TEST_CASE("kokkos: uniform causal attention at T = 64 has alpha_1 = H_64 / 64", "[metrics][kokkos]") {
  // Every key the same vector per head: every score in a row is equal, softmax is uniform.
  const std::size_t H = 2, T = 64, d = 8;
  test::operands p(1, H, H, T, T, d, d, 1);
  const std::vector<double> u = test::random_vector(H * d, 8);
  for (std::size_t h = 0; h < H; ++h)
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t e = 0; e < d; ++e) p.k[(h * T + t) * d + e] = u[h * d + e];
  double harmonic = 0;
  for (std::size_t i = 1; i <= T; ++i) harmonic += 1.0 / double(i);
  const M::alpha_map a = kokkos_alphas<double>(attention<>{}, p, M::options{});
  for (std::size_t h = 0; h < H; ++h) CHECK(std::abs(a.at(0, h) - harmonic / 64.0) < 1e-14);
  CHECK(std::abs(harmonic / 64.0 - 0.074123) < 1e-6);
  CHECK(M::sink_rate(a, 0.3) == 0.0);
  CHECK(M::sink_rate(a, 0.07) == 1.0);
}

TEST_CASE("kokkos alphas_streamed_device reads q, k, stats and parameters in the execution space's memory",
          "[metrics][kokkos]") {
  using Mem = space::memory_space;
  const std::size_t B = 2, H = 4, Hk = 2, T = 40, d = 16;
  const test::operands p(B, H, Hk, T, T, d, d, 2024);
  const std::vector<double> sink = test::random_vector(H, 2025);
  using host = Kokkos::View<const double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  auto put = [&](const std::vector<double>& x) {
    Kokkos::View<double*, Mem> v("x", x.size());
    Kokkos::deep_copy(v, host(x.data(), x.size()));
    return v;
  };
  const auto q = put(p.q), k = put(p.k), v = put(p.v), sd = put(sink);
  Kokkos::View<double*, Mem> o("o", p.out_size()), m("m", p.rows()), l("l", p.rows());
  attention<score::scaled_dot, norm::sink_logit, bias::alibi, pos::rope, mask::causal> a;
  a.norm.logits = param_ref(sd.data(), H);
  const tensor4<const double> qd(q.data(), B, H, T, d), kd(k.data(), B, Hk, T, d), vd(v.data(), B, Hk, T, d);
  forward_device(kokkos_be{}, a, qd, kd, vd, tensor4<double>(o.data(), B, H, T, d),
                 row_stats<double>{m.data(), l.data()});
  M::options opt;
  opt.k = 3;
  const M::alpha_map got =
      M::alphas_streamed_device(kokkos_be{}, a, qd, kd, row_stats<const double>{m.data(), l.data()}, opt);
  auto ah = a;
  ah.norm.logits = param_ref(sink.data(), H);
  expect_close(got, reference_alphas(ah, p, opt), 1e-6);
  // Without the row state this normalization has nothing to stream from.
  CHECK_THROWS_AS(M::alphas_streamed_device(kokkos_be{}, a, qd, kd, row_stats<const double>{}, opt), value_error);
}

TEST_CASE("kokkos capture collects what the reference route gives", "[metrics][kokkos][capture]") {
  const test::shape s{2, 4, 2, 30, 30, 8, 8};
  const test::variant_params vp(s, 3000);
  M::capture cap;
  std::vector<M::alpha_map> want;
  auto layer = [&](std::size_t index, const auto& a, std::uint64_t seed) {
    const test::operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, seed);
    test::result<float> r(p);
    forward(kokkos_be{}, a, p.Q<float>(), p.K<float>(), p.V<float>(), r.O(p), r.stats());
    cap.attention(kokkos_be{}, index, a, p.Q<float>(), p.K<float>(), r.stats());
    want.push_back(reference_alphas(a, p, cap.settings()));
  };
  layer(0, variants::make<variants::softmax>(vp.settings()), 3001);
  layer(1, variants::make<variants::sigmoid>(vp.settings()), 3002);
  layer(2, variants::make<variants::kv_bias>(vp.settings()), 3003);
  REQUIRE(cap.layers() == 3);
  for (std::size_t L = 0; L < 3; ++L) {
    INFO("layer " << L);
    expect_close(cap.alphas(L), want[L], 2e-5, 1e-9);
  }
  const double rate = M::sink_rate(std::span<const M::alpha_map>(want), cap.settings().eps);
  CHECK(cap.sink_rate() == rate);
  CHECK(std::abs(cap.alpha_bias(2, 1) - want[2].head_mean(1, true)) <= 2e-5 * want[2].head_mean(1, true));
}

TEST_CASE("kokkos streaming metrics refuse bad input with typed errors", "[metrics][kokkos][errors]") {
  const test::operands p(1, 2, 1, 10, 10, 8, 8, 4000);
  test::result<double> r(p);
  const attention<> a;
  forward(kokkos_be{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), r.O(p), r.stats());
  auto expect_error = [&](const M::options& opt, const char* arg) {
    try {
      M::alphas_streamed(kokkos_be{}, a, p.Q<double>(), p.K<double>(), r.stats(), opt);
      FAIL("no error for " << arg);
    } catch (const value_error& e) {
      CHECK(e.argument() == std::string(arg));
    }
  };
  M::options bad_k;
  bad_k.k = 11;
  expect_error(bad_k, "options.k");
  M::options bad_eps;
  bad_eps.eps = 1.0;
  expect_error(bad_eps, "options.eps");
  CHECK_THROWS_AS(M::alphas_streamed(kokkos_be{}, a, p.Q<double>(), p.K<double>(), row_stats<double>{}, M::options{}),
                  value_error);
}
