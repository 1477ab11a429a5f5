// attnsink/train/model.hpp — a small LLaMA-like decoder-only LM, templated on
// the attention type and backend, with a hand-written backward.
//
//   embedding (+ sinusoidal or learned absolute positions)
//   L × [ RMSNorm → attention (→ output gate) → residual → RMSNorm → FFN → residual ]   (pre-LN)
//   L × [ attention → residual → RMSNorm → FFN → residual → RMSNorm ]                    (post-LN)
//   final RMSNorm (pre-LN) → LM head; no linear biases.
//
// Dense layers go through CBLAS. Activations are (tokens × features),
// row-major; q, k, v are handed to the attention backend as strided
// (batch, heads, tokens, head_dim) views of them, so nothing is transposed.
// Every forward line has its derivative in backward(), in reverse order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <tbb/parallel_for.h>
#include <xsimd/xsimd.hpp>

#include "../attention.hpp"
#include "../backend/cpu_backward.hpp"
#include "../backend/reference_backward.hpp"
#include "../backward.hpp"
#include "blas.hpp"

namespace attnsink::train {

enum class ffn_act { swiglu, relu, gelu, swish, reglu, geglu };
enum class norm_place { pre, post };
enum class abs_pos { none, sinusoidal, learned };

inline bool gated(ffn_act a) { return a == ffn_act::swiglu || a == ffn_act::reglu || a == ffn_act::geglu; }

struct model_config {
  std::size_t vocab = 257, layers = 2, d_model = 128, heads = 4, kv_heads = 4, ffn = 256, ctx = 64;
  ffn_act act = ffn_act::swiglu;
  norm_place norm = norm_place::pre;
  abs_pos pos = abs_pos::none;
  bool rope = false;
  bool gate = false;         // output gate o ⊙ σ(a W_g) (Qiu et al. 2025)
  bool learn_vstar = false;  // kv_bias: learn v* (else v* = 0)
  double norm_eps = 1e-5;
  std::size_t head_dim() const { return d_model / heads; }
  bool operator==(const model_config&) const = default;
};

namespace detail {
template <class T>
T sigm(T x) {
  return x >= 0 ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x));
}
// activation value and derivative
template <class T>
T act_value(ffn_act a, T u) {
  switch (a) {
    case ffn_act::relu:
    case ffn_act::reglu: return u > 0 ? u : T(0);
    case ffn_act::gelu:
    case ffn_act::geglu: return T(0.5) * u * (T(1) + std::erf(u / std::sqrt(T(2))));
    default: return u * sigm(u);  // swish / swiglu: silu
  }
}
template <class T>
T act_derivative(ffn_act a, T u) {
  switch (a) {
    case ffn_act::relu:
    case ffn_act::reglu: return u > 0 ? T(1) : T(0);
    case ffn_act::gelu:
    case ffn_act::geglu: {
      const T pdf = std::exp(-u * u / 2) / std::sqrt(T(2) * T(3.14159265358979323846));
      return T(0.5) * (T(1) + std::erf(u / std::sqrt(T(2)))) + u * pdf;
    }
    default: {
      const T s = sigm(u);
      return s * (T(1) + u * (T(1) - s));
    }
  }
}
// h[i] = silu(u[i]) · (w ? w[i] : 1) over [0, n), vectorized: the FFN's
// elementwise work is a large share of a small model's step.
template <class T>
void silu_forward(const T* u, const T* w, T* h, std::size_t n) {
  using B = xsimd::batch<T>;
  std::size_t i = 0;
  for (; i + B::size <= n; i += B::size) {
    const B x = B::load_unaligned(u + i);
    B y = x / (B(T(1)) + xsimd::exp(-x));
    if (w) y *= B::load_unaligned(w + i);
    y.store_unaligned(h + i);
  }
  for (; i < n; ++i) h[i] = u[i] * sigm(u[i]) * (w ? w[i] : T(1));
}
// du[i] = dh[i] · (w ? w[i] : 1) · silu'(u[i]), dw[i] = dh[i] · silu(u[i]) (when w)
template <class T>
void silu_backward(const T* u, const T* w, const T* dh, T* du, T* dw, std::size_t n) {
  using B = xsimd::batch<T>;
  std::size_t i = 0;
  for (; i + B::size <= n; i += B::size) {
    const B x = B::load_unaligned(u + i), g = B::load_unaligned(dh + i);
    const B sg = B(T(1)) / (B(T(1)) + xsimd::exp(-x));
    const B ds = sg * (B(T(1)) + x * (B(T(1)) - sg));
    if (w) {
      (g * x * sg).store_unaligned(dw + i);
      (g * B::load_unaligned(w + i) * ds).store_unaligned(du + i);
    } else {
      (g * ds).store_unaligned(du + i);
    }
  }
  for (; i < n; ++i) {
    const T sg = sigm(u[i]);
    if (w) dw[i] = dh[i] * u[i] * sg;
    du[i] = dh[i] * (w ? w[i] : T(1)) * sg * (T(1) + u[i] * (T(1) - sg));
  }
}

