// attnsink_bench_kokkos_gpu — forward TFLOP/s of the Kokkos backend on the
// default execution space (built only when Kokkos has a device backend).
// fp32, B=4, H=16, N ∈ {1024, 4096}, d ∈ {64, 128}, causal and not, for
// softmax, sigmoid, sink_logit and alibi; operands already in device memory
// (forward_device), so the time is the kernel's. FLOPs = 4·B·H·N²·d, half of
// it under the causal mask. Compare with benchmarks/kokkos/gpu_peers.py run
// on the same machine in the same session.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include <attnsink/kokkos.hpp>
#include <attnsink/variants.hpp>

using namespace attnsink;
using E = Kokkos::DefaultExecutionSpace;
using M = E::memory_space;

namespace {

// Deterministic N(0,1)-like values without Kokkos_Random: a hash per index.
void fill(Kokkos::View<float*, M> x, unsigned seed) {
  Kokkos::parallel_for(
      "fill", Kokkos::RangePolicy<E>(0, x.size()), KOKKOS_LAMBDA(const std::size_t i) {
        unsigned h = unsigned(i) * 2654435761u ^ (seed * 40503u + 0x9E3779B9u);
        float s = 0;
        for (int r = 0; r < 4; ++r) {
          h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
          s += float(h & 0xFFFFFF) / float(0x1000000);
        }
        x(i) = (s - 2.0f) * 1.7320508f;  // sum of 4 uniforms: mean 2, variance 1/3
      });
}

template <class A>
double time_ms(const A& a, tensor4<const float> q, tensor4<const float> k, tensor4<const float> v, tensor4<float> o) {
  const backend::kokkos<E> be{};
  for (int w = 0; w < 2; ++w) forward_device(be, a, q, k, v, o);
  std::vector<double> ms;
  for (int r = 0; r < 7; ++r) {
    Kokkos::fence();
    Kokkos::Timer t;
    forward_device(be, a, q, k, v, o);
    Kokkos::fence();
    ms.push_back(t.seconds() * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard guard(argc, argv);
  const std::size_t B = 4, H = 16;
  std::printf("# attnsink kokkos forward on %s, fp32, B=%zu H=%zu; median of 7 after 2 warm-up calls\n",
              E::name(), B, H);
  std::printf("%-12s %6s %4s %-7s %10s %9s\n", "variant", "N", "d", "mask", "ms", "TFLOP/s");
  Kokkos::View<float*, M> sink("sink", H);
  fill(sink, 99);
  for (std::size_t N : {1024u, 4096u})
    for (std::size_t d : {64u, 128u}) {
      Kokkos::View<float*, M> q("q", B * H * N * d), k("k", B * H * N * d), v("v", B * H * N * d),
          o("o", B * H * N * d);
      fill(q, 1), fill(k, 2), fill(v, 3);
      const tensor4<const float> tq(q.data(), B, H, N, d), tk(k.data(), B, H, N, d), tv(v.data(), B, H, N, d);
      const tensor4<float> to(o.data(), B, H, N, d);
      for (int causal = 0; causal < 2; ++causal) {
        const double flops = 4.0 * B * H * double(N) * double(N) * double(d) * (causal ? 0.5 : 1.0);
        auto report = [&](const char* name, double ms) {
          std::printf("%-12s %6zu %4zu %-7s %10.3f %9.2f\n", name, N, d, causal ? "causal" : "none", ms,
                      flops / (ms * 1e-3) / 1e12);
          std::fflush(stdout);
        };
        attnsink::mask::dynamic m{causal ? attnsink::mask::dynamic::kind::causal : attnsink::mask::dynamic::kind::none, 0};
        attnsink::variants::settings st;
        st.mask = m;
        st.sink = param_ref(sink.data(), H);
        st.sigmoid_bias = -std::log(double(N));
        report("softmax", time_ms(attnsink::variants::make<attnsink::variants::softmax>(st), tq, tk, tv, to));
        report("sigmoid", time_ms(attnsink::variants::make<attnsink::variants::sigmoid>(st), tq, tk, tv, to));
        report("sink_logit", time_ms(attnsink::variants::make<attnsink::variants::sink_logit>(st), tq, tk, tv, to));
        report("alibi", time_ms(attnsink::variants::make<attnsink::variants::alibi>(st), tq, tk, tv, to));
      }
    }
}
