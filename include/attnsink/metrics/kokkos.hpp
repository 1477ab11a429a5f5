// attnsink/metrics/kokkos.hpp — the streaming sink metrics (α_k, α_*, and so
// Sink_k^ε) on the Kokkos backend: from q, k and the row state (m, l) a Kokkos
// forward kept, without any tokens × tokens buffer.
//
//   forward(backend::kokkos<E>{}, attn, q, k, v, out, stats);
//   metrics::alpha_map m = metrics::alphas_streamed(backend::kokkos<E>{}, attn, q, k, stats, opt);
//   metrics::sink_rate(m, opt.eps);
//
// One team per (sample, query head): each thread folds every nt-th query row
// into its own partial with alpha.hpp's column_alpha reducer (the same
// per-row code the cpu route runs), then the team's first thread joins the
// partials in rank order — deterministic, no atomics. The proxy's row masses
// (variants whose rows do not sum to one) come from one more Kokkos forward
// with unit values, as metrics::row_mass does on the other backends.
// capture::attention(backend::kokkos<E>{}, ...) lands here through
// argument-dependent lookup.
//
//   alphas_streamed(backend::kokkos<E>{}, ...)          host pointers (copied when E cannot read them)
//   alphas_streamed_device(backend::kokkos<E>{}, ...)   q, k, stats and parameter arrays in E's memory
// Link attnsink::kokkos.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include <Kokkos_Core.hpp>

#include "../backend/kokkos.hpp"
#include "../kokkos_compat.hpp"
#include "alpha.hpp"

namespace attnsink::metrics {

namespace kokkos_metrics {

// Each row's Σ_j p (Σ_j |p| for signed weights) in E's memory: a forward with
// every value 1 (v* = 1 too), as metrics::row_mass.
template <class E, attention_type A, class T>
Kokkos::View<double*, typename E::memory_space> row_mass(const backend::kokkos<E>& be, const A& a,
                                                         tensor4<const T> q, tensor4<const T> k) {
  using Mem = typename E::memory_space;
  const std::size_t rows = q.batch * q.heads * q.tokens;
  Kokkos::View<T*, Mem> sums(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("attnsink::row_mass")), rows);
  // no KOKKOS_LAMBDA inside the generic lambda (nvcc refuses extended lambdas there)
  detail::with_unit_values(a, [&](const auto& unit) {
    Kokkos::View<T*, Mem> ones(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("attnsink::ones")),
                               k.batch * k.heads * k.tokens);
    Kokkos::deep_copy(ones, T(1));
    forward_device(be, unit, q, k, tensor4<const T>(ones.data(), k.batch, k.heads, k.tokens, 1),
                   tensor4<T>(sums.data(), q.batch, q.heads, q.tokens, 1));
  });
  Kokkos::View<double*, Mem> out(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("attnsink::row_mass64")),
                                 rows);
  const T* s = sums.data();
  double* o = out.data();
  Kokkos::parallel_for(
      "attnsink::kokkos::row_mass", Kokkos::RangePolicy<E>(be.space, 0, rows),
      KOKKOS_LAMBDA(const std::size_t r) { o[r] = double(s[r]); });
  be.space.fence();
  return out;
}

// Key col's features per (sample, kv head): rotated at its position, mapped;
// and the bias key's per kv head (never rotated).
template <class E, attention_type A, class T>
void key_features(const E& space, const A& a, tensor4<const T> k, std::size_t col, std::size_t df, double* kf,
                  double* ks) {
  Kokkos::parallel_for(
      "attnsink::kokkos::alpha_keys", Kokkos::RangePolicy<E>(space, 0, k.batch * k.heads),
      KOKKOS_LAMBDA(const std::size_t bh) {
        constexpr std::size_t cap = column_alpha<A, T>::max_dim;
        const std::size_t b = bh / k.heads, hk = bh % k.heads, d = k.dim;
        double* const kstar_features = ks;  // captured outside the constexpr-if (nvcc requires it)
        (void)kstar_features;
        double x[cap];
        const T* kr = k.row(b, hk, col);
        for (std::size_t e = 0; e < d; ++e) x[e] = double(kr[e]);
        a.pos.apply(x, d, std::ptrdiff_t(col), 1);
        a.score.map(x, kf + bh * df, d);
        if constexpr (A::bias_type::has_kv) {
          if (b == 0) {
            for (std::size_t e = 0; e < d; ++e) x[e] = a.bias.kstar(hk, e, d);
            a.score.map(x, kstar_features + hk * df, d);
          }
        }
      });
}