// y = x · r · g with r = 1/sqrt(mean(x²) + eps) over one row of n; returns r.
template <class T>
T rmsnorm_row(const T* x, const T* g, T* y, std::size_t n, double eps) {
  using B = xsimd::batch<T>;
  B acc(T(0));
  std::size_t c = 0;
  for (; c + B::size <= n; c += B::size) {
    const B v = B::load_unaligned(x + c);
    acc = xsimd::fma(v, v, acc);
  }
  T ss = xsimd::hadd(acc);
  for (; c < n; ++c) ss += x[c] * x[c];
  const T r = T(1.0 / std::sqrt(double(ss) / double(n) + eps));
  const B rb(r);
  for (c = 0; c + B::size <= n; c += B::size)
    (B::load_unaligned(x + c) * rb * B::load_unaligned(g + c)).store_unaligned(y + c);
  for (; c < n; ++c) y[c] = x[c] * r * g[c];
  return r;
}
// One row of RMSNorm's backward: dx = r (g⊙dy − x̂ · mean(x̂ ⊙ g ⊙ dy)) (+ res),
// dg += dy ⊙ x̂ (x̂ = x · r). dx may be dy (each dy[c] is read before dx[c] is written).
template <class T>
void rmsnorm_backward_row(const T* x, const T* g, T r, const T* dy, T* dx, const T* res, T* dg, std::size_t n) {
  using B = xsimd::batch<T>;
  B acc(T(0));
  std::size_t c = 0;
  for (; c + B::size <= n; c += B::size)
    acc = xsimd::fma(B::load_unaligned(x + c) * B::load_unaligned(g + c), B::load_unaligned(dy + c), acc);
  T dot = xsimd::hadd(acc);
  for (; c < n; ++c) dot += x[c] * g[c] * dy[c];
  const T mean = r * dot / T(n);
  const B rb(r), k(r * mean);
  for (c = 0; c + B::size <= n; c += B::size) {
    const B xv = B::load_unaligned(x + c), dyv = B::load_unaligned(dy + c);
    (B::load_unaligned(dg + c) + dyv * xv * rb).store_unaligned(dg + c);
    B v = rb * (B::load_unaligned(g + c) * dyv) - xv * (rb * k);
    if (res) v += B::load_unaligned(res + c);
    v.store_unaligned(dx + c);
  }
  for (; c < n; ++c) {
    const T dyc = dy[c];
    dg[c] += dyc * x[c] * r;
    dx[c] = r * (g[c] * dyc - x[c] * r * mean) + (res ? res[c] : T(0));
  }
}

template <class F>
void rows(std::size_t n, F&& f) {
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, 64), [&](const auto& r) {
    for (std::size_t i = r.begin(); i != r.end(); ++i) f(i);
  });
}
}  // namespace detail

// Offsets of every parameter in the flat parameter vector.
struct layer_layout {
  std::size_t g1, wq, wk, wv, wo, wg, g2, w1, w3, w2, sink, kstar, vstar, t5;
};
struct model_layout {
  std::size_t emb, pos, gf, wout, total;
  std::vector<layer_layout> layer;
};

template <attention_type A, class Backend, class T = float>
class model {
 public:
  using attention_t = A;
  static constexpr bool has_sink = std::is_same_v<typename A::norm_type, norm::sink_logit>;
  static constexpr bool has_kv = A::bias_type::has_kv;
  static constexpr bool has_t5 = std::is_same_v<typename A::bias_type, bias::t5_relative>;

  model(const model_config& c, A attn, Backend be = {}) : cfg_(c), attn_(attn), be_(be) {
    openblas_set_num_threads(1);  // blas.hpp splits products over TBB threads itself
    if (c.d_model % c.heads) throw value_error("heads", "must divide d_model");
    if (c.kv_heads == 0 || c.heads % c.kv_heads) throw value_error("kv_heads", "must divide heads");
    if (c.rope && c.head_dim() % 2) throw value_error("pos", "rope needs an even head dimension");
    if (c.layers == 0 || c.vocab < 2 || c.ctx == 0 || c.ffn == 0) throw value_error("model", "empty dimensions");
    std::size_t off = 0;
    auto take = [&](std::size_t n) {
      const std::size_t o = off;
      off += n;
      return o;
    };
    const std::size_t d = c.d_model, hd = c.heads * c.head_dim(), kd = c.kv_heads * c.head_dim(), f = c.ffn;
    lay_.emb = take(c.vocab * d);
    lay_.pos = c.pos == abs_pos::learned ? take(c.ctx * d) : 0;
    for (std::size_t l = 0; l < c.layers; ++l) {
      layer_layout L{};
      L.g1 = take(d);
      L.wq = take(d * hd);
      L.wk = take(d * kd);
      L.wv = take(d * kd);
      L.wo = take(hd * d);
      L.wg = c.gate ? take(d * hd) : 0;
      L.g2 = take(d);
      L.w1 = take(d * f);
      L.w3 = gated(c.act) ? take(d * f) : 0;
      L.w2 = take(f * d);
      L.sink = has_sink ? take(c.heads) : 0;
      L.kstar = has_kv ? take(kd) : 0;
      L.vstar = has_kv && c.learn_vstar ? take(kd) : 0;
      L.t5 = has_t5 ? take(c.heads * 32) : 0;
      lay_.layer.push_back(L);
    }
    lay_.gf = take(d);
    lay_.wout = take(d * c.vocab);
    lay_.total = off;
    params_.assign(off, T(0));
    grads_.assign(off, T(0));
    if (c.rope) rope_table_ = pos::rope_table(attn_.pos, c.ctx, c.head_dim());
  }

