// tests/test_backward_common.hpp — gradient checks shared by the backward tests:
// finite differences of the reference forward (the FD check of the oracle) and
// backend-against-reference comparisons.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include <attnsink/backend/reference_backward.hpp>

#include "forward_cases.hpp"

namespace attnsink::test {

// A learnable parameter array the attention value points into (perturbed in
// place by the finite differences), and where its gradient goes.
struct param_slot {
  std::string name;
  std::vector<double>* values;
  double* param_grads<double>::*field;
};

// The slots of a named variant's parameters (forward_cases.hpp's variant_params).
template <class A>
std::vector<param_slot> variant_slots(variant_params& vp, const A& a) {
  std::vector<param_slot> s;
  using N = typename A::norm_type;
  using B = typename A::bias_type;
  if constexpr (detail::learns_init<N>) s.push_back({"dsink", &vp.sink, &param_grads<double>::sink});
  if constexpr (B::has_kv) {
    s.push_back({"dkstar", &vp.kstar, &param_grads<double>::kstar});
    if (a.bias.learns_vstar()) s.push_back({"dvstar", &vp.vstar, &param_grads<double>::vstar});
  }
  if constexpr (std::is_same_v<B, bias::t5_relative>)
    if (!a.bias.table.empty()) s.push_back({"dt5", &vp.t5, &param_grads<double>::bias});
  return s;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Gradients of L = Σ dO ⊙ O from the reference backward, against central
// differences of the reference forward, element by element over q, k, v and
// every slot: relative L2 error <= tol for each.
template <class A>
void check_finite_differences(const A& a, operands p, const std::vector<param_slot>& slots, std::uint64_t seed,
                              double tol = 1e-6) {
  const std::vector<double> dout = random_vector(p.out_size(), seed + 77);
  const tensor4<const double> dO(dout.data(), p.batch, p.heads, p.tq, p.vdim);
  std::vector<double> out(p.out_size());
  auto loss = [&] {
    forward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(),
            tensor4<double>(out.data(), p.batch, p.heads, p.tq, p.vdim));
    return dot(out, dout);
  };
  std::vector<double> dq(p.q.size()), dk(p.k.size()), dv(p.v.size());
  poison(dq);
  poison(dk);
  poison(dv);
  gradients<double> g{{dq.data(), p.batch, p.heads, p.tq, p.dim},
                      {dk.data(), p.batch, p.kv_heads, p.tk, p.dim},
                      {dv.data(), p.batch, p.kv_heads, p.tk, p.vdim}};
  std::vector<std::vector<double>> pg(slots.size());
  for (std::size_t i = 0; i < slots.size(); ++i) {
    pg[i].resize(slots[i].values->size());
    poison(pg[i]);
    g.params.*(slots[i].field) = pg[i].data();
  }
  backward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), dO, g);

  // Central differences at h and h/2, Richardson-extrapolated (error O(h^4)):
  // softpick near s = 0 and steep sigmoids have large third derivatives.
  auto fd = [&](std::vector<double>& x) {
    std::vector<double> grad(x.size());
    for (std::size_t e = 0; e < x.size(); ++e) {
      const double x0 = x[e], h = 1e-4 * std::max(1.0, std::abs(x0));
      auto central = [&](double step) {
        x[e] = x0 + step;
        const double lp = loss();
        x[e] = x0 - step;
        const double lm = loss();
        x[e] = x0;
        return (lp - lm) / (2 * step);
      };
      grad[e] = (4 * central(h / 2) - central(h)) / 3;
    }
    return grad;
  };
  auto expect = [&](const char* name, const std::vector<double>& got, std::vector<double>& x) {
    INFO(name);
    REQUIRE(all_finite(got));
    // With one visible key a normalized row is nearly constant (p ≈ 1 - eps/f),
    // its gradient ~1e-8 and the differences' rounding (~1e-10) comparable: the
    // error is taken relative to max(||fd||, 1e-3), an absolute floor of 1e-9.
    const std::vector<double> ref = fd(x);
    double num = 0, den = 0;
    for (std::size_t e = 0; e < ref.size(); ++e) {
      num += (got[e] - ref[e]) * (got[e] - ref[e]);
      den += ref[e] * ref[e];
    }
    const double err = std::sqrt(num) / std::max(std::sqrt(den), 1e-3);
    INFO("relative L2 error against finite differences " << err << " (||fd|| = " << std::sqrt(den) << ")");
    CHECK(err <= tol);
  };
  expect("dq", dq, p.q);
  expect("dk", dk, p.k);
  expect("dv", dv, p.v);
  for (std::size_t i = 0; i < slots.size(); ++i) expect(slots[i].name.c_str(), pg[i], *slots[i].values);
}

