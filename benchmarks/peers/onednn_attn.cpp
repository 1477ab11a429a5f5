// oneDNN peer (2.6 API): S = scale * Q Kt (batched matmul, Kt a strided view of K),
// softmax primitive on S (in place, axis 2), O = S V (batched matmul).
// Tensors are [B*H, T, d] (B=1, H=8) fp32. Non-causal only.
// usage: OMP_NUM_THREADS=2 ./onednn_attn T d [causal=0]
#include <oneapi/dnnl/dnnl.hpp>
#include <oneapi/dnnl/dnnl_version.h>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

int main(int argc, char** argv) {
    const long T = argc > 1 ? atol(argv[1]) : 1024;
    const long d = argc > 2 ? atol(argv[2]) : 64;
    const int causal = argc > 3 ? atoi(argv[3]) : 0;
    if (causal) {
        fprintf(stderr, "onednn: causal not supported by this driver\n");
        return 2;
    }
    const long B = 1, H = 8, BH = B * H;
    const float scale = 1.0f / std::sqrt((float)d);

    engine eng(engine::kind::cpu, 0);
    stream s(eng);

    std::vector<float> q(BH * T * d), k(BH * T * d), v(BH * T * d), o(BH * T * d), S(BH * T * T);
    std::mt19937_64 gen(std::random_device{}());
    const float a = std::sqrt(3.0f);  // uniform(-sqrt3, sqrt3): unit variance
    std::uniform_real_distribution<float> U(-a, a);
    for (auto* p : {&q, &k, &v})
        for (auto& x : *p) x = U(gen);

    memory::desc q_md({BH, T, d}, dt::f32, tag::abc);
    memory::desc kt_md({BH, d, T}, dt::f32, memory::dims{T * d, 1, d});  // K^T view of [BH,T,d]
    memory::desc s_md({BH, T, T}, dt::f32, tag::abc);
    memory::desc v_md({BH, T, d}, dt::f32, tag::abc);
    memory::desc o_md({BH, T, d}, dt::f32, tag::abc);

    primitive_attr attr1;
    attr1.set_output_scales(0, {scale});
    matmul::primitive_desc mm1_pd(matmul::desc(q_md, kt_md, s_md), attr1, eng);
    softmax_forward::primitive_desc sm_pd(
        softmax_forward::desc(prop_kind::forward_inference, s_md, 2), eng);
    matmul::primitive_desc mm2_pd(matmul::desc(s_md, v_md, o_md), eng);

    matmul mm1(mm1_pd);
    softmax_forward sm(sm_pd);
    matmul mm2(mm2_pd);

    memory q_m(q_md, eng, q.data()), kt_m(kt_md, eng, k.data()), s_m(s_md, eng, S.data()),
        v_m(v_md, eng, v.data()), o_m(o_md, eng, o.data());

    auto run = [&] {
        mm1.execute(s, {{DNNL_ARG_SRC, q_m}, {DNNL_ARG_WEIGHTS, kt_m}, {DNNL_ARG_DST, s_m}});
        sm.execute(s, {{DNNL_ARG_SRC, s_m}, {DNNL_ARG_DST, s_m}});
        mm2.execute(s, {{DNNL_ARG_SRC, s_m}, {DNNL_ARG_WEIGHTS, v_m}, {DNNL_ARG_DST, o_m}});
        s.wait();
    };

    // correctness, once: double reference for a few rows of every head
    run();
    double maxerr = 0;
    const long rows[] = {0, 1, T / 3, T / 2, T - 2, T - 1};
    std::vector<double> sc(T);
    for (long h = 0; h < BH; ++h)
        for (long t : rows) {
            const float* qr = &q[(h * T + t) * d];
            double m = -INFINITY;
            for (long j = 0; j < T; ++j) {
                const float* kr = &k[(h * T + j) * d];
                double acc = 0;
                for (long c = 0; c < d; ++c) acc += (double)qr[c] * kr[c];
                sc[j] = acc / std::sqrt((double)d);
                m = std::max(m, sc[j]);
            }
            double sum = 0;
            for (long j = 0; j < T; ++j) sum += (sc[j] = std::exp(sc[j] - m));
            for (long c = 0; c < d; ++c) {
                double acc = 0;
                for (long j = 0; j < T; ++j) acc += sc[j] * v[(h * T + j) * d + c];
                maxerr = std::max(maxerr, std::fabs(acc / sum - o[(h * T + t) * d + c]));
            }
        }
    if (!(maxerr < 1e-4)) {
        fprintf(stderr, "onednn: correctness FAILED, maxerr=%g\n", maxerr);
        return 1;
    }

    for (int i = 0; i < 2; ++i) run();
    std::vector<double> times;
    double total = 0;
    while ((times.size() < 10 || total < 1.0) && times.size() < 1000) {
        auto t0 = std::chrono::steady_clock::now();
        run();
        double dt_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        times.push_back(dt_s);
        total += dt_s;
    }
    std::sort(times.begin(), times.end());
    size_t n = times.size();
    double med = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
    double flops = 4.0 * H * T * T * d;
    const dnnl_version_t* ver = dnnl_version();
    printf("peer=onednn T=%ld d=%ld causal=0 median_ms=%.3f gflops=%.2f maxerr=%.2e runs=%zu "
           "dnnl=%d.%d.%d omp_threads=%d mm=%s sm=%s\n",
           T, d, med * 1e3, flops / med / 1e9, maxerr, n, ver->major, ver->minor, ver->patch, omp_get_max_threads(),
           mm1_pd.impl_info_str(), sm_pd.impl_info_str());
    return 0;
}