// α_k and α_* per (sample, head): a team per pair, rows split over its threads.
template <class E, attention_type A, class T>
struct alpha_kernel {
  using member = typename Kokkos::TeamPolicy<E>::member_type;
  using CA = column_alpha<A, T>;
  A a;
  tensor4<const T> q;
  const T* m;
  const T* l;
  const double* mass;
  proxy px;
  std::size_t col, kv_heads, tk, df;
  const double* kf;
  const double* ks;
  double c;
  bool causal;
  double* out;  // (samples · heads) × 2: α_k, α_*

  KOKKOS_INLINE_FUNCTION void operator()(const member& t) const {
    const std::size_t bh = t.league_rank(), b = bh / q.heads, h = bh % q.heads;
    const std::size_t hk = h / (q.heads / kv_heads);
    const CA f{a,  q,   m,   l,   mass, px, b, h, col, kf + (b * kv_heads + hk) * df,
               A::bias_type::has_kv ? ks + hk * df : nullptr, tk, c, causal};
    typename CA::value_type* part = static_cast<typename CA::value_type*>(
        t.team_scratch(0).get_shmem_aligned(t.team_size() * sizeof(typename CA::value_type), 16));
    const std::size_t r = t.team_rank(), nt = t.team_size();
    typename CA::value_type v;
    f.init(v);
    for (std::size_t i = r; i < q.tokens; i += nt) f(i, v);
    part[r] = v;
    t.team_barrier();
    if (r == 0) {
      typename CA::value_type total;
      f.init(total);
      for (std::size_t x = 0; x < nt; ++x) f.join(total, part[x]);
      const auto res = f.final(total);
      out[2 * bh] = res.key;
      out[2 * bh + 1] = res.bias;
    }
  }
};

// Validated, operands in E's memory: the row masses, the key features, the kernel.
template <class E, attention_type A, class T>
alpha_map run(const backend::kokkos<E>& be, const A& a, const problem& p, tensor4<const T> q, tensor4<const T> k,
              const T* m, const T* l, const options& opt) {
  using Mem = typename E::memory_space;
  constexpr bool has_kv = A::bias_type::has_kv;
  const proxy px = proxy_for<A>(opt.weights);
  Kokkos::View<double*, Mem> mass;
  if (px != proxy::none) mass = row_mass(be, a, q, k);
  const std::size_t df = a.score.feature_dim(p.dim), col = opt.k - 1;
  Kokkos::View<double*, Mem> kf(std::string("attnsink::alpha_kf"), p.batch * p.kv_heads * df),
      ks(std::string("attnsink::alpha_ks"), has_kv ? p.kv_heads * df : 0),
      res(std::string("attnsink::alpha"), 2 * p.batch * p.heads);
  key_features<E, A, T>(be.space, a, k, col, df, kf.data(), ks.data());
  const alpha_kernel<E, A, T> kern{a,     q,     m,       l,         mass.data(),      px,
                                   col,   p.kv_heads, p.tk, df,      kf.data(),        ks.data(),
                                   a.score.scale(p.dim), a.mask.is_causal(), res.data()};
  constexpr bool host = kokkos_compat::host_accessible<E>;
  const std::size_t want = be.team_rows ? be.team_rows : (host ? 1 : 64);
  Kokkos::TeamPolicy<E> trial(be.space, 1, Kokkos::AUTO);
  trial.set_scratch_size(0, Kokkos::PerTeam(want * sizeof(typename column_alpha<A, T>::value_type) + 64));
  const std::size_t nt =
      std::max<std::size_t>(1, std::min(want, std::size_t(trial.team_size_max(kern, Kokkos::ParallelForTag()))));
  Kokkos::TeamPolicy<E> policy(be.space, int(p.batch * p.heads), int(nt));
  policy.set_scratch_size(0, Kokkos::PerTeam(nt * sizeof(typename column_alpha<A, T>::value_type) + 64));
  Kokkos::parallel_for("attnsink::kokkos::alpha", policy, kern);
  be.space.fence();
  const auto hres = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), res);
  alpha_map out = detail::zero_alpha_map(p.batch, p.heads, p.tq, opt.k, px, has_kv);
  for (std::size_t i = 0; i < p.batch * p.heads; ++i) {
    out.alpha[i] = hres(2 * i);
    if (has_kv) out.alpha_bias[i] = hres(2 * i + 1);
  }
  return out;
}

}  // namespace kokkos_metrics

