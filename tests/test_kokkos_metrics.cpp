// The streaming sink metrics on the Kokkos backend (metrics/kokkos.hpp): α
// streamed from a Kokkos forward's row state against α of the reference's
// materialized weights — every named variant and mask, RoPE off/on, GQA,
// k = 1 and a later k, the proxies' row-mass pass; float row state; the
// hand-checked uniform case; the device entry point; capture with the
// Kokkos backend; bad input.
//
// The program's cases are spread over several files so that they compile in
// parallel: this one (main, the hand-checked case, device operands, capture,
// bad input), test_kokkos_metrics.<slice>.cpp (the named variants,
// test_kokkos_slices.hpp) and .float.cpp (float row state).
#include <cmath>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include "test_kokkos_main.hpp"
#include "test_kokkos_metrics.hpp"

using namespace attnsink;
namespace M = attnsink::metrics;
using space = test::kokkos_space;
using test::kokkos_be;

namespace {

template <class T, class A>
M::alpha_map kokkos_alphas(const A& a, const test::operands& p, const M::options& opt) {
  return test::kokkos_route::alphas<T>(a, p, opt);
}
using test::expect_close;
using test::reference_alphas;

}  // namespace

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