  const model_config& config() const { return cfg_; }
  const model_layout& layout() const { return lay_; }
  std::vector<T>& params() { return params_; }
  const std::vector<T>& params() const { return params_; }
  std::vector<T>& grads() { return grads_; }
  std::size_t parameter_count() const { return lay_.total; }
  A& attention() { return attn_; }

  // N(0, sqrt(2/(5d))) everywhere, FFN output projection N(0, 1/sqrt(d_ff)/L),
  // norm gains 1, sink logits and T5 tables 0.
  void init(std::uint64_t seed) {
    std::mt19937_64 gen(seed);
    const double std0 = std::sqrt(2.0 / (5.0 * double(cfg_.d_model)));
    const double std2 = 1.0 / std::sqrt(double(cfg_.ffn)) / double(cfg_.layers);
    std::normal_distribution<double> n0(0.0, std0), n2(0.0, std2);
    for (auto& p : params_) p = T(n0(gen));
    const std::size_t d = cfg_.d_model;
    auto fill = [&](std::size_t off, std::size_t n, T v) { std::fill_n(params_.begin() + off, n, v); };
    for (const auto& L : lay_.layer) {
      fill(L.g1, d, T(1));
      fill(L.g2, d, T(1));
      for (std::size_t i = 0; i < cfg_.ffn * d; ++i) params_[L.w2 + i] = T(n2(gen));
      if (has_sink) fill(L.sink, cfg_.heads, T(0));
      if (has_t5) fill(L.t5, cfg_.heads * 32, T(0));
    }
    fill(lay_.gf, d, T(1));
  }

  // Forward over a batch of `batch` sequences of `tokens` ids each; returns the
  // mean cross-entropy over the positions kept by `loss_mask` (empty: all;
  // `loss_mask[b·tokens + t]` = 0 drops position t). targets[i] is the token
  // that should follow ids[i]. Keeps what backward() needs; the three vectors
  // must outlive the backward() call.
  T forward(const std::vector<std::int32_t>& ids, const std::vector<std::int32_t>& targets,
            const std::vector<std::uint8_t>& loss_mask, std::size_t batch, std::size_t tokens) {
    B_ = batch;
    T_ = tokens;
    const std::size_t N = batch * tokens, d = cfg_.d_model, V = cfg_.vocab;
    if (tokens > cfg_.ctx) throw value_error("tokens", "longer than the context");
    resize(N);
    pack_weights();
    const T* P = params_.data();
    // h0 = E[x] (+ positions)
    detail::rows(N, [&](std::size_t i) {
      const std::size_t t = i % tokens;
      const T* e = P + lay_.emb + std::size_t(ids[i]) * d;
      T* h = x_[0].data() + i * d;
      for (std::size_t c = 0; c < d; ++c) h[c] = e[c];
      if (cfg_.pos == abs_pos::learned)
        for (std::size_t c = 0; c < d; ++c) h[c] += P[lay_.pos + t * d + c];
      if (cfg_.pos == abs_pos::sinusoidal)
        for (std::size_t c = 0; c < d; ++c) h[c] += sinusoid(t, c);
    });
    for (std::size_t l = 0; l < cfg_.layers; ++l) layer_forward(l);
    // final norm (pre-LN) and LM head
    const T* hl = x_[cfg_.layers].data();
    if (cfg_.norm == norm_place::pre) {
      rmsnorm(hl, P + lay_.gf, hf_.data(), rstdf_.data(), N);
      hl = hf_.data();
    }
    matmul(hl, P + lay_.wout, logits_.data(), N, d, V);
    // cross-entropy; logits_ becomes the softmax for backward
    std::vector<double> row_loss(N, 0.0);
    count_ = 0;
    for (std::size_t i = 0; i < N; ++i) count_ += loss_mask.empty() || loss_mask[i];
    detail::rows(N, [&](std::size_t i) {
      T* z = logits_.data() + i * V;
      T m = z[0];
      for (std::size_t j = 1; j < V; ++j) m = std::max(m, z[j]);
      // softmax in place (vectorized exp), then the loss from its log
      using Bt = xsimd::batch<T>;
      const double zt = double(z[targets[i]]) - double(m);
      const Bt mb(m);
      Bt sb(T(0));
      std::size_t j = 0;
      for (; j + Bt::size <= V; j += Bt::size) {
        const Bt e = xsimd::exp(Bt::load_unaligned(z + j) - mb);
        e.store_unaligned(z + j);
        sb += e;
      }
      double s = double(xsimd::hadd(sb));
      for (; j < V; ++j) s += z[j] = std::exp(z[j] - m);
      if (loss_mask.empty() || loss_mask[i]) row_loss[i] = std::log(s) - zt;
      const T inv = T(1.0 / s);
      for (j = 0; j < V; ++j) z[j] *= inv;
    });
    double loss = 0;
    for (double r : row_loss) loss += r;
    ids_ = &ids;
    targets_ = &targets;
    mask_ = &loss_mask;
    return T(count_ ? loss / double(count_) : 0.0);
  }

