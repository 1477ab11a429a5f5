// attnsink/metrics/alpha.hpp — the importance score α_k and the sink rate Sink_k^ε.
//
// For one sample, layer and head with T tokens (DESIGN.md §4, Gu et al. 2025):
//   α_k  = 1/(T-k+1) · Σ_{t=k..T} A_{t,k}          (1-based t, k)
//   Sink_k^ε = mean over samples, layers, heads of 1[α_k > ε]
// With a key/value bias the bias is key 0, seen by all T queries: α_* is the
// mean of A_{t,*} over every t, Sink* its rate.
//
// Two routes give one answer:
//   alphas(weights_view, ...)       from materialized weights (the reference
//                                   backend's probs, or a .npy of them);
//   alphas_streamed(be, a, q, k, stats, ...)
//                                   from q, k and the row state (m, l) a forward
//                                   pass kept: A_{t,k} = weight(s_tk, m_t) ·
//                                   finish(m_t, l_t) with s_tk recomputed by the
//                                   same policy calls the backends make. O(T·d)
//                                   work and O(d) memory per (sample, head).
//
// Weights that do not sum to one are read through the paper's proxy:
// Â = p / (Σ_j p + 1e-8) when p cannot be negative, Â = |p| / Σ_j |p| when it
// can. The streaming route then needs each row's Σ_j p (or Σ_j |p|), which the
// row state does not hold; it takes it from one more forward pass with every
// value set to 1 (o_t is then the row sum; O(T) memory, O(T²·d) time).
#pragma once

#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../attention.hpp"
#include "../backend/reference.hpp"
#include "reduce.hpp"

namespace attnsink::metrics {

// How weights are read before α is taken.
enum class proxy {
  none,         // as they are
  nonnegative,  // Â = p / (Σ_j p + 1e-8)   (sigmoid, elu+1, non-negative kernels)
  absolute,     // Â = |p| / Σ_j |p|        (signed kernels); a row with Σ|p| = 0 reads 0
};

inline const char* name(proxy p) {
  switch (p) {
    case proxy::nonnegative: return "nonnegative";
    case proxy::absolute: return "absolute";
    default: return "none";
  }
}

// Which weights a metric reads: the paper's choice (its proxy for variants
// whose rows do not sum to one), or the raw weights whatever they sum to.
enum class weighting { paper, raw };

inline constexpr double proxy_eps = 1e-8;

// Â from one weight p and its row's mass (Σ_j p for nonnegative, Σ_j |p| for absolute).
ATTNSINK_INLINE double apply_proxy(proxy px, double p, double row_mass) {
  switch (px) {
    case proxy::nonnegative: return p / (row_mass + proxy_eps);
    case proxy::absolute: return row_mass > 0 ? math::fabs(p) / row_mass : 0.0;
    default: return p;
  }
}

namespace detail {
template <class Score>
constexpr bool nonnegative_features() {
  if constexpr (requires { typename Score::phi; }) return Score::phi::non_negative;
  else return false;
}
}  // namespace detail

// Whether A's weights cannot be negative: the normalization says so, or it
// passes the score through with a positive factor (identity, abs_clamped) and
// the score is a product of non-negative features with nothing added to it.
template <attention_type A>
inline constexpr bool nonnegative_weights =
    A::norm_type::non_negative ||
    ((std::is_same_v<typename A::norm_type, norm::identity> ||
      std::is_same_v<typename A::norm_type, norm::abs_clamped>) &&
     detail::nonnegative_features<typename A::score_type>() && !A::score_type::has_post && !A::bias_type::additive);

// The proxy the paper reads A's weights through.
template <attention_type A>
constexpr proxy proxy_for(weighting w = weighting::paper) {
  if (w == weighting::raw || A::norm_type::sums_to_one) return proxy::none;
  return nonnegative_weights<A> ? proxy::nonnegative : proxy::absolute;
}

// The metric's parameters: ε, the 1-based key index k, and which weights.
struct options {
  double eps = 0.3;
  std::size_t k = 1;
  weighting weights = weighting::paper;

