// attnsink/train/trainer.hpp — the training loop: batches, AdamW, validation,
// sink metrics, JSONL log, checkpoints and resume.
//
// Everything a step does depends only on (seed, step) and the state in the
// checkpoint, so `--resume` after an interruption reproduces the
// uninterrupted run bit for bit (same thread count).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../metrics.hpp"
#include "checkpoint.hpp"
#include "data.hpp"
#include "model.hpp"
#include "optim.hpp"

namespace attnsink::train {

struct run_config {
  std::string variant = "softmax";
  model_config model;
  optim_config opt;
  transforms tr;
  std::size_t window = 0;  // sliding-window attention (0: full causal)
  std::size_t batch = 32;
  std::uint64_t seed = 1;
  std::size_t eval_every = 100, metrics_every = 100, ckpt_every = 0, log_every = 10;
  std::size_t eval_batches = 4, metric_sequences = 100, metric_tokens = 64;
  std::string log_path, ckpt_dir;
  bool resume = false, quiet = false;
  std::size_t stop_at = 0;  // stop (checkpointing) after this step though the schedule spans opt.steps (0: never)

  // What a checkpoint must agree on to be resumed by this run.
  std::string header(const dataset& data) const {
    std::ostringstream h;
    const model_config& m = model;
    h << "variant=" << variant << " vocab=" << m.vocab << " layers=" << m.layers << " d=" << m.d_model
      << " heads=" << m.heads << " kv_heads=" << m.kv_heads << " ffn=" << m.ffn << " ctx=" << m.ctx
      << " act=" << int(m.act) << " norm=" << int(m.norm) << " pos=" << int(m.pos) << " rope=" << m.rope
      << " gate=" << m.gate << " learn_vstar=" << m.learn_vstar << " window=" << window << " batch=" << batch
      << " seed=" << seed << " lr=" << opt.lr << " warmup=" << opt.warmup << " wd=" << opt.weight_decay
      << " clip=" << opt.clip << " schedule=" << int(opt.sched) << " fix=" << tr.fix_pos << ":" << tr.fix_id
      << " random=" << tr.rand_begin << ":" << tr.rand_end << " prefix=" << tr.prefix_lm << " data=" << data.describe();
    return h.str();
  }
};

// One JSONL record: "step" and whatever was measured at that step.
class record {
 public:
  explicit record(std::size_t step) { s_ << "{\"step\": " << step; }
  record& add(const char* key, double v) {
    s_ << ", \"" << key << "\": ";
    if (std::isfinite(v)) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.6g", v);
      s_ << buf;
    } else {
      s_ << "null";
    }
    return *this;
  }
  record& add(const char* key, const std::string& v) {
    s_ << ", \"" << key << "\": \"" << v << "\"";
    return *this;
  }
  std::string str() const { return s_.str() + "}"; }

 private:
  std::ostringstream s_;
};

// What the sink metrics measured on the held-out sequences.
struct sink_report {
  double sink_rate = NAN, alpha1 = NAN, sink_star = NAN, alpha_star = NAN;
};

template <class Model>
class trainer {
 public:
  trainer(const run_config& cfg, Model& m, const dataset& data) : cfg_(cfg), model_(m), data_(data), adam_(m.parameter_count()) {
    cfg.opt.check();
    if (cfg.batch == 0) throw value_error("--batch", "expected at least 1");
    if (cfg.model.ctx < 2) throw value_error("--ctx", "expected at least 2");
    if (cfg.tr.prefix_lm >= cfg.model.ctx) throw value_error("--prefix-lm", "must be shorter than the context");
    if (cfg.window > 0) model_.attention().mask = {mask::dynamic::kind::window, cfg.window};
    else if (cfg.tr.prefix_lm > 0) model_.attention().mask = {mask::dynamic::kind::prefix, cfg.tr.prefix_lm};
    else model_.attention().mask = {mask::dynamic::kind::causal, 0};
    header_ = cfg.header(data);
  }

  // Validation loss over cfg.eval_batches fixed held-out batches.
  double validation_loss() {
    double total = 0;
    for (std::size_t i = 0; i < cfg_.eval_batches; ++i) {
      const batch b = data_.make_batch(cfg_.seed, i, cfg_.batch, cfg_.model.ctx, split::validation, cfg_.tr);
      total += double(model_.forward(b.ids, b.targets, b.loss_mask, b.size, b.tokens));
    }
    return total / double(std::max<std::size_t>(cfg_.eval_batches, 1));
  }

  // α_1, Sink_1^0.3 (and α_*, Sink* with a key/value bias) over held-out sequences.
  sink_report sinks(metrics::capture* keep = nullptr) {
    const std::size_t T = std::min(cfg_.metric_tokens, cfg_.model.ctx);
    const batch b = data_.make_batch(cfg_.seed ^ 0x51A4ull, 0, cfg_.metric_sequences, T, split::validation, cfg_.tr);
    model_.forward(b.ids, b.targets, b.loss_mask, b.size, b.tokens);
    metrics::capture cap({0.3, 1});
    for (std::size_t l = 0; l < cfg_.model.layers; ++l)
      cap.attention(backend::cpu{}, l, model_.layer_attention(l), model_.layer_q(l), model_.layer_k(l),
                    model_.layer_stats(l));
    sink_report r;
    r.sink_rate = cap.sink_rate();
    double a = 0, as = 0;
    std::size_t n = 0;
    for (std::size_t l = 0; l < cap.layers(); ++l)
      for (std::size_t h = 0; h < cfg_.model.heads; ++h, ++n) {
        a += cap.alpha(l, h);
        if (cap.alphas(l).has_bias()) as += cap.alpha_bias(l, h);
      }
    r.alpha1 = a / double(n);
    if (Model::has_kv) {
      r.alpha_star = as / double(n);
      r.sink_star = cap.bias_sink_rate();
    }
    if (keep) *keep = std::move(cap);
    return r;
  }