// Gradients of one backend run, poisoned before it, in T.
template <class T>
struct grads {
  std::vector<T> dq, dk, dv;
  std::vector<std::vector<T>> params;
  gradients<T> g;
  grads(const test::operands& p, const std::vector<test::param_slot>& slots)
      : dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), params(slots.size()) {
    test::poison(dq);
    test::poison(dk);
    test::poison(dv);
    g = {{dq.data(), p.batch, p.heads, p.tq, p.dim},
         {dk.data(), p.batch, p.kv_heads, p.tk, p.dim},
         {dv.data(), p.batch, p.kv_heads, p.tk, p.vdim}};
    for (std::size_t i = 0; i < slots.size(); ++i) {
      params[i].resize(slots[i].values->size());
      test::poison(params[i]);
      // the same field of param_grads<T> as the slot names for double
      const auto field = slots[i].field;
      T* ptr = params[i].data();
      if (field == &param_grads<double>::sink) g.params.sink = ptr;
      if (field == &param_grads<double>::kstar) g.params.kstar = ptr;
      if (field == &param_grads<double>::vstar) g.params.vstar = ptr;
      if (field == &param_grads<double>::bias) g.params.bias = ptr;
      if (field == &param_grads<double>::score) g.params.score = ptr;
    }
  }
};

// Learnable parameters as float32 holds them, so both backends see the same values.
inline void round_params(const std::vector<test::param_slot>& slots) {
  // in place: the attention value points at these buffers
  for (const auto& s : slots) {
    const auto r = test::round_to_float(*s.values);
    std::copy(r.begin(), r.end(), s.values->begin());
  }
}

// A backend's backward in float against the reference backward in double:
// every gradient finite and within `tol` relative L2 (1e-4 for every variant:
// the families float cannot resolve run in double inside, see float_too_coarse).
template <class Backend, class A>
void expect_backward_matches(const Backend& be, const A& a, const test::operands& p,
                             const std::vector<test::param_slot>& slots, std::uint64_t seed,
                             double tol = 1e-4) {
  const std::vector<double> dO = test::round_to_float(test::random_vector(p.out_size(), seed + 99));
  const std::vector<float> dOf = test::cast<float>(dO);
  grads<double> ref(p, slots);
  backward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(),
           tensor4<const double>(dO.data(), p.batch, p.heads, p.tq, p.vdim), ref.g);
  grads<float> got(p, slots);
  backward(be, a, p.Q<float>(), p.K<float>(), p.V<float>(),
           tensor4<const float>(dOf.data(), p.batch, p.heads, p.tq, p.vdim), got.g);
  auto expect = [&](const char* name, const auto& x, const auto& y) {
    INFO(name);
    REQUIRE(test::all_finite(x));
    // A softmax row with one visible key has dS = p(dP - D) = 0 exactly; float
    // leaves ~1e-7 of the cancelled O(1) terms. Errors are therefore relative
    // to max(||ref||, 1e-2·sqrt(n)), i.e. never below an RMS of 1e-2.
    double num = 0, den = 0;
    for (std::size_t e = 0; e < x.size(); ++e) {
      num += (double(x[e]) - double(y[e])) * (double(x[e]) - double(y[e]));
      den += double(y[e]) * double(y[e]);
    }
    const double err = std::sqrt(num) / std::max(std::sqrt(den), 1e-2 * std::sqrt(double(x.size())));
    INFO("relative L2 error " << err << " (||ref|| = " << std::sqrt(den) << ", n = " << x.size() << ")");
    CHECK(err <= tol);
  };
  expect("dq", got.dq, ref.dq);
  expect("dk", got.dk, ref.dk);
  expect("dv", got.dv, ref.dv);
  for (std::size_t i = 0; i < slots.size(); ++i) expect(slots[i].name.c_str(), got.params[i], ref.params[i]);
}

// Tiles smaller than the problem both ways (be carries them), with learnable
// biases and feature maps: a t5 table under softcap, a tensor bias under
// sigmoid, an MLP feature map, a sink logit with a kv-bias key — every mask.
template <class Backend>
void expect_learnable_params_match(const Backend& be, std::initializer_list<std::size_t> tokens, std::uint64_t seed) {
  for (std::size_t t : tokens) {
    const operands p(2, 4, 2, t, t, 12, 12, seed + t);
    std::vector<double> table = round_to_float(random_vector(4 * 32, seed + 1 + t, 0.5));
    std::vector<double> B = round_to_float(random_vector(2 * 4 * t * t, seed + 2 + t));
    std::vector<double> w = round_to_float(random_vector(8 * 12 + 6 * 8, seed + 3 + t, 0.5));
    std::vector<double> sink = round_to_float(random_vector(4, seed + 4 + t));
    std::vector<double> ks = round_to_float(random_vector(2 * 12, seed + 5 + t));
    std::vector<double> vs = round_to_float(random_vector(2 * 12, seed + 6 + t));
    for (const auto& m : masks_for(t)) {
      INFO("tokens " << t << " mask kind " << int(m.which) << ":" << m.param);
      using t5_attn = attention<score::softcap<>, norm::softmax, bias::t5_relative, pos::rope, mask::dynamic>;
      t5_attn a1{{{}, 3.0}, {}, {32, 128, param_ref(table.data(), table.size())}, {}, m};
      expect_backward_matches(be, a1, p, {{"dt5", &table, &param_grads<double>::bias}}, t);
      using tensor_attn = attention<score::scaled_dot, norm::sigmoid, bias::tensor, pos::nope, mask::dynamic>;
      tensor_attn a2{{}, {{}, -1.0}, {param_ref(B.data(), B.size())}, {}, m};
      expect_backward_matches(be, a2, p, {{"dbias", &B, &param_grads<double>::bias}}, t + 1);
      using mlp_attn =
          attention<score::mlp_kernel, norm::normalized<fn::elu_plus_one>, bias::none, pos::rope, mask::dynamic>;
      mlp_attn a3{{param_ref(w.data(), 8 * 12), param_ref(w.data() + 8 * 12, 6 * 8), 8, 6, true}, {}, {}, {}, m};
      expect_backward_matches(be, a3, p, {{"dW1,dW2", &w, &param_grads<double>::score}}, t + 2);
      using sink_kv = attention<score::scaled_dot, norm::sink_logit, bias::kv_bias, pos::rope, mask::dynamic>;
      sink_kv a4{{}, {{}, param_ref(sink.data(), 4)}, {param_ref(ks.data(), ks.size()), param_ref(vs.data(), vs.size())}, {}, m};
      expect_backward_matches(be, a4, p,
                              {{"dsink", &sink, &param_grads<double>::sink},
                               {"dkstar", &ks, &param_grads<double>::kstar},
                               {"dvstar", &vs, &param_grads<double>::vstar}},
                              t + 3);
    }
  }
}