  // Throws value_error("options.eps") unless 0 <= ε < 1, value_error("options.k") unless 1 <= k <= tokens.
  void check(std::size_t tokens) const {
    if (!(eps >= 0.0 && eps < 1.0)) throw value_error("options.eps", "expected a threshold in [0, 1), got " + std::to_string(eps));
    if (k < 1 || k > tokens)
      throw value_error("options.k", "expected a token index in 1.." + std::to_string(tokens) + ", got " + std::to_string(k));
  }
};

// α of one layer: per (sample, head), sample-major.
struct alpha_map {
  std::size_t samples = 0, heads = 0, tokens = 0;
  std::size_t k = 1;                 // the key index α_k is taken at (1-based)
  proxy weights = proxy::none;       // how the weights were read
  std::vector<double> alpha;         // α_k
  std::vector<double> alpha_bias;    // α_* at the key/value bias; empty without one

  bool has_bias() const { return !alpha_bias.empty(); }
  double at(std::size_t s, std::size_t h) const { return alpha[s * heads + h]; }
  double bias_at(std::size_t s, std::size_t h) const { return alpha_bias[s * heads + h]; }
  // α_k of head h averaged over samples (what the paper plots per head).
  double head_mean(std::size_t h, bool at_bias = false) const {
    const std::vector<double>& x = at_bias ? alpha_bias : alpha;
    mean r;
    mean::value_type v;
    r.init(v);
    for (std::size_t s = 0; s < samples; ++s) r.add(v, x[s * heads + h]);
    return r.final(v);
  }
  // Adds the samples of `more` (same heads, tokens, k and weighting).
  void append(const alpha_map& more) {
    if (samples == 0) {
      *this = more;
      return;
    }
    if (more.heads != heads || more.tokens != tokens || more.k != k || more.weights != weights ||
        more.has_bias() != has_bias())
      throw shape_error("alphas", "cannot join maps of different heads, tokens, k, weighting or bias");
    samples += more.samples;
    alpha.insert(alpha.end(), more.alpha.begin(), more.alpha.end());
    alpha_bias.insert(alpha_bias.end(), more.alpha_bias.begin(), more.alpha_bias.end());
  }
};

namespace detail {
// A map of samples × heads α (and α_* with a bias) set to zero, for a route to fill.
inline alpha_map zero_alpha_map(std::size_t samples, std::size_t heads, std::size_t tokens, std::size_t k,
                                proxy weights, bool with_bias) {
  alpha_map out;
  out.samples = samples;
  out.heads = heads;
  out.tokens = tokens;
  out.k = k;
  out.weights = weights;
  out.alpha.resize(samples * heads);
  if (with_bias) out.alpha_bias.resize(samples * heads);
  return out;
}
}  // namespace detail

// Sink_k^ε over every (sample, layer, head) of the maps (one per layer): the
// indicator is taken per sample, then averaged. at_bias: Sink* instead.
inline double sink_rate(std::span<const alpha_map> layers, double eps, bool at_bias = false) {
  if (!(eps >= 0.0 && eps < 1.0)) throw value_error("eps", "expected a threshold in [0, 1), got " + std::to_string(eps));
  exceed_rate r{eps};
  exceed_rate::value_type total;
  r.init(total);
  for (const alpha_map& m : layers) {
    exceed_rate::value_type v;
    r.init(v);
    for (double a : at_bias ? m.alpha_bias : m.alpha) r.add(v, a);
    r.join(total, v);
  }
  return r.final(total);
}
inline double sink_rate(const alpha_map& layer, double eps, bool at_bias = false) {
  return sink_rate(std::span<const alpha_map>(&layer, 1), eps, at_bias);
}

// ---------------------------------------------------------------------------
// Route 1: materialized weights.

// Weights (batch, heads, tokens, tokens + bias_column), contiguous, as the
// reference backend's probs_view returns them: with a key/value bias its
// column is 0 and token j is column j + 1.
template <class T>
struct weights_view {
  const T* data = nullptr;
  std::size_t batch = 0, heads = 0, tokens = 0;
  bool bias_column = false;
  std::size_t cols() const { return tokens + (bias_column ? 1 : 0); }
};

// α_k (and α_* with a bias column) per (sample, head) from weights, read through `px`.
template <class T>
alpha_map alphas(weights_view<T> w, const options& opt, proxy px = proxy::none) {
  if (w.data == nullptr) throw value_error("probs", "expected weights, got a null pointer");
  if (w.batch == 0 || w.heads == 0 || w.tokens == 0)
    throw shape_error("probs", "expected non-empty (samples, heads, tokens, tokens) weights");
  opt.check(w.tokens);
  const std::size_t T_ = w.tokens, cols = w.cols(), off = w.bias_column ? 1 : 0, col = opt.k - 1;
  alpha_map out = detail::zero_alpha_map(w.batch, w.heads, T_, opt.k, px, w.bias_column);
  const mean r;
  for (std::size_t b = 0; b < w.batch; ++b)
    for (std::size_t h = 0; h < w.heads; ++h) {
      mean::value_type key, bias;
      r.init(key);
      r.init(bias);
      for (std::size_t t = 0; t < T_; ++t) {
        const T* row = w.data + ((b * w.heads + h) * T_ + t) * cols;
        double mass = 0;
        if (px != proxy::none)
          for (std::size_t j = 0; j < cols; ++j) mass += px == proxy::absolute ? math::fabs(double(row[j])) : double(row[j]);
        if (t >= col) r.add(key, apply_proxy(px, double(row[col + off]), mass));
        if (w.bias_column) r.add(bias, apply_proxy(px, double(row[0]), mass));
      }
      out.alpha[b * w.heads + h] = r.final(key);
      if (w.bias_column) out.alpha_bias[b * w.heads + h] = r.final(bias);
    }
  return out;
}

// The same for weights of attention `a` (its probs from the reference
// backend): the proxy follows opt.weights and A's traits.
template <attention_type A, class T>
alpha_map alphas(const A&, weights_view<T> w, const options& opt) {
  if (w.bias_column != A::bias_type::has_kv)
    throw shape_error("probs", std::string("expected ") + (A::bias_type::has_kv ? "a" : "no") +
                                   " key/value-bias column for this attention type");
  return alphas(w, opt, proxy_for<A>(opt.weights));
}

// ---------------------------------------------------------------------------
// Route 2: streaming.

// One (sample, head)'s α_k and α_* as a reduction over its query rows: a
// Kokkos-style functor (value_type, init, join, operator()(row, value), final)
// and the body of a tbb::parallel_reduce. Host and device callable; head_dim
// and feature_dim are at most max_dim (its scratch lives on the stack).
template <attention_type A, class T>
struct column_alpha {
  static constexpr std::size_t max_dim = 1024;
  struct value_type {
    sum_count key, bias;
  };
  struct result_type {
    double key, bias;
  };