  // Trains up to cfg.opt.steps. Returns 0, or 3 after a non-finite loss (the
  // last good checkpoint is kept).
  int run() {
    std::size_t start = 0;
    if (cfg_.resume) start = restore();
    std::ofstream log;
    if (!cfg_.log_path.empty()) {
      log.open(cfg_.log_path, start > 0 ? std::ios::app : std::ios::trunc);
      if (!log) throw io_error("--log", "cannot open '" + cfg_.log_path + "'");
    }
    const std::size_t tokens_per_step = cfg_.batch * cfg_.model.ctx;
    auto t0 = std::chrono::steady_clock::now();
    auto tlast = t0;
    std::size_t done_since = 0;
    double tok_s = 0;
    for (std::size_t step = start; step < cfg_.opt.steps; ++step) {
      const batch b = data_.make_batch(cfg_.seed, step, cfg_.batch, cfg_.model.ctx, split::train, cfg_.tr);
      const double loss = double(model_.forward(b.ids, b.targets, b.loss_mask, b.size, b.tokens));
      if (!std::isfinite(loss)) {
        std::fprintf(stderr, "attnsink-train: error: non-finite loss at step %zu; stopping%s\n", step,
                     last_ckpt_.empty() ? " (no checkpoint written yet)" : (" (last good checkpoint: " + last_ckpt_ + ")").c_str());
        return 3;
      }
      model_.backward();
      const double gnorm = adamw<float>::clip_norm(model_.grads(), cfg_.opt.clip);
      const double lr = cfg_.opt.rate(step);
      adam_.step(model_.params(), model_.grads(), cfg_.opt, lr);
      ++done_since;
      const std::size_t s1 = step + 1;
      const bool last = s1 == cfg_.opt.steps;
      const bool do_eval = cfg_.eval_every && (s1 % cfg_.eval_every == 0 || last);
      const bool do_metrics = cfg_.metrics_every && (s1 % cfg_.metrics_every == 0 || last);
      const bool do_log = cfg_.log_every && (s1 % cfg_.log_every == 0 || last);
      if (do_log || do_eval || do_metrics) {
        const auto now = std::chrono::steady_clock::now();
        const double dt = std::chrono::duration<double>(now - tlast).count();
        tok_s = dt > 0 ? double(done_since * tokens_per_step) / dt : 0;
        record rec(s1);
        rec.add("loss", loss).add("lr", lr).add("grad_norm", gnorm).add("tokens_per_s", tok_s);
        if (do_eval) rec.add("val_loss", validation_loss());
        if (do_metrics) {
          const sink_report r = sinks();
          rec.add("sink_rate", r.sink_rate).add("alpha1", r.alpha1);
          if (Model::has_kv) rec.add("sink_star", r.sink_star).add("alpha_star", r.alpha_star);
        }
        rec.add("elapsed_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        if (log) log << rec.str() << "\n" << std::flush;
        if (!cfg_.quiet) {
          const double eta = tok_s > 0 ? double((cfg_.opt.steps - s1) * tokens_per_step) / tok_s : 0;
          std::fprintf(stderr, "step %zu/%zu  loss %.4f  lr %.2e  %.1fk tok/s  ETA %dm%02ds\n", s1, cfg_.opt.steps,
                       loss, lr, tok_s / 1000, int(eta) / 60, int(eta) % 60);
        }
        tlast = std::chrono::steady_clock::now();  // evaluation time is not training time
        done_since = 0;
      }
      const bool stop = cfg_.stop_at && s1 == cfg_.stop_at;
      if (!cfg_.ckpt_dir.empty() && ((cfg_.ckpt_every && s1 % cfg_.ckpt_every == 0) || last || stop)) save(s1);
      if (stop) break;
    }
    return 0;
  }

  const std::string& header() const { return header_; }
  adamw<float>& optimizer() { return adam_; }

 private:
  const run_config& cfg_;
  Model& model_;
  const dataset& data_;
  adamw<float> adam_;
  std::string header_, last_ckpt_;

  void save(std::size_t step) {
    checkpoint c;
    c.header = header_;
    c.step = step;
    c.adam_t = adam_.t;
    c.params = model_.params();
    c.m = adam_.m;
    c.v = adam_.v;
    last_ckpt_ = save_checkpoint(cfg_.ckpt_dir, c);
  }

  // Loads the newest checkpoint in --ckpt; refuses a bad one without touching anything.
  std::size_t restore() {
    if (cfg_.ckpt_dir.empty()) throw value_error("--resume", "needs --ckpt DIR");
    const auto files = list_checkpoints(cfg_.ckpt_dir);
    if (files.empty()) return 0;  // nothing to resume: start fresh
    checkpoint c = load_checkpoint(files.front(), header_);
    if (c.params.size() != model_.parameter_count())
      throw value_error("--resume", "'" + files.front() + "' holds " + std::to_string(c.params.size()) +
                                        " parameters, this model has " + std::to_string(model_.parameter_count()));
    if (c.step > cfg_.opt.steps)
      throw value_error("--steps", "the checkpoint is at step " + std::to_string(c.step) + ", past --steps");
    model_.params() = std::move(c.params);
    adam_.m = std::move(c.m);
    adam_.v = std::move(c.v);
    adam_.t = c.adam_t;
    last_ckpt_ = files.front();
    if (!cfg_.quiet) std::fprintf(stderr, "resumed from %s (step %llu)\n", files.front().c_str(), (unsigned long long)c.step);
    return c.step;
  }
};

}  // namespace attnsink::train
