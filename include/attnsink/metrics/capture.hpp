// attnsink/metrics/capture.hpp — collect per-layer, per-head sink statistics
// while a model runs its forward pass, without materializing any weights.
//
//   metrics::capture cap({.eps = 0.3, .k = 1});
//   for each layer l:
//     forward(backend::cpu{}, attn, q, k, v, out, stats);     // the model's own pass
//     cap.attention(backend::cpu{}, l, attn, q, k, stats);    // α_k, α_*, cos(q_t, k_1) per head
//     cap.keys(l, k);  cap.values(l, v);  cap.hidden(l, h);    // per-token norms, massive ratio
//   cap.sink_rate();  cap.alpha(l, h);  cap.key_norms(l);  ...
//
// Calls for the same layer add samples (several batches of sequences).
// Not thread-safe: record from the thread that drives the layers.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "alpha.hpp"
#include "vectors.hpp"

namespace attnsink::metrics {

class capture {
 public:
  // Throws value_error("options.eps") unless 0 <= ε < 1; k is checked against each layer's tokens.
  explicit capture(const options& opt = {}) : opt_(opt) {
    if (!(opt.eps >= 0.0 && opt.eps < 1.0))
      throw value_error("options.eps", "expected a threshold in [0, 1), got " + std::to_string(opt.eps));
  }
  const options& settings() const { return opt_; }

  // One layer's attention: α_k and α_* per (sample, head), streamed from q, k
  // and the row state the forward pass kept; cos(q_t, k_1) per head.
  // `be` runs the row-mass pass the paper's proxy needs for unnormalized variants.
  template <class Backend, attention_type A, class T, class S>
    requires std::same_as<std::remove_const_t<S>, T>
  void attention(const Backend& be, std::size_t layer, const A& a, tensor4<const T> q, tensor4<const T> k,
                 row_stats<S> stats) {
    const alpha_map m = alphas_streamed(be, a, q, k, stats, opt_);
    const first_key_angles g = qk_angles(a, q, k, 1);
    layer_data& L = at(layer);
    L.alphas.append(m);  // throws before anything else changes when shapes differ
    if (L.cos.empty()) L.cos.resize(q.heads);
    const mean r;
    for (std::size_t b = 0; b < g.batch; ++b)
      for (std::size_t h = 0; h < g.heads; ++h) {
        mean::value_type v;
        r.init(v);
        for (std::size_t t = 0; t < g.tokens; ++t) r.add(v, g.cos[(b * g.heads + h) * g.tokens + t]);
        r.join(L.cos[h], v);
      }
  }
  template <attention_type A, class T, class S>
    requires std::same_as<std::remove_const_t<S>, T>
  void attention(std::size_t layer, const A& a, tensor4<const T> q, tensor4<const T> k, row_stats<S> stats) {
    attention(backend::reference{}, layer, a, q, k, stats);
  }

  // Per-token L2 norms of one layer's keys (batch, kv_heads, tokens, dim).
  template <class T> void keys(std::size_t layer, tensor4<const T> k) { add_norms(at(layer).keys, k, "k"); }
  // Per-token L2 norms of one layer's values.
  template <class T> void values(std::size_t layer, tensor4<const T> v) { add_norms(at(layer).values, v, "v"); }
  // Per-token L2 norms and the massive-activation ratio of one layer's hidden
  // states (batch, 1, tokens, model_dim) — the residual stream entering it.
  template <class T>
  void hidden(std::size_t layer, tensor4<const T> h) {
    const std::vector<double> ratio = massive_activation_ratio(h, "h");
    layer_data& L = at(layer);
    add_norms(L.hidden, h, "h");
    const mean r;
    for (double x : ratio) r.add(L.massive, x);
  }