  // Gradient of the last forward's loss into grads() (overwritten).
  void backward() {
    const std::size_t N = B_ * T_, d = cfg_.d_model, V = cfg_.vocab;
    std::fill(grads_.begin(), grads_.end(), T(0));
    const T* P = params_.data();
    T* G = grads_.data();
    // dlogits = (softmax - onehot) / count on kept positions
    const T scale = T(1) / T(std::max<std::size_t>(count_, 1));
    detail::rows(N, [&](std::size_t i) {
      T* z = logits_.data() + i * V;
      if (!mask_->empty() && !(*mask_)[i]) {
        std::fill(z, z + V, T(0));
        return;
      }
      z[(*targets_)[i]] -= T(1);
      for (std::size_t j = 0; j < V; ++j) z[j] *= scale;
    });
    const T* hl = cfg_.norm == norm_place::pre ? hf_.data() : x_[cfg_.layers].data();
    matmul_dw(hl, logits_.data(), G + lay_.wout, N, d, V, dw_scratch_);
    matmul_dx(logits_.data(), P + lay_.wout, dx_.data(), N, d, V, T(0));
    if (cfg_.norm == norm_place::pre)
      rmsnorm_backward(x_[cfg_.layers].data(), P + lay_.gf, rstdf_.data(), dx_.data(), dx_.data(), nullptr,
                       G + lay_.gf, N);
    for (std::size_t l = cfg_.layers; l-- > 0;) layer_backward(l);
    // embeddings
    const std::vector<T>& dx = dx_;
    for (std::size_t i = 0; i < N; ++i) {
      const T* g = dx.data() + i * d;
      T* e = G + lay_.emb + std::size_t((*ids_)[i]) * d;
      for (std::size_t c = 0; c < d; ++c) e[c] += g[c];
      if (cfg_.pos == abs_pos::learned) {
        T* pe = G + lay_.pos + (i % T_) * d;
        for (std::size_t c = 0; c < d; ++c) pe[c] += g[c];
      }
    }
  }

  // The attention value of layer l, pointing at that layer's parameters.
  A layer_attention(std::size_t l) const {
    A a = attn_;
    const auto& L = lay_.layer[l];
    const T* P = params_.data();
    a.pos.enabled = cfg_.rope;
    if (cfg_.rope) {  // every step rotates the same positions: look the angles up
      a.pos.table = rope_table_.data();
      a.pos.table_positions = cfg_.ctx;
      a.pos.table_dim = cfg_.head_dim();
    }
    if constexpr (has_sink) a.norm.logits = param_ref(P + L.sink, cfg_.heads);
    if constexpr (has_kv) {
      a.bias.k = param_ref(P + L.kstar, cfg_.kv_heads * cfg_.head_dim());
      a.bias.v = cfg_.learn_vstar ? param_ref(P + L.vstar, cfg_.kv_heads * cfg_.head_dim()) : param_ref{};
    }
    if constexpr (has_t5) a.bias.table = param_ref(P + L.t5, cfg_.heads * 32);
    return a;
  }

  // q, k, v of layer l from the last forward, as (batch, heads, tokens, head_dim) views.
  tensor4<const T> layer_q(std::size_t l) const { return view(qkv_[l].data(), cfg_.heads); }
  tensor4<const T> layer_k(std::size_t l) const { return view(qkv_[l].data() + q_width(), cfg_.kv_heads); }
  tensor4<const T> layer_v(std::size_t l) const {
    return view(qkv_[l].data() + q_width() + kv_width(), cfg_.kv_heads);
  }
  // Layer l's per-row attention state (m, l) from the last forward, (batch, heads, tokens).
  row_stats<const T> layer_stats(std::size_t l) const { return {sm_[l].data(), sl_[l].data()}; }
  // Hidden state entering layer l (l = layers: the last), (batch·tokens × d).
  const std::vector<T>& hidden(std::size_t l) const { return x_[l]; }

