// examples/train/train.hpp — what attnsink-train's per-variant translation
// units share: the variants it trains, and the function each one defines.
#pragma once

#include <attnsink/backend/cpu_backward.hpp>
#include <attnsink/cpu.hpp>
#include <attnsink/npy.hpp>
#include <attnsink/train/trainer.hpp>
#include <attnsink/variants.hpp>

// The variants attnsink-train offers (kernel_identity and its abs-clamped
// form are left out: unnormalized signed linear attention diverges at any
// useful learning rate).
#define ATTNSINK_TRAIN_VARIANTS(X)                                                                  \
  X(softmax) X(sigmoid) X(sigmoid_normalized) X(elu1) X(elu1_normalized) X(kernel_elu1)             \
  X(kernel_elu1_normalized) X(softmax_off_by_one) X(sink_logit) X(softpick) X(scaled_softmax)     \
  X(softcap) X(alibi) X(t5_relative) X(kv_bias)

namespace attnsink::train {

struct run_setup {
  run_config cfg;
  std::unique_ptr<dataset> data;
  std::string dump_attention;  // after training: write every layer's attention on a held-out sequence (.npy)
};

#define ATTNSINK_DECLARE(name) int train_##name(const run_setup&);
ATTNSINK_TRAIN_VARIANTS(ATTNSINK_DECLARE)
#undef ATTNSINK_DECLARE

// Builds variant V's model and trains it.
template <class V>
int train_variant(const run_setup& s) {
  const run_config& cfg = s.cfg;
  variants::settings vs;
  vs.rope.enabled = cfg.model.rope;
  auto attn = variants::make<V>(vs);
  model<typename V::type, backend::cpu, float> m(cfg.model, attn);
  m.init(cfg.seed);
  trainer<decltype(m)> t(cfg, m, *s.data);
  if (!cfg.quiet)
    std::fprintf(stderr, "attnsink-train: %s, %zu parameters, %s\n", V::name, m.parameter_count(),
                 s.data->describe().c_str());
  const int rc = t.run();
  if (rc == 0 && !s.dump_attention.empty()) {
    // One held-out sequence's weights in every layer, through the reference backend: (layers, heads, T, keys).
    const std::size_t T = std::min<std::size_t>(64, cfg.model.ctx);
    const batch b = s.data->make_batch(cfg.seed ^ 0x51A4ull, 0, 1, T, split::validation, cfg.tr);
    m.forward(b.ids, b.targets, b.loss_mask, 1, T);
    const std::size_t L = cfg.model.layers, H = cfg.model.heads, cols = T + (V::type::bias_type::has_kv ? 1 : 0);
    xt::xarray<float> probs = xt::zeros<float>({L, H, T, cols});
    std::vector<float> o(H * T * cfg.model.head_dim());
    for (std::size_t l = 0; l < L; ++l)
      forward(backend::reference{}, m.layer_attention(l), m.layer_q(l), m.layer_k(l), m.layer_v(l),
              tensor4<float>(o.data(), 1, H, T, cfg.model.head_dim()), row_stats<float>{},
              probs_view<float>{probs.data() + l * H * T * cols});
    npy::write(s.dump_attention, "--dump-attention", probs, npy::dtype::float32);
  }
  return rc;
}

}  // namespace attnsink::train
