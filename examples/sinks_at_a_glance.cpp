// sinks_at_a_glance — the same inputs through softmax, sigmoid and kv_bias
// attention, and the attention each puts on the first token.
//
// Two inputs: plain random q, k, v; and the same with a "planted sink": the
// first key is made large along a direction every query shares, which is the
// geometry trained LMs develop (Gu et al., ICLR 2025). Softmax must spend its
// unit budget somewhere, so the planted key soaks attention up; sigmoid has no
// budget and its weights stay where the scores put them; with a learnable key
// bias k* aligned to the same direction, the bias key takes the attention
// instead of token 1.
#include <attnsink/cpu.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using namespace attnsink;

constexpr std::size_t B = 1, H = 4, T = 64, D = 64;

// α_1 averaged over heads: α_k = 1/(T-k+1) Σ_{t>=k} A[t, k] with k = 1 (column `col`).
double alpha_first(const std::vector<double>& p, std::size_t cols, std::size_t col) {
  double total = 0;
  for (std::size_t h = 0; h < H; ++h) {
    double a = 0;
    for (std::size_t t = 0; t < T; ++t) a += p[(h * T + t) * cols + col];
    total += a / double(T);
  }
  return total / double(H);
}

template <class A>
std::vector<double> weights(const A& attn, const std::vector<double>& q, const std::vector<double>& k,
                            const std::vector<double>& v) {
  const std::size_t cols = T + (A::bias_type::has_kv ? 1 : 0);
  std::vector<double> o(B * H * T * D), p(B * H * T * cols);
  forward(backend::reference{}, attn, tensor4<const double>(q.data(), B, H, T, D),
          tensor4<const double>(k.data(), B, H, T, D), tensor4<const double>(v.data(), B, H, T, D),
          tensor4<double>(o.data(), B, H, T, D), row_stats<double>{}, probs_view<double>{p.data()});
  return p;
}

int main() {
  std::mt19937 gen(7);
  std::normal_distribution<double> normal;
  std::vector<double> q(B * H * T * D), k(q.size()), v(q.size()), u(D);
  for (auto* x : {&q, &k, &v})
    for (auto& e : *x) e = normal(gen);
  for (auto& e : u) e = normal(gen) / std::sqrt(double(D));  // a unit-ish shared direction

  std::vector<double> qs = q, ks = k;  // planted: q_t += 0.5u√d, k_1 = 0.75u√d (score +3)
  for (std::size_t h = 0; h < H; ++h) {
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t e = 0; e < D; ++e) qs[(h * T + t) * D + e] += 0.5 * u[e] * std::sqrt(double(D));
    for (std::size_t e = 0; e < D; ++e) ks[h * T * D + e] = 0.75 * u[e] * std::sqrt(double(D));
  }
  std::vector<double> kstar(H * D);  // a key bias along u, per head
  for (std::size_t h = 0; h < H; ++h)
    for (std::size_t e = 0; e < D; ++e) kstar[h * D + e] = 0.75 * u[e] * std::sqrt(double(D));

  attention<score::scaled_dot, norm::softmax> softmax;
  attention<score::scaled_dot, norm::sigmoid> sigmoid;
  attention<score::scaled_dot, norm::softmax, bias::kv_bias> kvb;
  kvb.bias.k = param_ref(kstar.data(), kstar.size());

  std::printf("Attention on the first token, T = %zu causal, %zu heads, head_dim %zu.\n", T, H, D);
  std::printf("alpha_1 = mean over queries t of A[t, 1]; uniform causal attention gives H_64/64 = 0.0741.\n\n");
  std::printf("%-10s %-14s %12s %14s\n", "variant", "input", "alpha_1", "alpha_k*");
  for (int planted = 0; planted < 2; ++planted) {
    const auto& qq = planted ? qs : q;
    const auto& kk = planted ? ks : k;
    const char* input = planted ? "planted sink" : "random";
    std::printf("%-10s %-14s %12.4f %14s\n", "softmax", input, alpha_first(weights(softmax, qq, kk, v), T, 0), "-");
    std::printf("%-10s %-14s %12.4f %14s\n", "sigmoid", input, alpha_first(weights(sigmoid, qq, kk, v), T, 0), "-");
    const auto pk = weights(kvb, qq, kk, v);
    std::printf("%-10s %-14s %12.4f %14.4f\n", "kv_bias", input, alpha_first(pk, T + 1, 1), alpha_first(pk, T + 1, 0));
  }

  // The CPU backend computes the same outputs without forming the weights.
  std::vector<float> qf(qs.begin(), qs.end()), kf(ks.begin(), ks.end()), vf(v.begin(), v.end()), of(q.size());
  std::vector<double> od(q.size());
  forward(backend::cpu{}, softmax, tensor4<const float>(qf.data(), B, H, T, D), tensor4<const float>(kf.data(), B, H, T, D),
          tensor4<const float>(vf.data(), B, H, T, D), tensor4<float>(of.data(), B, H, T, D));
  forward(backend::reference{}, softmax, tensor4<const double>(qs.data(), B, H, T, D),
          tensor4<const double>(ks.data(), B, H, T, D), tensor4<const double>(v.data(), B, H, T, D),
          tensor4<double>(od.data(), B, H, T, D));
  double num = 0, den = 0;
  for (std::size_t i = 0; i < od.size(); ++i) num += (of[i] - od[i]) * (of[i] - od[i]), den += od[i] * od[i];
  std::printf("\ncpu backend (float32) vs reference (float64), softmax planted: relative L2 error %.2e\n",
              std::sqrt(num / den));
  return 0;
}
