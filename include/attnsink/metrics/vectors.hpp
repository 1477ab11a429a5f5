// attnsink/metrics/vectors.hpp — per-token geometry behind a sink: L2 norms of
// hidden states, keys and values, the massive-activation ratio, and the angle
// between each query and the first key.
//
// A sink token is one whose key every query can find cheaply: in trained LMs
// its hidden state is massive (‖h_1‖ far above the rest), its key small, and
// the queries point at it (cos(q_t, k_1) high) — Gu et al. 2025, §3.
#pragma once

#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "../attention.hpp"
#include "reduce.hpp"

namespace attnsink::metrics {

namespace detail {
template <class T>
void require_tokens(const tensor4<const T>& x, const char* argument) {
  if (x.data == nullptr) throw value_error(argument, "expected data, got a null pointer");
  if (x.empty())
    throw shape_error(argument, "expected non-empty (batch, heads, tokens, dim), got shape " + attnsink::detail::shape_str(x));
}
}  // namespace detail

// ‖x_t‖ for every (batch, head, token), contiguous (batch, heads, tokens).
// Hidden states go in as (batch, 1, tokens, model_dim).
template <class T>
std::vector<double> token_norms(tensor4<const T> x, const char* argument = "x") {
  detail::require_tokens(x, argument);
  std::vector<double> out(x.batch * x.heads * x.tokens);
  const l2_norm r;
  for (std::size_t b = 0; b < x.batch; ++b)
    for (std::size_t h = 0; h < x.heads; ++h)
      for (std::size_t t = 0; t < x.tokens; ++t) {
        const T* row = x.row(b, h, t);
        l2_norm::value_type v;
        r.init(v);
        for (std::size_t e = 0; e < x.dim; ++e) r.add(v, double(row[e]));
        out[(b * x.heads + h) * x.tokens + t] = r.final(v);
      }
  return out;
}

// ‖h_1‖ / mean_{t≠1} ‖h_t‖ for every (batch, head), contiguous (batch, heads).
// Needs at least two tokens.
template <class T>
std::vector<double> massive_activation_ratio(tensor4<const T> h, const char* argument = "h") {
  detail::require_tokens(h, argument);
  if (h.tokens < 2) throw shape_error(argument, "the massive-activation ratio needs at least 2 tokens");
  const std::vector<double> norms = token_norms(h, argument);
  std::vector<double> out(h.batch * h.heads);
  const massive_ratio r;
  for (std::size_t s = 0; s < out.size(); ++s) {
    massive_ratio::value_type v;
    r.init(v);
    for (std::size_t t = 0; t < h.tokens; ++t) r.add(v, t, norms[s * h.tokens + t]);
    out[s] = r.final(v);
  }
  return out;
}

// cos(q_t, k_key) with ‖q_t‖ and ‖k_key‖, on the vectors the score multiplies
// (after the positional transform and the score's feature map, without its
// scale): what decides how much of each query's score the key gets.
struct first_key_angles {
  std::size_t batch = 0, heads = 0, tokens = 0, key = 1;
  std::vector<double> cos;     // (batch, heads, tokens); NaN where a norm is 0
  std::vector<double> q_norm;  // (batch, heads, tokens)
  std::vector<double> k_norm;  // (batch, heads): the key head each query head reads
};

// key: 1-based index of the key (1: the first token).
template <attention_type A, class T>
first_key_angles qk_angles(const A& a, tensor4<const T> q, tensor4<const T> k, std::size_t key = 1) {
  using attnsink::detail::require;
  using attnsink::detail::shape_str;
  detail::require_tokens(q, "q");
  detail::require_tokens(k, "k");
  require(k.batch == q.batch && k.dim == q.dim && q.heads % k.heads == 0, "k",
          [&] { return "expected (batch, kv heads dividing " + std::to_string(q.heads) + ", tokens, " + std::to_string(q.dim) +
              "), got shape " + shape_str(k); });
  require(k.tokens == q.tokens, "k", [&] { return "expected " + std::to_string(q.tokens) + " tokens (as q), got shape " + shape_str(k); });
  if (key < 1 || key > k.tokens)
    throw value_error("key", "expected a token index in 1.." + std::to_string(k.tokens) + ", got " + std::to_string(key));
  const std::size_t d = q.dim, df = a.score.feature_dim(d), group = q.heads / k.heads, T_ = q.tokens;
  first_key_angles out;
  out.batch = q.batch;
  out.heads = q.heads;
  out.tokens = T_;
  out.key = key;
  out.cos.resize(q.batch * q.heads * T_);
  out.q_norm.resize(out.cos.size());
  out.k_norm.resize(q.batch * q.heads);
  std::vector<double> x(d), kf(df), qf(df);
  const l2_norm r;
  auto norm_of = [&](const std::vector<double>& f) {
    l2_norm::value_type v;
    r.init(v);
    for (double e : f) r.add(v, e);
    return r.final(v);
  };
  for (std::size_t b = 0; b < q.batch; ++b)
    for (std::size_t hk = 0; hk < k.heads; ++hk) {
      const T* kr = k.row(b, hk, key - 1);
      for (std::size_t e = 0; e < d; ++e) x[e] = double(kr[e]);
      a.pos.apply(x.data(), d, std::ptrdiff_t(key - 1), 1);
      a.score.map(x.data(), kf.data(), d);
      const double kn = norm_of(kf);
      for (std::size_t g = 0; g < group; ++g) {
        const std::size_t h = hk * group + g;
        out.k_norm[b * q.heads + h] = kn;
        for (std::size_t t = 0; t < T_; ++t) {
          const T* qr = q.row(b, h, t);
          for (std::size_t e = 0; e < d; ++e) x[e] = double(qr[e]);
          a.pos.apply(x.data(), d, mask::detail::qpos(t, T_, T_), 1);
          a.score.map(x.data(), qf.data(), d);
          double dot = 0;
          for (std::size_t e = 0; e < df; ++e) dot += qf[e] * kf[e];
          const double qn = norm_of(qf);
          const std::size_t idx = (b * q.heads + h) * T_ + t;
          out.q_norm[idx] = qn;
          out.cos[idx] = qn > 0 && kn > 0 ? dot / (qn * kn) : std::numeric_limits<double>::quiet_NaN();
        }
      }
    }
  return out;
}

}  // namespace attnsink::metrics