 private:
  model_config cfg_;
  A attn_;
  Backend be_;
  model_layout lay_;
  std::vector<T> params_, grads_;
  std::vector<double> rope_table_;
  std::size_t B_ = 0, T_ = 0, count_ = 0;
  const std::vector<std::int32_t>* targets_ = nullptr;
  const std::vector<std::int32_t>* ids_ = nullptr;
  const std::vector<std::uint8_t>* mask_ = nullptr;
  std::size_t cap_ = 0;
  // W_q | W_k | W_v and W_1 | W_3 side by side (d × all their columns), copied
  // from the parameters at each forward: one product instead of three or two.
  std::vector<std::vector<T>> wqkv_, w13_;
  // activations (qkv: q | k | v per token; uw: u | w per token for gated FFNs)
  std::vector<std::vector<T>> x_, a_, qkv_, o_, gp_, og_, x2_, b_, uw_, h_, r1_, r2_, sm_, sl_;
  std::vector<T> hf_, rstdf_, logits_, dx_, tmp_d_, t_d_, dqkv_, dout_, dgp_, duw_, dh_, dw_scratch_, dg_scratch_;

  std::size_t q_width() const { return cfg_.heads * cfg_.head_dim(); }
  std::size_t kv_width() const { return cfg_.kv_heads * cfg_.head_dim(); }
  std::size_t qkv_width() const { return q_width() + 2 * kv_width(); }
  std::size_t ffn_width() const { return gated(cfg_.act) ? 2 * cfg_.ffn : cfg_.ffn; }

  T sinusoid(std::size_t t, std::size_t c) const {
    const std::size_t d = cfg_.d_model, i = c / 2;
    const double a = double(t) / std::pow(10000.0, 2.0 * double(i) / double(d));
    return T(c % 2 == 0 ? std::sin(a) : std::cos(a));
  }

  // (batch, heads, tokens, head_dim) views of columns of a (tokens × qkv_width) buffer
  tensor4<const T> view(const T* p, std::size_t heads) const {
    const std::size_t hd = cfg_.head_dim(), ld = qkv_width();
    return {p, B_, heads, T_, hd, T_ * ld, hd, ld};
  }
  tensor4<T> mview(T* p, std::size_t heads) const {
    const std::size_t hd = cfg_.head_dim(), ld = qkv_width();
    return {p, B_, heads, T_, hd, T_ * ld, hd, ld};
  }
  // the attention output, (tokens × heads·head_dim)
  tensor4<T> out_view(T* p) const {
    const std::size_t hd = cfg_.head_dim(), ld = q_width();
    return {p, B_, cfg_.heads, T_, hd, T_ * ld, hd, ld};
  }

  void resize(std::size_t N) {
    if (N <= cap_ && !x_.empty()) return;
    cap_ = N;
    const std::size_t L = cfg_.layers, d = cfg_.d_model, hd = q_width(), w = qkv_width(), f = cfg_.ffn,
                      fw = ffn_width();
    auto make = [&](std::vector<std::vector<T>>& v, std::size_t count, std::size_t width) {
      v.assign(count, std::vector<T>(N * width));
    };
    make(x_, L + 1, d);
    make(a_, L, d);
    make(qkv_, L, w);
    make(o_, L, hd);
    make(gp_, cfg_.gate ? L : 0, hd);
    make(og_, cfg_.gate ? L : 0, hd);
    make(x2_, L, d);
    make(b_, L, d);
    make(uw_, L, fw);
    make(h_, L, f);
    make(r1_, L, 1);
    make(sm_, L, cfg_.heads);  // per-row attention state (m, l), for the backward and the sink metrics
    make(sl_, L, cfg_.heads);
    make(r2_, L, 1);
    hf_.assign(N * d, T(0));
    rstdf_.assign(N, T(0));
    logits_.assign(N * cfg_.vocab, T(0));
    dx_.assign(N * d, T(0));
    tmp_d_.assign(N * d, T(0));
    t_d_.assign(N * d, T(0));
    dqkv_.assign(N * w, T(0));
    dout_.assign(N * hd, T(0));
    dgp_.assign(cfg_.gate ? N * hd : 0, T(0));
    duw_.assign(N * fw, T(0));
    dh_.assign(N * f, T(0));
  }

  void pack_weights() {
    const std::size_t L = cfg_.layers, d = cfg_.d_model, hd = q_width(), kd = kv_width(), w = qkv_width(),
                      f = cfg_.ffn;
    const T* P = params_.data();
    wqkv_.resize(L);
    w13_.resize(gated(cfg_.act) ? L : 0);
    for (std::size_t l = 0; l < L; ++l) {
      const auto& Ly = lay_.layer[l];
      wqkv_[l].resize(d * w);
      for (std::size_t r = 0; r < d; ++r) {
        T* dst = wqkv_[l].data() + r * w;
        std::copy_n(P + Ly.wq + r * hd, hd, dst);
        std::copy_n(P + Ly.wk + r * kd, kd, dst + hd);
        std::copy_n(P + Ly.wv + r * kd, kd, dst + hd + kd);
      }
      if (!gated(cfg_.act)) continue;
      w13_[l].resize(d * 2 * f);
      for (std::size_t r = 0; r < d; ++r) {
        std::copy_n(P + Ly.w1 + r * f, f, w13_[l].data() + r * 2 * f);
        std::copy_n(P + Ly.w3 + r * f, f, w13_[l].data() + r * 2 * f + f);
      }
    }
  }

