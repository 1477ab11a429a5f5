#include <attnsink/cpu.hpp>  // core + reference backend + CPU backend (link attnsink::cpu)
#include <cmath>
#include <cstdio>
#include <vector>
using namespace attnsink;

int main() {
  const std::size_t B = 1, H = 8, Hkv = 2, T = 512, D = 64;  // (batch, heads, tokens, dim); Hkv divides H
  std::vector<float> q(B * H * T * D), k(B * Hkv * T * D), v(k.size()), o(q.size()), m(B * H * T), l(m.size());
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.1f * i);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.3f * i), v[i] = std::sin(0.7f * i);

  attention_of<norm::sigmoid, bias::alibi, pos::rope> a;  // any order; other slots: scaled_dot, causal
  a.norm.bias = -std::log(double(T));                     // σ(s + b), b = -log n
  forward(backend::cpu{}, a, tensor4<const float>(q.data(), B, H, T, D), tensor4<const float>(k.data(), B, Hkv, T, D),
          tensor4<const float>(v.data(), B, Hkv, T, D), tensor4<float>(o.data(), B, H, T, D),
          row_stats<float>{m.data(), l.data()});  // per-row state for backward and sink metrics
  std::printf("o[0, 0, %zu, 0:3] = %.4f %.4f %.4f\n", T - 1, o[(T - 1) * D], o[(T - 1) * D + 1], o[(T - 1) * D + 2]);
}
