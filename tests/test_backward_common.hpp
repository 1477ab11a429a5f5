// tests/test_backward_common.hpp — gradient checks shared by the backward tests:
// finite differences of the reference forward (the FD check of the oracle) and
// backend-against-reference comparisons.
#pragma once

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

}  // namespace attnsink::test