// A document mask (two sequences of uneven documents) under softpick + ALiBi + RoPE.
template <class Backend>
void expect_document_mask_matches(const Backend& be, std::uint64_t seed) {
  const operands p(2, 2, 1, 50, 50, 16, 16, seed);
  std::vector<std::int32_t> ids(100);
  for (std::size_t i = 0; i < 100; ++i) ids[i] = std::int32_t((i % 50) / 13 + (i / 50) * 10);
  const auto starts = mask::document_starts(ids.data(), 2, 50);
  attention<score::scaled_dot, norm::softpick, bias::alibi, pos::rope, mask::document> a{};
  a.mask.start = starts.data();
  expect_backward_matches(be, a, p, {}, seed + 1);
}

// The operands and learnable parameters of the determinism tests: a sink logit
// with a kv-bias key under RoPE and a causal mask (a), a t5 table (bt).
struct determinism_case {
  using A = attention<score::scaled_dot, norm::sink_logit, bias::kv_bias, pos::rope, mask::causal>;
  using B = attention<score::scaled_dot, norm::softmax, bias::t5_relative, pos::nope, mask::none>;
  operands p;
  std::vector<double> sink, ks, vs, table;
  std::vector<param_slot> slots, tslot;
  A a;
  B bt;
  std::vector<float> dO;
  tensor4<const float> dout;
  determinism_case(std::size_t t, std::uint64_t seed)
      : p(2, 4, 2, t, t, 32, 32, seed),
        sink(round_to_float(random_vector(4, seed + 1))),
        ks(round_to_float(random_vector(2 * 32, seed + 2))),
        vs(round_to_float(random_vector(2 * 32, seed + 3))),
        table(round_to_float(random_vector(4 * 32, seed + 4))),
        slots{{"dsink", &sink, &param_grads<double>::sink},
              {"dkstar", &ks, &param_grads<double>::kstar},
              {"dvstar", &vs, &param_grads<double>::vstar}},
        tslot{{"dt5", &table, &param_grads<double>::bias}},
        a{{}, {{}, param_ref(sink.data(), 4)}, {param_ref(ks.data(), ks.size()), param_ref(vs.data(), vs.size())}},
        bt{{}, {}, {32, 128, param_ref(table.data(), table.size())}},
        dO(cast<float>(random_vector(p.out_size(), seed + 5))),
        dout(dO.data(), 2, 4, t, 32) {}
  determinism_case(const determinism_case&) = delete;  // slots and a point into the members
  static bool same_bits(const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  }
};

// A backward given the forward's saved output and row state equals the one
// that recomputes them (ALiBi, RoPE, causal).
template <class Backend>
void expect_saved_forward_matches(const Backend& be, std::uint64_t seed) {
  const operands p(1, 4, 2, 100, 100, 32, 32, seed);
  using A = attention<score::scaled_dot, norm::softmax, bias::alibi, pos::rope, mask::causal>;
  const std::vector<float> dO = cast<float>(random_vector(p.out_size(), seed + 1));
  const tensor4<const float> dout(dO.data(), 1, 4, 100, 32);
  result<float> fwd(p);
  forward(be, A{}, p.Q<float>(), p.K<float>(), p.V<float>(), fwd.O(p), fwd.stats());
  grads<float> with(p, {}), without(p, {});
  backward(be, A{}, p.Q<float>(), p.K<float>(), p.V<float>(), dout, with.g,
           saved_forward<float>{tensor4<const float>(fwd.out.data(), 1, 4, 100, 32), fwd.m.data(), fwd.l.data()});
  backward(be, A{}, p.Q<float>(), p.K<float>(), p.V<float>(), dout, without.g);
  CHECK(with.dq == without.dq);
  CHECK(with.dk == without.dk);
  CHECK(with.dv == without.dv);
}

}  // namespace attnsink::test
