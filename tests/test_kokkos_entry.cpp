// The Kokkos backend's own paths against the reference: small tiles and
// teams, strided operands, and the device-pointer entry point.
#include <catch2/catch_test_macros.hpp>

#include <limits>

#include <attnsink/kokkos.hpp>

#include "forward_cases.hpp"
#include "test_kokkos_main.hpp"

using namespace attnsink;
using space = Kokkos::DefaultExecutionSpace;

TEST_CASE("kokkos forward with small tiles matches the reference", "[forward][kokkos]") {
  // Key tiles smaller than the problem and teams of few rows, so partial,
  // skipped and several tiles per row, and GQA head chunks, are exercised.
  for (std::size_t rows : {1u, 3u, 8u}) {
    const backend::kokkos<space> small{space{}, rows, 8};
    for (std::size_t t : {5u, 37u, 100u}) {
      const test::operands p(2, 4, 1, t, t, 12, 12, 900 + t);
      for (const auto& m : test::masks_for(t)) {
        INFO("rows " << rows << " tokens " << t << " mask kind " << int(m.which) << ":" << m.param);
        test::expect_matches_reference(
            small, attention<score::scaled_dot, norm::softmax, bias::alibi, pos::nope, mask::dynamic>{{}, {}, {}, {}, m}, p);
        test::expect_matches_reference(
            small, attention<score::scaled_dot, norm::sigmoid, bias::none, pos::rope, mask::dynamic>{{}, {}, {}, {}, m}, p);
      }
    }
  }
}

TEST_CASE("kokkos forward: a sink logit (or the off-by-one term) beside the key/value bias", "[forward][kokkos]") {
  // The bias key can raise the row's running max above the sink logit it
  // starts from; the sink's mass must then be rescaled (a regression test).
  const backend::kokkos<space> small{space{}, 3, 8};
  const std::vector<double> sink = test::random_vector(4, 930, 1.5), ks = test::random_vector(12, 931, 1.5),
                            vs = test::random_vector(12, 932, 1.0);
  for (std::size_t t : {6u, 37u}) {
    const test::operands p(2, 4, 1, t, t, 12, 12, 940 + t);
    const bias::kv_bias kv{param_ref(ks.data(), ks.size()), param_ref(vs.data(), vs.size())};
    for (const auto& m : test::masks_for(t)) {
      INFO("tokens " << t << " mask kind " << int(m.which) << ":" << m.param);
      test::expect_matches_reference(
          small,
          attention<score::scaled_dot, norm::sink_logit, bias::kv_bias, pos::rope, mask::dynamic>{
              {}, {{}, param_ref(sink.data(), 4)}, kv, {}, m},
          p);
      test::expect_matches_reference(
          small, attention<score::scaled_dot, norm::softmax_off_by_one, bias::kv_bias, pos::nope, mask::dynamic>{{}, {}, kv, {}, m},
          p);
    }
  }
}

TEST_CASE("kokkos forward reads strided operands and writes only out's rows", "[forward][kokkos]") {
  // q, k, v and out are views into buffers with room between rows and heads
  // (a KV cache of capacity 40 holding 29 tokens): the gaps must stay untouched.
  const std::size_t B = 2, H = 4, Hk = 2, T = 29, C = 40, d = 16;
  const test::operands p(B, H, Hk, T, T, d, d, 4242);
  auto spread = [&](const std::vector<float>& x, std::size_t heads) {
    std::vector<float> y(B * heads * C * (d + 3), 7.0f);
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t h = 0; h < heads; ++h)
        for (std::size_t t = 0; t < T; ++t)
          for (std::size_t e = 0; e < d; ++e)
            y[((b * heads + h) * C + t) * (d + 3) + e] = x[((b * heads + h) * T + t) * d + e];
    return y;
  };
  const auto qs = spread(p.qf, H), ks = spread(p.kf, Hk), vs = spread(p.vf, Hk);
  auto view = [&](auto* data, std::size_t heads) {
    return tensor4<std::remove_pointer_t<decltype(data)>>(data, B, heads, T, d, heads * C * (d + 3), C * (d + 3), d + 3);
  };
  std::vector<float> os(B * H * C * (d + 3), 7.0f);
  using A = attention<score::scaled_dot, norm::softmax, bias::alibi>;
  forward(backend::kokkos<space>{}, A{}, view(qs.data(), H), view(ks.data(), Hk), view(vs.data(), Hk),
          view(os.data(), H));
  std::vector<double> ref(p.out_size());
  forward(backend::reference{}, A{}, p.Q<double>(), p.K<double>(), p.V<double>(),
          tensor4<double>(ref.data(), B, H, T, d));
  std::vector<float> got(p.out_size());
  std::size_t untouched = 0;
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t h = 0; h < H; ++h)
      for (std::size_t t = 0; t < C; ++t)
        for (std::size_t e = 0; e < d + 3; ++e) {
          const float x = os[((b * H + h) * C + t) * (d + 3) + e];
          if (t < T && e < d) got[((b * H + h) * T + t) * d + e] = x;
          else untouched += x == 7.0f;
        }
  CHECK(untouched == B * H * (C * (d + 3) - T * d));
  CHECK(test::rel_l2(got, ref) <= 1e-5);
}