  // y = x · rstd · g, rstd = 1/sqrt(mean(x²) + eps), rows [r0, r1) or all N
  void rmsnorm_rows(const T* x, const T* g, T* y, T* rstd, std::size_t r0, std::size_t r1) const {
    const std::size_t d = cfg_.d_model;
    for (std::size_t i = r0; i < r1; ++i) rstd[i] = detail::rmsnorm_row(x + i * d, g, y + i * d, d, cfg_.norm_eps);
  }
  void rmsnorm(const T* x, const T* g, T* y, T* rstd, std::size_t N) const {
    for_chunks(N, row_block, [&](std::size_t r0, std::size_t r1) { rmsnorm_rows(x, g, y, rstd, r0, r1); });
  }
  // RMSNorm's backward: dx = rstd (g⊙dy − x̂ · mean(x̂ ⊙ g ⊙ dy)) (+ res), dg += Σ dy ⊙ x̂
  // (x̂ = x · rstd); dx may be dy. Rows run in blocks of row_block (alone, or as
  // a product's epilogue); each block sums its rows' dg into its own slot, and
  // norm_dg_end() adds the slots in block order: no dependence on threads.
  void rmsnorm_backward_rows(const T* x, const T* g, const T* rstd, const T* dy, T* dx, const T* res,
                             std::size_t r0, std::size_t r1) {
    const std::size_t d = cfg_.d_model;
    T* pg = dg_scratch_.data() + (r0 / row_block) * d;
    std::fill_n(pg, d, T(0));
    for (std::size_t i = r0; i < r1; ++i)
      detail::rmsnorm_backward_row(x + i * d, g, rstd[i], dy + i * d, dx + i * d, res ? res + i * d : nullptr, pg, d);
  }
  std::size_t norm_blocks(std::size_t N) const { return std::max<std::size_t>(1, (N + row_block - 1) / row_block); }
  void norm_dg_begin(std::size_t N) {
    if (dg_scratch_.size() < norm_blocks(N) * cfg_.d_model) dg_scratch_.resize(norm_blocks(N) * cfg_.d_model);
  }
  void norm_dg_end(T* dg, std::size_t N) const {
    const std::size_t d = cfg_.d_model;
    for (std::size_t b = 0; b < norm_blocks(N); ++b)
      for (std::size_t c = 0; c < d; ++c) dg[c] += dg_scratch_[b * d + c];
  }
  void rmsnorm_backward(const T* x, const T* g, const T* rstd, const T* dy, T* dx, const T* res, T* dg,
                        std::size_t N) {
    norm_dg_begin(N);
    for_chunks(N, row_block, [&](std::size_t r0, std::size_t r1) { rmsnorm_backward_rows(x, g, rstd, dy, dx, res, r0, r1); });
    norm_dg_end(dg, N);
  }
  // out = a + b over rows [r0, r1) of d
  void add_rows(const T* a, const T* b, T* out, std::size_t r0, std::size_t r1) const {
    const std::size_t d = cfg_.d_model;
    for (std::size_t i = r0 * d; i < r1 * d; ++i) out[i] = a[i] + b[i];
  }
  // h = act(u) [⊙ w] over rows [r0, r1); uw holds u | w per row
  void act_rows(const T* uw, T* h, std::size_t r0, std::size_t r1) const {
    const std::size_t f = cfg_.ffn, fw = ffn_width();
    const bool g = gated(cfg_.act), silu = cfg_.act == ffn_act::swiglu || cfg_.act == ffn_act::swish;
    for (std::size_t i = r0; i < r1; ++i) {
      const T* u = uw + i * fw;
      const T* wv = g ? u + f : nullptr;
      T* hr = h + i * f;
      if (silu) {
        detail::silu_forward(u, wv, hr, f);
        continue;
      }
      for (std::size_t c = 0; c < f; ++c) hr[c] = detail::act_value(cfg_.act, u[c]) * (wv ? wv[c] : T(1));
    }
  }
  // du | dw from dh over rows [r0, r1)
  void act_backward_rows(const T* uw, const T* dh, T* duw, std::size_t r0, std::size_t r1) const {
    const std::size_t f = cfg_.ffn, fw = ffn_width();
    const bool g = gated(cfg_.act), silu = cfg_.act == ffn_act::swiglu || cfg_.act == ffn_act::swish;
    for (std::size_t i = r0; i < r1; ++i) {
      const T* u = uw + i * fw;
      const T* wv = g ? u + f : nullptr;
      const T* dhr = dh + i * f;
      T* du = duw + i * fw;
      T* dwr = g ? du + f : nullptr;
      if (silu) {
        detail::silu_backward(u, wv, dhr, du, dwr, f);
        continue;
      }
      for (std::size_t c = 0; c < f; ++c) {
        if (wv) dwr[c] = dhr[c] * detail::act_value(cfg_.act, u[c]);
        du[c] = dhr[c] * (wv ? wv[c] : T(1)) * detail::act_derivative(cfg_.act, u[c]);
      }
    }
  }

