// tests/forward_cases.hpp — one test body for "backend X computes what the
// reference computes", instantiated per backend in a small file each
// (test_forward_cpu.cpp; the Kokkos backend's file likewise).
#pragma once

#include <string>
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include <attnsink/variants.hpp>

#include "common.hpp"

namespace attnsink::test {

struct shape {
  std::size_t batch, heads, kv_heads, tq, tk, dim, vdim;
};

// tokens ∈ {1, 3, 64, 257, 1000}, head_dim ∈ {1, 17, 64, 80, 128}, grouped-query
// ratios 1, 2, 3, 4 (and more keys than queries: the decode/cross case).
inline const std::vector<shape>& forward_shapes() {
  static const std::vector<shape> s = {
      {2, 4, 2, 1, 1, 17, 17},     {1, 2, 2, 3, 3, 1, 1},      {2, 4, 1, 64, 64, 64, 64},
      {1, 3, 1, 257, 257, 80, 80}, {1, 2, 1, 1000, 1000, 128, 128}, {2, 4, 2, 7, 300, 64, 48},
      {1, 6, 2, 64, 64, 17, 33},
  };
  return s;
}

inline std::vector<mask::dynamic> masks_for(std::size_t tk) {
  using K = mask::dynamic::kind;
  return {{K::causal, 0}, {K::none, 0}, {K::window, std::max<std::size_t>(1, tk / 3)}, {K::prefix, tk / 2}};
}

// Head dims above 128 (136, and 256: the Kokkos kernels' default capacity) ×
// every mask, on one small GQA shape with fresh operands per dim (seed + d):
// body(p, m).
template <class Body>
void for_each_wide_dim(std::size_t tokens, std::uint64_t seed, Body body) {
  for (std::size_t d : {136u, 256u}) {
    const operands p(1, 4, 2, tokens, tokens, d, d, seed + d);
    for (const mask::dynamic& m : masks_for(tokens)) {
      INFO("head dim " << d << " mask kind " << int(m.which) << ":" << m.param);
      body(p, m);
    }
  }
}

inline std::string describe(const shape& s, const mask::dynamic& m, bool rope) {
  static const char* names[] = {"none", "causal", "window", "prefix"};
  return "B=" + std::to_string(s.batch) + " H=" + std::to_string(s.heads) + " Hkv=" + std::to_string(s.kv_heads) +
         " tq=" + std::to_string(s.tq) + " tk=" + std::to_string(s.tk) + " d=" + std::to_string(s.dim) +
         " dv=" + std::to_string(s.vdim) + " mask=" + names[int(m.which)] + ":" + std::to_string(m.param) +
         (rope ? " rope" : "");
}

// Runs `a` on backend `be` (float) and on the reference (double) and compares:
// every output element written and finite, relative L2 error <= tol, and the
// row state (m, l) the same.
template <class Backend, class A>
void expect_matches_reference(const Backend& be, const A& a, const operands& p, double tol = 1e-5) {
  result<double> ref(p);
  forward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), ref.O(p), ref.stats());
  result<float> got(p);
  forward(be, a, p.Q<float>(), p.K<float>(), p.V<float>(), got.O(p), got.stats());
  REQUIRE(all_finite(got.out));
  const double err = rel_l2(got.out, ref.out);
  INFO("relative L2 error " << err);
  CHECK(err <= tol);
  std::size_t bad_stats = 0;
  for (std::size_t r = 0; r < p.rows(); ++r) {
    const double m = ref.m[r], l = ref.l[r];
    const bool m_ok = std::isinf(m) ? got.m[r] == float(m) : std::abs(got.m[r] - m) <= 1e-5 * (1 + std::abs(m));
    const bool l_ok = std::abs(got.l[r] - l) <= 1e-4 * (1 + std::abs(l));
    bad_stats += !(m_ok && l_ok);
  }
  CHECK(bad_stats == 0);
}

// Learnable parameters for the named variants, random and fixed per shape.
struct variant_params {
  std::vector<double> sink, kstar, vstar, t5;
  explicit variant_params(const shape& s, std::uint64_t seed)
      : sink(random_vector(s.heads, seed + 10)),
        kstar(round_to_float(random_vector(s.kv_heads * s.dim, seed + 11, 2.0))),
        vstar(round_to_float(random_vector(s.kv_heads * s.vdim, seed + 12))),
        t5(random_vector(s.heads * 32, seed + 13, 0.5)) {}
  variants::settings settings() const {
    variants::settings st;
    st.sink = param_ref(sink.data(), sink.size());
    st.kstar = param_ref(kstar.data(), kstar.size());
    st.vstar = param_ref(vstar.data(), vstar.size());
    st.t5_table = param_ref(t5.data(), t5.size());
    st.alpha = 0.75;
    st.cap = 2.0;  // small enough that the cap bites on random scores
    st.sigmoid_bias = -1.5;
    return st;
  }
};

// Every shape × every mask × RoPE off/on (on for even head dims only), less
// the cases skip(s, m, rope) leaves out, each with fresh operands and the named
// variants' settings (random parameters, the mask, RoPE); seeds count up from
// `seed`. body(s, m, rope, p, vp, st, case_seed).
template <class Skip, class Body>
void for_each_case(const std::vector<shape>& shapes, std::uint64_t seed, Skip skip, Body body) {
  for (const shape& s : shapes)
    for (const mask::dynamic& m : masks_for(s.tk))
      for (int r = 0; r < 2; ++r) {
        const bool rope = r != 0;
        if ((rope && s.dim % 2) || skip(s, m, rope)) continue;
        ++seed;
        const operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, seed);
        variant_params vp(s, seed);
        variants::settings st = vp.settings();
        st.mask = m;
        st.rope.enabled = rope;
        body(s, m, rope, p, vp, st, seed);
      }
}

// Every shape × every mask × RoPE (the largest shape only with the causal and
// window masks, to bound the reference's time).
template <class V, class Backend>
void run_forward_cases(const Backend& be) {
  const auto big_only_banded = [](const shape& s, const mask::dynamic& m, bool rope) {
    return s.tk >= 1000 && (m.which == mask::dynamic::kind::none || m.which == mask::dynamic::kind::prefix || rope);
  };
  for_each_case(forward_shapes(), 100, big_only_banded,
                [&](const shape& s, const mask::dynamic& m, bool rope, const operands& p, const variant_params& vp,
                    variants::settings& st, std::uint64_t) {
                  if (s.vdim != s.dim && !st.vstar.empty()) st.vstar = param_ref(vp.vstar.data(), s.kv_heads * s.vdim);
                  INFO(V::name << " " << describe(s, m, rope));
                  expect_matches_reference(be, variants::make<V>(st), p);
                });
}

}  // namespace attnsink::test