// α_k (and α_*) per (sample, head) from q, k and the row state of a Kokkos
// forward of `a`, everything — q, k, stats and the policies' parameter arrays
// — in E's memory. Same answer and errors as alphas_streamed.
template <class E, attention_type A, class T, class S>
  requires std::same_as<std::remove_const_t<S>, T>
alpha_map alphas_streamed_device(const backend::kokkos<E>& be, const A& a, tensor4<const T> q, tensor4<const T> k,
                                 row_stats<S> stats, const options& opt) {
  const T* m = stats.max;
  const T* l = stats.sum;
  problem p;
  if constexpr (kokkos_compat::host_accessible<E>) {
    p = detail::check_stream(a, q, k, m, l, opt);
  } else {
    // The policies' parameters are checked on a host copy.
    const problem shape{q.batch, q.heads, k.heads, q.tokens, k.tokens, q.dim, q.dim};
    attnsink::kokkos_detail::mirror<Kokkos::HostSpace, typename E::memory_space> to_host{shape, {}, {}, {}};
    if (q.data && k.data && q.heads && k.heads && q.heads % k.heads == 0)
      p = detail::check_stream(attnsink::kokkos_detail::rebind_all(a, to_host), q, k, m, l, opt);
    else
      p = detail::check_stream(a, q, k, m, l, opt);  // throws on the shapes before reading a parameter
  }
  return kokkos_metrics::run(be, a, p, q, k, m, l, opt);
}

// The same with q, k and stats in host memory (the Kokkos forward's host entry
// point writes its stats there): copied to E's memory when E cannot read them.
template <class E, attention_type A, class T, class S>
  requires std::same_as<std::remove_const_t<S>, T>
alpha_map alphas_streamed(const backend::kokkos<E>& be, const A& a, tensor4<const T> q, tensor4<const T> k,
                          row_stats<S> stats, const options& opt) {
  const T* m = stats.max;
  const T* l = stats.sum;
  const problem p = detail::check_stream(a, q, k, m, l, opt);
  if constexpr (kokkos_compat::host_accessible<E>) {
    return kokkos_metrics::run(be, a, p, q, k, m, l, opt);
  } else {
    using Mem = typename E::memory_space;
    using attnsink::kokkos_detail::dense;
    using attnsink::kokkos_detail::upload;
    attnsink::kokkos_detail::mirror<Mem, Kokkos::HostSpace> to_dev{p, {}, {}, {}};
    const A ad = attnsink::kokkos_detail::rebind_all(a, to_dev);
    const auto qd = upload<Mem>(q), kd = upload<Mem>(k);
    const std::size_t rows = p.batch * p.heads * p.tq;
    Kokkos::View<T*, Mem> md, ld;
    if (m) md = upload<Mem>(tensor4<const T>(m, 1, 1, rows, 1));
    if (l) ld = upload<Mem>(tensor4<const T>(l, 1, 1, rows, 1));
    return kokkos_metrics::run(be, ad, p, dense<const T>(qd.data(), q.batch, q.heads, q.tokens, q.dim),
                               dense<const T>(kd.data(), k.batch, k.heads, k.tokens, k.dim),
                               m ? md.data() : nullptr, l ? ld.data() : nullptr, opt);
  }
}

}  // namespace attnsink::metrics