  void layer_forward(std::size_t l) {
    const std::size_t N = B_ * T_, d = cfg_.d_model, hd = q_width(), kd = kv_width(), w = qkv_width(),
                      f = cfg_.ffn, fw = ffn_width();
    const auto& L = lay_.layer[l];
    const T* P = params_.data();
    const bool pre = cfg_.norm == norm_place::pre;
    const T* x = x_[l].data();
    // a = RMSNorm(x) (pre-LN) or x (post-LN)
    const T* a = x;
    if (pre) {
      rmsnorm(x, P + L.g1, a_[l].data(), r1_[l].data(), N);
      a = a_[l].data();
    }
    // q | k | v = a · (W_q | W_k | W_v)
    T* qkv = qkv_[l].data();
    matmul(a, wqkv_[l].data(), qkv, N, d, w);
    attnsink::forward(be_, layer_attention(l), view(qkv, cfg_.heads), view(qkv + hd, cfg_.kv_heads),
                      view(qkv + hd + kd, cfg_.kv_heads), out_view(o_[l].data()),
                      row_stats<T>{sm_[l].data(), sl_[l].data()});
    const T* o = o_[l].data();
    if (cfg_.gate) {  // og = o ⊙ σ(a W_g)
      matmul(a, P + L.wg, gp_[l].data(), N, d, hd);
      T* og = og_[l].data();
      const T* gp = gp_[l].data();
      detail::rows(N, [&](std::size_t i) {
        for (std::size_t c = i * hd; c < (i + 1) * hd; ++c) og[c] = o[c] * detail::sigm(gp[c]);
      });
      o = og;
    }
    // x2 = x + o W_o, b = RMSNorm(x2)   (post-LN: s1 = x + o W_o kept in b_, b = x2 = RMSNorm(s1))
    // (each norm runs on a block of rows as soon as the product has made it)
    T* x2 = x2_[l].data();
    if (pre) {
      matmul(o, P + L.wo, x2, N, hd, d, T(0), x, [&](std::size_t r0, std::size_t r1) {
        rmsnorm_rows(x2, P + L.g2, b_[l].data(), r2_[l].data(), r0, r1);
      });
    } else {
      matmul(o, P + L.wo, b_[l].data(), N, hd, d, T(0), x, [&](std::size_t r0, std::size_t r1) {
        rmsnorm_rows(b_[l].data(), P + L.g1, x2, r1_[l].data(), r0, r1);
      });
    }
    const T* b = pre ? b_[l].data() : x2;
    // FFN: u | w = b (W1 | W3); h = act(u) [⊙ w]; x' = x2 + h W2
    T* uw = uw_[l].data();
    matmul(b, gated(cfg_.act) ? w13_[l].data() : P + L.w1, uw, N, d, fw, T(0), static_cast<const T*>(nullptr),
           [&](std::size_t r0, std::size_t r1) { act_rows(uw, h_[l].data(), r0, r1); });
    T* xn = x_[l + 1].data();
    if (pre) {
      matmul(h_[l].data(), P + L.w2, xn, N, f, d, T(0), x2);
    } else {  // post-LN: x' = RMSNorm(s2), s2 = x2 + h W2 kept in a_
      matmul(h_[l].data(), P + L.w2, a_[l].data(), N, f, d, T(0), x2, [&](std::size_t r0, std::size_t r1) {
        rmsnorm_rows(a_[l].data(), P + L.g2, xn, r2_[l].data(), r0, r1);
      });
    }
  }

