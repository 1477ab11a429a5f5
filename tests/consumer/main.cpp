// A consumer of the installed (or add_subdirectory'd) attnsink package.
#include <attnsink/cpu.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  using namespace attnsink;
  const std::size_t B = 1, H = 2, T = 16, D = 8;
  std::vector<float> q(B * H * T * D), k(q.size()), v(q.size()), o(q.size()), r(q.size());
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(0.37f * float(i) + 0.1f);
    k[i] = std::cos(0.11f * float(i) + 0.2f);
    v[i] = std::sin(0.05f * float(i) + 0.3f);
  }
  attention_of<norm::sigmoid, pos::rope, bias::alibi> a;
  const tensor4<const float> Q(q.data(), B, H, T, D), K(k.data(), B, H, T, D), V(v.data(), B, H, T, D);
  forward(backend::cpu{}, a, Q, K, V, tensor4<float>(o.data(), B, H, T, D));
  forward(backend::reference{}, a, Q, K, V, tensor4<float>(r.data(), B, H, T, D));
  double err = 0;
  for (std::size_t i = 0; i < o.size(); ++i) err = std::fmax(err, std::fabs(o[i] - r[i]));
  std::printf("consumer: max |cpu - reference| = %.2e\n", err);
  return err < 1e-5 ? 0 : 1;
}