  // 1 + the highest layer recorded.
  std::size_t layers() const { return layers_.size(); }
  // α per (sample, head) of one layer.
  const alpha_map& alphas(std::size_t layer) const { return recorded(layer).alphas; }
  // α_k of (layer, head), averaged over samples.
  double alpha(std::size_t layer, std::size_t head) const { return alphas(layer).head_mean(checked_head(layer, head)); }
  // α_* at the key/value bias of (layer, head), averaged over samples.
  double alpha_bias(std::size_t layer, std::size_t head) const {
    if (!alphas(layer).has_bias()) throw value_error("layer", "layer " + std::to_string(layer) + " has no key/value bias");
    return alphas(layer).head_mean(checked_head(layer, head), true);
  }
  // Mean over samples and queries of cos(q_t, k_1) for (layer, head).
  double cos_first(std::size_t layer, std::size_t head) const {
    return mean{}.final(recorded(layer).cos.at(checked_head(layer, head)));
  }
  // Sink_k^ε over every recorded (sample, layer, head).
  double sink_rate() const { return sink_rate_of(false); }
  // Sink* over every recorded (sample, layer, head) of layers with a key/value bias.
  double bias_sink_rate() const { return sink_rate_of(true); }
  // Per-token norms averaged over samples and heads; empty if never recorded.
  std::vector<double> key_norms(std::size_t layer) const { return finals(recorded(layer).keys); }
  std::vector<double> value_norms(std::size_t layer) const { return finals(recorded(layer).values); }
  std::vector<double> hidden_norms(std::size_t layer) const { return finals(recorded(layer).hidden); }
  // ‖h_1‖ / mean_{t≠1} ‖h_t‖ of one layer's hidden states, taken per sample, averaged.
  double massive_ratio(std::size_t layer) const { return mean{}.final(recorded(layer).massive); }

  void clear() { layers_.clear(); }

 private:
  struct layer_data {
    alpha_map alphas;
    std::vector<mean::value_type> cos;  // per head
    std::vector<mean::value_type> keys, values, hidden;  // per token
    mean::value_type massive{};
  };

  layer_data& at(std::size_t layer) {
    if (layer >= layers_.size()) layers_.resize(layer + 1);
    return layers_[layer];
  }
  const layer_data& recorded(std::size_t layer) const {
    if (layer >= layers_.size())
      throw value_error("layer", "layer " + std::to_string(layer) + " was never recorded (" +
                                     std::to_string(layers_.size()) + " layers)");
    return layers_[layer];
  }
  std::size_t checked_head(std::size_t layer, std::size_t head) const {
    const alpha_map& m = recorded(layer).alphas;
    if (head >= m.heads)
      throw value_error("head", "expected a head index below " + std::to_string(m.heads) + ", got " + std::to_string(head));
    return head;
  }
  template <class T>
  static void add_norms(std::vector<mean::value_type>& acc, tensor4<const T> x, const char* argument) {
    const std::vector<double> n = token_norms(x, argument);
    if (!acc.empty() && acc.size() != x.tokens)
      throw shape_error(argument, "expected " + std::to_string(acc.size()) + " tokens (as recorded before), got " +
                                      std::to_string(x.tokens));
    acc.resize(x.tokens);
    const mean r;
    for (std::size_t s = 0; s < x.batch * x.heads; ++s)
      for (std::size_t t = 0; t < x.tokens; ++t) r.add(acc[t], n[s * x.tokens + t]);
  }
  static std::vector<double> finals(const std::vector<mean::value_type>& acc) {
    std::vector<double> out(acc.size());
    for (std::size_t t = 0; t < acc.size(); ++t) out[t] = mean{}.final(acc[t]);
    return out;
  }
  double sink_rate_of(bool at_bias) const {
    std::vector<alpha_map> maps;
    for (const layer_data& L : layers_)
      if (L.alphas.samples > 0 && (!at_bias || L.alphas.has_bias())) maps.push_back(L.alphas);
    return metrics::sink_rate(std::span<const alpha_map>(maps), opt_.eps, at_bias);
  }

  options opt_;
  std::vector<layer_data> layers_;
};

}  // namespace attnsink::metrics