  void layer_backward(std::size_t l) {
    const std::size_t N = B_ * T_, d = cfg_.d_model, hd = q_width(), kd = kv_width(), w = qkv_width(),
                      f = cfg_.ffn, fw = ffn_width();
    const auto& L = lay_.layer[l];
    const T* P = params_.data();
    T* G = grads_.data();
    const bool pre = cfg_.norm == norm_place::pre;
    T* dx = dx_.data();  // gradient w.r.t. x_{l+1} on entry, w.r.t. x_l on exit
    if (!pre)            // x' = RMSNorm(s2), s2 = x2 + h W2 (s2 kept in a_)
      rmsnorm_backward(a_[l].data(), P + L.g2, r2_[l].data(), dx, dx, nullptr, G + L.g2, N);
    // FFN: dh = dx W2ᵀ, dW2 += hᵀ dx
    const T* b = pre ? b_[l].data() : x2_[l].data();
    matmul_dw(h_[l].data(), dx, G + L.w2, N, f, d, dw_scratch_);
    // dh = dx W2ᵀ, then du | dw per block of rows
    T* dh = dh_.data();
    T* duw = duw_.data();
    matmul_dx(dx, P + L.w2, dh, N, f, d, T(0),
              [&](std::size_t r0, std::size_t r1) { act_backward_rows(uw_[l].data(), dh, duw, r0, r1); });
    // db = (du | dw) (W1 | W3)ᵀ; dW1 += bᵀ du, dW3 += bᵀ dw; then per block of rows
    // dx2 = dx (residual) + RMSNorm'(db)   (pre-LN);   post-LN: b = x2 = RMSNorm(s1), ds1 = dx + db
    T* db = tmp_d_.data();
    T* dx2 = t_d_.data();
    auto db_rows = [&](std::size_t r0, std::size_t r1) {
      if (pre) return rmsnorm_backward_rows(x2_[l].data(), P + L.g2, r2_[l].data(), db, dx2, dx, r0, r1);
      add_rows(db, dx, db, r0, r1);
      rmsnorm_backward_rows(b_[l].data(), P + L.g1, r1_[l].data(), db, dx2, nullptr, r0, r1);
    };
    norm_dg_begin(N);
    if (gated(cfg_.act)) {
      const dw_part<T> parts[2] = {{G + L.w1, f}, {G + L.w3, f}};
      matmul_dw(b, d, duw, fw, N, d, parts, dw_scratch_);
      matmul_dx(duw, fw, w13_[l].data(), db, N, d, fw, T(0), db_rows);
    } else {
      matmul_dw(b, duw, G + L.w1, N, d, f, dw_scratch_);
      matmul_dx(duw, P + L.w1, db, N, d, f, T(0), db_rows);
    }
    norm_dg_end(pre ? G + L.g2 : G + L.g1, N);
    // attention output: do = dx2 W_oᵀ, dW_o += oᵀ dx2
    const T* o_used = cfg_.gate ? og_[l].data() : o_[l].data();
    const T* a = pre ? a_[l].data() : x_[l].data();
    matmul_dw(o_used, dx2, G + L.wo, N, hd, d, dw_scratch_);
    T* dout = dout_.data();
    matmul_dx(dx2, P + L.wo, dout, N, hd, d, T(0));
    T* da = tmp_d_.data();  // db is spent: tmp_d_ becomes da
    bool da_set = false;
    if (cfg_.gate) {  // og = o ⊙ σ(gp): do_attn = dog ⊙ σ, dgp = dog ⊙ o ⊙ σ(1-σ)
      const T* o = o_[l].data();
      const T* gp = gp_[l].data();
      T* dgp = dgp_.data();
      detail::rows(N, [&](std::size_t i) {
        for (std::size_t c = i * hd; c < (i + 1) * hd; ++c) {
          const T s = detail::sigm(gp[c]);
          dgp[c] = dout[c] * o[c] * s * (T(1) - s);
          dout[c] *= s;
        }
      });
      matmul_dw(a, dgp, G + L.wg, N, d, hd, dw_scratch_);
      matmul_dx(dgp, P + L.wg, da, N, d, hd, T(0));
      da_set = true;
    }
    // attention backward into dq | dk | dv
    T* dqkv = dqkv_.data();
    gradients<T> g{mview(dqkv, cfg_.heads), mview(dqkv + hd, cfg_.kv_heads), mview(dqkv + hd + kd, cfg_.kv_heads)};
    if constexpr (has_sink) g.params.sink = G + L.sink;
    if constexpr (has_kv) {
      g.params.kstar = G + L.kstar;
      if (cfg_.learn_vstar) g.params.vstar = G + L.vstar;
    }
    if constexpr (has_t5) g.params.bias = G + L.t5;
    const T* qkv = qkv_[l].data();
    const auto q = view(qkv, cfg_.heads), k = view(qkv + hd, cfg_.kv_heads), v = view(qkv + hd + kd, cfg_.kv_heads);
    const tensor4<const T> dov = out_view(dout);
    if constexpr (std::is_same_v<Backend, backend::cpu>) {  // reuse the forward's output and row state
      const saved_forward<T> saved{out_view(o_[l].data()), sm_[l].data(), sl_[l].data()};
      attnsink::backward(be_, layer_attention(l), q, k, v, dov, g, saved);
    } else {
      attnsink::backward(be_, layer_attention(l), q, k, v, dov, g);
    }
    // da += (dq | dk | dv) (W_q | W_k | W_v)ᵀ; dW_q += aᵀ dq, dW_k += aᵀ dk, dW_v += aᵀ dv
    // then per block of rows dx_l = dx2 (residual) + RMSNorm'(da)   (pre-LN);   post-LN: a = x, dx_l = dx2 + da
    const dw_part<T> parts[3] = {{G + L.wq, hd}, {G + L.wk, kd}, {G + L.wv, kd}};
    matmul_dw(a, d, dqkv, w, N, d, parts, dw_scratch_);
    norm_dg_begin(N);
    matmul_dx(dqkv, w, wqkv_[l].data(), da, N, d, w, da_set ? T(1) : T(0), [&](std::size_t r0, std::size_t r1) {
      if (pre) return rmsnorm_backward_rows(x_[l].data(), P + L.g1, r1_[l].data(), da, dx, dx2, r0, r1);
      add_rows(da, dx2, dx, r0, r1);
    });
    if (pre) norm_dg_end(G + L.g1, N);
  }
};

}  // namespace attnsink::train