TEST_CASE("kokkos forward_device runs on operands in the execution space's memory", "[forward][kokkos]") {
  using M = space::memory_space;
  const std::size_t B = 1, H = 4, Hk = 2, T = 70, d = 32;
  const test::operands p(B, H, Hk, T, T, d, d, 777);
  const std::vector<float> sink = test::cast<float>(test::random_vector(H, 31));
  Kokkos::View<float****, Kokkos::LayoutRight, M> q("q", B, H, T, d), k("k", B, Hk, T, d), v("v", B, Hk, T, d),
      o("o", B, H, T, d);
  Kokkos::View<float*, M> sd("sink", H);
  using host = Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  Kokkos::deep_copy(Kokkos::View<float*, M>(q.data(), q.size()), host(p.qf.data(), p.qf.size()));
  Kokkos::deep_copy(Kokkos::View<float*, M>(k.data(), k.size()), host(p.kf.data(), p.kf.size()));
  Kokkos::deep_copy(Kokkos::View<float*, M>(v.data(), v.size()), host(p.vf.data(), p.vf.size()));
  Kokkos::deep_copy(sd, host(sink.data(), H));
  attention<score::scaled_dot, norm::sink_logit> a;
  a.norm.logits = param_ref(sd.data(), H);
  const auto run = [&] {
    forward_device(backend::kokkos<space>{}, a, tensor4<const float>(as_tensor(q)), tensor4<const float>(as_tensor(k)),
                   tensor4<const float>(as_tensor(v)), as_tensor(o));
  };
  run();
  std::vector<float> got(p.out_size());
  Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(got.data(), got.size()),
                    Kokkos::View<const float*, M>(o.data(), o.size()));
  attention<score::scaled_dot, norm::sink_logit> ah;
  ah.norm.logits = param_ref(sink.data(), H);
  std::vector<double> ref(p.out_size());
  forward(backend::reference{}, ah, p.Q<double>(), p.K<double>(), p.V<double>(), tensor4<double>(ref.data(), B, H, T, d));
  CHECK(test::rel_l2(got, ref) <= 1e-5);
  // The parameters are validated even in device memory: a NaN logit is refused.
  Kokkos::deep_copy(Kokkos::subview(sd, 1), std::numeric_limits<float>::quiet_NaN());
  CHECK_THROWS_AS(run(), value_error);
}

TEST_CASE("kokkos forward at head dims above 128, up to the 256 capacity", "[forward][kokkos]") {
  // The generic kernel's widest instantiation (ATTNSINK_KOKKOS_MAX_DIM, 256
  // by default), whose head-dim arrays live in local memory on a GPU.
  if constexpr (kokkos_detail::max_dim < 256) {
    SKIP("built with ATTNSINK_KOKKOS_MAX_DIM=" << kokkos_detail::max_dim);
  } else {
    test::for_each_wide_dim(41, 960, [](const test::operands& p, const mask::dynamic& m) {
      test::expect_matches_reference(
          backend::kokkos<space>{}, attention<score::scaled_dot, norm::softmax, bias::none, pos::rope, mask::dynamic>{{}, {}, {}, {}, m}, p);
      test::expect_matches_reference(
          backend::kokkos<space>{}, attention<score::scaled_dot, norm::sigmoid, bias::alibi, pos::nope, mask::dynamic>{{}, {}, {}, {}, m}, p);
    });
  }
}
