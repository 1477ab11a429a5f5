// test_kokkos_backward (see test_kokkos_backward.cpp): bit-identical gradients
// whatever the tiles and team sizes, the forward's saved state, operands in
// the execution space's memory.
#include <cstring>
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include "test_kokkos_backward.hpp"

TEST_CASE("kokkos backward is bit-identical whatever the tiles and team sizes", "[backward][kokkos][determinism]") {
  const test::determinism_case dc(150, 1840);
  const auto& p = dc.p;
  const auto& slots = dc.slots;
  const auto& tslot = dc.tslot;
  const auto& a = dc.a;
  const auto& bt = dc.bt;
  const auto same_bits = test::determinism_case::same_bits;
  auto run = [&](const kokkos_be& be, const auto& attn, const std::vector<test::param_slot>& sl) {
    grads<float> r(p, sl);
    backward(be, attn, p.Q<float>(), p.K<float>(), p.V<float>(), dc.dout, r.g);
    return r;
  };
  const auto r1 = run(kokkos_be{}, a, slots);
  const auto t1 = run(kokkos_be{}, bt, tslot);
  for (std::size_t rows : {1u, 32u, 64u})
    for (std::size_t tile : {8u, 24u}) {
      INFO("team_rows " << rows << ", key_tile " << tile);
      const kokkos_be be{space{}, rows, tile};
      const auto rn = run(be, a, slots);
      CHECK(same_bits(r1.dq, rn.dq));
      CHECK(same_bits(r1.dk, rn.dk));
      CHECK(same_bits(r1.dv, rn.dv));
      for (std::size_t i = 0; i < slots.size(); ++i) CHECK(same_bits(r1.params[i], rn.params[i]));
      const auto tn = run(be, bt, tslot);
      CHECK(same_bits(t1.params[0], tn.params[0]));
      CHECK(same_bits(t1.dq, tn.dq));
    }
}

TEST_CASE("kokkos backward with the forward's saved state equals the one that recomputes it", "[backward][kokkos]") {
  test::expect_saved_forward_matches(kokkos_be{}, 1850);
}

TEST_CASE("kokkos backward_device runs on operands in the execution space's memory", "[backward][kokkos]") {
  using M = space::memory_space;
  const std::size_t B = 1, H = 4, Hk = 2, T = 70, d = 32;
  const test::operands p(B, H, Hk, T, T, d, d, 1860);
  std::vector<double> sink = test::round_to_float(test::random_vector(H, 1861));
  const std::vector<float> sinkf = test::cast<float>(sink);
  const std::vector<double> dO = test::round_to_float(test::random_vector(p.out_size(), 1862));
  const std::vector<float> dOf = test::cast<float>(dO);
  using host = Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  auto put = [&](const std::vector<float>& x) {
    Kokkos::View<float*, M> v("x", x.size());
    Kokkos::deep_copy(v, host(x.data(), x.size()));
    return v;
  };
  const auto q = put(p.qf), k = put(p.kf), v = put(p.vf), go = put(dOf), sd = put(sinkf);
  Kokkos::View<float*, M> dq("dq", q.size()), dk("dk", k.size()), dv("dv", v.size()), dsink("dsink", H);
  attention<score::scaled_dot, norm::sink_logit, bias::none, pos::rope, mask::causal> a;
  a.norm.logits = param_ref(sd.data(), H);
  gradients<float> g{{dq.data(), B, H, T, d}, {dk.data(), B, Hk, T, d}, {dv.data(), B, Hk, T, d}};
  g.params.sink = dsink.data();
  backward_device(kokkos_be{}, a, tensor4<const float>(q.data(), B, H, T, d), tensor4<const float>(k.data(), B, Hk, T, d),
                  tensor4<const float>(v.data(), B, Hk, T, d), tensor4<const float>(go.data(), B, H, T, d), g);
  auto get = [](const Kokkos::View<float*, M>& x) {
    std::vector<float> y(x.size());
    Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(y.data(), y.size()), x);
    return y;
  };
  attention<score::scaled_dot, norm::sink_logit, bias::none, pos::rope, mask::causal> ah;
  ah.norm.logits = param_ref(sink.data(), H);
  std::vector<test::param_slot> slots = {{"dsink", &sink, &param_grads<double>::sink}};
  grads<double> ref(p, slots);
  backward(backend::reference{}, ah, p.Q<double>(), p.K<double>(), p.V<double>(),
           tensor4<const double>(dO.data(), B, H, T, d), ref.g);
  CHECK(test::rel_l2(get(dq), ref.dq) <= 1e-4);
  CHECK(test::rel_l2(get(dk), ref.dk) <= 1e-4);
  CHECK(test::rel_l2(get(dv), ref.dv) <= 1e-4);
  CHECK(test::rel_l2(get(dsink), ref.params[0]) <= 1e-4);
}

TEST_CASE("kokkos backward at head dims above 128, up to the 256 capacity", "[backward][kokkos]") {
  // The backward kernels' widest instantiation (ATTNSINK_KOKKOS_MAX_DIM, 256 by default).
  if constexpr (kokkos_detail::max_dim < 256) {
    SKIP("built with ATTNSINK_KOKKOS_MAX_DIM=" << kokkos_detail::max_dim);
  } else {
    test::for_each_wide_dim(37, 1870, [](const test::operands& p, const mask::dynamic& m) {
      expect_backward_matches(kokkos_be{}, attention<score::scaled_dot, norm::softmax, bias::none, pos::rope, mask::dynamic>{{}, {}, {}, {}, m}, p, {}, 1880 + p.dim);
    });
  }
}
