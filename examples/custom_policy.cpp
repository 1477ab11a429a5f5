// custom_policy — a normalization written outside the library, run on every backend.
//
// "Softmax with temperature-tied denominator": p_ij = e^{s_ij} / (Σ_j e^{s_ij} + κ),
// a softmax_off_by_one whose extra mass κ = e^{log κ} is a user constant. A
// policy is a plain struct that satisfies attnsink::norm_policy; nothing in
// the library needs to know about it.
#include <attnsink/cpu.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

struct softmax_plus_kappa {
  using axis = attnsink::axis::norm;
  static constexpr const char* name = "softmax_plus_kappa";
  static constexpr bool tracks_max = true;        // keep a running max m, rescale by e^{m - m'}
  static constexpr bool has_denominator = true;
  static constexpr bool sums_to_one = false;
  static constexpr bool non_negative = true;
  double log_kappa = 0.0;

  // The state before any key: κ = e^{log κ} of mass at "logit" log κ.
  attnsink::row_init init(std::size_t) const { return {log_kappa, 1.0}; }
  template <class T> T weight(T s, T m) const { return attnsink::math::exp(s - m); }
  template <class T> T mass(T s, T m) const { return attnsink::math::exp(s - m); }
  template <class T> T finish(T, T l) const { return T(1) / l; }
  void check(const attnsink::problem&) const {
    if (!std::isfinite(log_kappa)) throw attnsink::value_error("norm.log_kappa", "expected a finite value");
  }
};
static_assert(attnsink::norm_policy<softmax_plus_kappa>);

int main() {
  using namespace attnsink;
  constexpr std::size_t B = 2, H = 4, T = 128, D = 32;
  std::mt19937 gen(1);
  std::normal_distribution<float> normal;
  std::vector<float> q(B * H * T * D), k(q.size()), v(q.size()), o_cpu(q.size()), o_ref(q.size());
  for (auto* x : {&q, &k, &v})
    for (auto& e : *x) e = normal(gen);

  attention_of<softmax_plus_kappa, pos::rope> attn;  // any order; unnamed slots take their defaults
  attn.norm.log_kappa = std::log(4.0);
  const tensor4<const float> Q(q.data(), B, H, T, D), K(k.data(), B, H, T, D), V(v.data(), B, H, T, D);
  forward(backend::reference{}, attn, Q, K, V, tensor4<float>(o_ref.data(), B, H, T, D));
  forward(backend::cpu{}, attn, Q, K, V, tensor4<float>(o_cpu.data(), B, H, T, D));
  double num = 0, den = 0;
  for (std::size_t i = 0; i < q.size(); ++i) num += (o_cpu[i] - o_ref[i]) * (o_cpu[i] - o_ref[i]), den += o_ref[i] * o_ref[i];
  std::printf("softmax_plus_kappa (kappa = 4) with RoPE, causal: cpu vs reference relative L2 %.2e\n", std::sqrt(num / den));
  return std::sqrt(num / den) < 1e-5 ? 0 : 1;
}