  A a;
  tensor4<const T> q;
  const T* m = nullptr;         // row state from the forward pass (null for norms with none)
  const T* l = nullptr;
  const double* mass = nullptr;  // per row Σ_j p or Σ_j |p| (proxy only)
  proxy px = proxy::none;
  std::size_t b = 0, h = 0, col = 0;  // sample, head, key column (0-based)
  const double* kf = nullptr;         // key col's features: rotated at its position, mapped
  const double* kstar = nullptr;      // the bias key's features (never rotated), or null
  std::size_t tk = 0;
  double c = 1;
  bool causal = true;

  ATTNSINK_HD void init(value_type& v) const { v = value_type{}; }
  ATTNSINK_HD void join(value_type& dst, const value_type& src) const {
    mean r;
    r.join(dst.key, src.key);
    r.join(dst.bias, src.bias);
  }
  ATTNSINK_HD result_type final(const value_type& v) const {
    mean r;
    return {r.final(v.key), kstar ? r.final(v.bias) : std::numeric_limits<double>::quiet_NaN()};
  }

  // Folds query row i in: A_{i,col} when i's position is at or after col
  // (masked: 0), and A_{i,*} for every row when there is a bias key.
  ATTNSINK_HD void operator()(std::size_t i, value_type& v) const {
    const std::size_t tq = q.tokens, d = q.dim, df = a.score.feature_dim(d);
    const std::ptrdiff_t qp = mask::detail::qpos(i, tq, tk);
    const bool want_key = qp >= std::ptrdiff_t(col);
    if (!want_key && !kstar) return;
    const key_range r = a.mask.range(b, i, tq, tk);
    const bool key_visible = want_key && col >= r.lo && col < r.hi;
    mean red;
    if (!key_visible && !kstar) return red.add(v.key, 0.0);

    double x[max_dim], qf[max_dim];
    const T* qr = q.row(b, h, i);
    for (std::size_t e = 0; e < d; ++e) x[e] = double(qr[e]);
    a.pos.apply(x, d, qp, 1);
    a.score.map(x, qf, d);
    const std::size_t row = (b * q.heads + h) * tq + i;
    const double mm = m ? double(m[row]) : 0.0, ll = l ? double(l[row]) : 0.0;
    const double f = a.norm.finish(mm, ll), rm = mass ? mass[row] : 0.0;
    auto score = [&](const double* kk) {
      double acc = 0;
      for (std::size_t e = 0; e < df; ++e) acc += qf[e] * kk[e];
      return a.score.post(c * acc);
    };
    if (key_visible) {
      double s = score(kf);
      if constexpr (A::bias_type::additive)
        s += a.bias.value(site{b, h, q.heads, qp, std::ptrdiff_t(col), i, tq, tk, causal});
      red.add(v.key, apply_proxy(px, a.norm.weight(s, mm) * f, rm));
    } else if (want_key) {
      red.add(v.key, 0.0);
    }
    if (kstar) red.add(v.bias, apply_proxy(px, a.norm.weight(score(kstar), mm) * f, rm));
  }
};

namespace detail {

// N with |weight|, so that a forward pass with unit values returns Σ_j |p_ij|.
// Only for normalizations outside the exponential family (whose weights are
// positive anyway), because the CPU backend computes those by its own exp path.
template <norm_policy N>
struct absolute_weights : N {
  static_assert(!std::is_base_of_v<norm::exp_family, N>,
                "attnsink::metrics: absolute_weights is for normalizations outside the exponential family.");
  template <class T> ATTNSINK_HD T weight(T s, T m) const { return math::fabs(N::weight(s, m)); }
};

// Calls run(unit) with `a`'s unit-value attention — its weights made absolute
// (unless they cannot be negative) and v* = 1 — so that a forward pass of unit
// over values 1 gives each row's mass Σ_j p (Σ_j |p|): row_mass on every
// backend. value_error("bias") when the bias has a key/value it cannot set.
template <attention_type A, class Run>
void with_unit_values(const A& a, Run&& run) {
  using N = typename A::norm_type;
  using Bias = typename A::bias_type;
  using N2 = std::conditional_t<N::non_negative, N, absolute_weights<N>>;
  if constexpr (Bias::has_kv && !std::is_same_v<Bias, bias::kv_bias>) {
    throw value_error("bias", "row masses can set the value of bias::kv_bias only");
  } else {
    attention<typename A::score_type, N2, Bias, typename A::pos_type, typename A::mask_type> unit{
        a.score, N2{a.norm}, a.bias, a.pos, a.mask};
    if constexpr (Bias::has_kv) {
      unit.bias.v = {};
      unit.bias.vconst = 1.0;
    }
    run(unit);
  }
}

template <attention_type A>
inline constexpr bool norm_has_state = A::norm_type::tracks_max || A::norm_type::has_denominator;

// Validates a streaming call before anything is computed.
template <attention_type A, class T>
problem check_stream(const A& a, const tensor4<const T>& q, const tensor4<const T>& k, const T* m, const T* l,
                     const options& opt) {
  using attnsink::detail::require;
  using attnsink::detail::shape_str;
  require(q.data != nullptr, "q", "expected data, got a null pointer");
  require(q.batch >= 1 && q.heads >= 1 && q.tokens >= 1 && q.dim >= 1, "q",
          [&] { return "expected non-empty (samples, heads, tokens, head_dim), got shape " + shape_str(q); });
  require(k.data != nullptr, "k", "expected data, got a null pointer");
  require(k.batch == q.batch, "k", [&] { return "expected " + std::to_string(q.batch) + " samples (as q), got shape " + shape_str(k); });
  require(k.heads >= 1 && q.heads % k.heads == 0, "k",
          [&] { return "kv heads (" + std::to_string(k.heads) + ") must divide the query heads (" + std::to_string(q.heads) + ")"; });
  require(k.tokens == q.tokens, "k",
          [&] { return "expected " + std::to_string(q.tokens) + " tokens (as q; the metrics are self-attention over one sequence), got shape " +
              shape_str(k); });
  require(k.dim == q.dim, "k", [&] { return "expected head_dim " + std::to_string(q.dim) + " (as q), got shape " + shape_str(k); });
  using CA = column_alpha<A, T>;
  require(q.dim <= CA::max_dim && a.score.feature_dim(q.dim) <= CA::max_dim, "q",
          [&] { return "streaming metrics take head_dim and feature_dim up to " + std::to_string(CA::max_dim); });
  if (norm_has_state<A> && (m == nullptr || l == nullptr))
    throw value_error("stats", std::string("the ") + A::norm_type::name +
                                   " normalization needs the row state (m, l) of a forward pass over the same q, k");
  opt.check(q.tokens);
  const problem p{q.batch, q.heads, k.heads, q.tokens, k.tokens, q.dim, q.dim};
  // v* plays no part in the weights: check the rest of the bias without it.
  A probe = a;
  if constexpr (std::is_same_v<typename A::bias_type, bias::kv_bias>) probe.bias.v = {};
  probe.score.check(p);
  probe.norm.check(p);
  probe.bias.check(p);
  probe.pos.check(p);
  probe.mask.check(p);
  return p;
}

}  // namespace detail

// Each row's Σ_j p_tj (Σ_j |p_tj| for signed weights), (batch, heads, tokens):
// one forward pass of `a` on backend `be` with every value 1 (v* = 1 too), so
// o_t is the sum itself and no tokens × tokens buffer is formed.
template <class Backend, attention_type A, class T>
std::vector<double> row_mass(const Backend& be, const A& a, tensor4<const T> q, tensor4<const T> k) {
  std::vector<T> sums(q.batch * q.heads * q.tokens);
  detail::with_unit_values(a, [&](const auto& unit) {
    const std::vector<T> ones(k.batch * k.heads * k.tokens, T(1));
    forward(be, unit, q, k, tensor4<const T>(ones.data(), k.batch, k.heads, k.tokens, 1),
            tensor4<T>(sums.data(), q.batch, q.heads, q.tokens, 1));
  });
  return std::vector<double>(sums.begin(), sums.end());
}

// α_k (and α_*) per (sample, head) streamed from q, k and the row state a
// forward pass of `a` over them kept (any backend's; the stats do not depend
// on v). `be` runs the extra row-mass pass when a proxy needs one.
template <class Backend, attention_type A, class T, class S>
  requires std::same_as<std::remove_const_t<S>, T>
alpha_map alphas_streamed(const Backend& be, const A& a, tensor4<const T> q, tensor4<const T> k, row_stats<S> stats,
                          const options& opt) {
  const problem p = detail::check_stream(a, q, k, static_cast<const T*>(stats.max), static_cast<const T*>(stats.sum), opt);
  const proxy px = proxy_for<A>(opt.weights);
  const std::vector<double> mass = px == proxy::none ? std::vector<double>{} : row_mass(be, a, q, k);
  constexpr bool has_kv = A::bias_type::has_kv;
  const std::size_t d = p.dim, df = a.score.feature_dim(d), group = p.heads / p.kv_heads, col = opt.k - 1;

  alpha_map out = detail::zero_alpha_map(p.batch, p.heads, p.tq, opt.k, px, has_kv);
  std::vector<double> x(d), kf(df), ks(df);
  for (std::size_t b = 0; b < p.batch; ++b)
    for (std::size_t hk = 0; hk < p.kv_heads; ++hk) {
      const T* kr = k.row(b, hk, col);
      for (std::size_t e = 0; e < d; ++e) x[e] = double(kr[e]);
      a.pos.apply(x.data(), d, std::ptrdiff_t(col), 1);
      a.score.map(x.data(), kf.data(), d);
      if constexpr (has_kv) {
        for (std::size_t e = 0; e < d; ++e) x[e] = a.bias.kstar(hk, e, d);
        a.score.map(x.data(), ks.data(), d);
      }
      for (std::size_t g = 0; g < group; ++g) {
        const std::size_t h = hk * group + g;
        const column_alpha<A, T> f{a,  q,      stats.max, stats.sum, mass.empty() ? nullptr : mass.data(),
                                   px, b,      h,         col,       kf.data(),
                                   has_kv ? ks.data() : nullptr, p.tk, a.score.scale(d), a.mask.is_causal()};
        typename column_alpha<A, T>::value_type v;
        f.init(v);
        for (std::size_t i = 0; i < p.tq; ++i) f(i, v);
        const auto res = f.final(v);
        out.alpha[b * p.heads + h] = res.key;
        if (has_kv) out.alpha_bias[b * p.heads + h] = res.bias;
      }
    }
  return out;
}

// The same with the reference backend for the row-mass pass.
template <attention_type A, class T, class S>
  requires std::same_as<std::remove_const_t<S>, T>
alpha_map alphas_streamed(const A& a, tensor4<const T> q, tensor4<const T> k, row_stats<S> stats, const options& opt) {
  return alphas_streamed(backend::reference{}, a, q, k, stats, opt);
}

}  // namespace attnsink::metrics
