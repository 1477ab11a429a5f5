// The trainer: whole-model gradients by finite differences, overfitting,
// bit-exact resume, checkpoint refusal, data errors.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <attnsink/backend/cpu_backward.hpp>
#include <attnsink/cpu.hpp>
#include <attnsink/train/trainer.hpp>
#include <attnsink/variants.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "common.hpp"

using namespace attnsink;
using namespace attnsink::train;
namespace fs = std::filesystem;

namespace {

struct tempdir {
  fs::path path;
  tempdir() {
    static int n = 0;
    path = fs::temp_directory_path() / ("attnsink-train-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~tempdir() { fs::remove_all(path); }
  std::string operator/(const std::string& n) const { return (path / n).string(); }
};

// Fixed sequences whatever the step: what an overfit test needs.
class fixed_dataset : public dataset {
 public:
  fixed_dataset(std::size_t vocab, std::size_t count, std::size_t tokens, std::uint64_t seed) : vocab_(vocab) {
    std::mt19937_64 g(seed);
    std::uniform_int_distribution<std::int32_t> u(0, std::int32_t(vocab) - 1);
    seqs_.resize(count, std::vector<std::int32_t>(tokens + 1));
    for (auto& s : seqs_)
      for (auto& t : s) t = u(g);
  }
  std::size_t vocab() const override { return vocab_; }
  std::int32_t special() const override { return 0; }
  std::size_t base_vocab() const override { return vocab_; }
  std::string describe() const override { return "fixed"; }
  std::vector<std::int32_t> sequence(std::uint64_t, std::uint64_t, std::size_t i, std::size_t tokens, split) const override {
    const auto& s = seqs_[i % seqs_.size()];
    return {s.begin(), s.begin() + long(tokens + 1)};
  }

 private:
  std::size_t vocab_;
  std::vector<std::vector<std::int32_t>> seqs_;
};

model_config tiny(std::size_t vocab) {
  model_config c;
  c.vocab = vocab;
  c.layers = 2;
  c.d_model = 8;
  c.heads = 2;
  c.kv_heads = 2;
  c.ffn = 12;
  c.ctx = 6;
  return c;
}

// Random token ids and targets (B·T each, uniform over the vocabulary), drawn in that order from seed.
struct random_batch {
  std::vector<std::int32_t> ids, tg;
  random_batch(std::size_t n, std::size_t vocab, unsigned seed) : ids(n), tg(n) {
    std::mt19937 g(seed);
    std::uniform_int_distribution<std::int32_t> u(0, std::int32_t(vocab) - 1);
    for (auto& x : ids) x = u(g);
    for (auto& x : tg) x = u(g);
  }
};

// Central differences on a sample of every parameter group, over `B` sequences.
template <class V>
void gradient_check(model_config cfg, const char* what, std::size_t B = 2, double tol = 1e-6) {
  INFO(V::name << " " << what);
  variants::settings vs;
  vs.rope.enabled = cfg.rope;
  model<typename V::type, backend::reference, double> m(cfg, variants::make<V>(vs));
  m.init(7);
  for (auto& p : m.params()) p += 0.05 * std::sin(double(&p - m.params().data()));  // off the init's symmetries
  const std::size_t T = cfg.ctx;
  const random_batch batch(B * T, cfg.vocab, 3);
  const auto& ids = batch.ids;
  const auto& tg = batch.tg;
  const std::vector<std::uint8_t> mask;
  m.forward(ids, tg, mask, B, T);
  m.backward();
  const std::vector<double> an = m.grads();
  std::size_t checked = 0, bad = 0;
  double worst = 0;
  const std::size_t n = m.parameter_count(), stride = std::max<std::size_t>(1, n / 400);
  for (std::size_t i = 0; i < n; i += stride) {
    const double keep = m.params()[i], h = 1e-6;
    m.params()[i] = keep + h;
    const double lp = m.forward(ids, tg, mask, B, T);
    m.params()[i] = keep - h;
    const double lm = m.forward(ids, tg, mask, B, T);
    m.params()[i] = keep;
    const double fd = (lp - lm) / (2 * h);
    const double err = std::abs(fd - an[i]) / std::max(1.0, std::abs(fd));
    worst = std::max(worst, err);
    bad += err > tol;
    ++checked;
  }
  INFO("checked " << checked << " parameters of " << n << ", worst error " << worst);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("whole-model gradients match finite differences (double, 2 layers)", "[train][gradcheck]") {
  model_config c = tiny(11);
  c.rope = true;
  gradient_check<variants::softmax>(c, "pre-LN, SwiGLU, RoPE");
  model_config post = tiny(11);
  post.norm = norm_place::post;
  post.act = ffn_act::gelu;
  post.gate = true;
  post.pos = abs_pos::learned;
  gradient_check<variants::softmax>(post, "post-LN, GeLU, gate, learned positions");
  model_config kv = tiny(11);
  kv.learn_vstar = true;
  kv.kv_heads = 1;
  kv.act = ffn_act::geglu;
  gradient_check<variants::kv_bias>(kv, "kv_bias with learned v*, GQA, GeGLU");
  model_config sw = tiny(11);
  sw.pos = abs_pos::sinusoidal;
  sw.act = ffn_act::swish;
  gradient_check<variants::sink_logit>(sw, "sink logits, sinusoidal, Swish");
  gradient_check<variants::sigmoid>(tiny(11), "sigmoid");
  gradient_check<variants::t5_relative>(tiny(11), "learned T5 table");
}

// 400 sequences of 6 tokens: the products run in several row blocks and
// token chunks (blas.hpp), including a short last one.
TEST_CASE("whole-model gradients over 2400 tokens match finite differences (double)", "[train][gradcheck]") {
  model_config c = tiny(11);
  c.rope = true;
  gradient_check<variants::softmax>(c, "pre-LN, SwiGLU, RoPE, 2400 tokens", 400);
  model_config post = tiny(11);
  post.norm = norm_place::post;
  post.act = ffn_act::gelu;
  post.gate = true;
  post.kv_heads = 1;
  gradient_check<variants::softmax>(post, "post-LN, GeLU, gate, GQA, 2400 tokens", 400);
}

// The float model on the cpu backend (what training runs: strided q | k | v
// views, the forward's saved state reused by the attention backward, blocked
// products) against the double model on the reference backend, same weights.
template <class V>
void float_matches_double(model_config cfg, const char* what) {
  INFO(V::name << " " << what);
  variants::settings vs;
  vs.rope.enabled = cfg.rope;
  auto attn = variants::make<V>(vs);
  attn.mask = {mask::dynamic::kind::causal, 0};
  model<typename V::type, backend::cpu, float> mf(cfg, attn);
  model<typename V::type, backend::reference, double> md(cfg, attn);
  mf.init(5);
  for (std::size_t i = 0; i < mf.parameter_count(); ++i) {
    mf.params()[i] += 0.05f * float(std::sin(double(i)));  // off the init's symmetries
    md.params()[i] = double(mf.params()[i]);
  }
  const std::size_t B = 40, T = cfg.ctx;
  const random_batch batch(B * T, cfg.vocab, 9);
  const auto& ids = batch.ids;
  const auto& tg = batch.tg;
  const std::vector<std::uint8_t> mask;
  const double lf = mf.forward(ids, tg, mask, B, T), ld = md.forward(ids, tg, mask, B, T);
  std::fill(mf.grads().begin(), mf.grads().end(), std::numeric_limits<float>::quiet_NaN());
  mf.backward();
  md.backward();
  double gmax = 0, worst = 0;
  for (double x : md.grads()) gmax = std::max(gmax, std::abs(x));
  for (std::size_t i = 0; i < mf.parameter_count(); ++i) {
    const double e = std::abs(double(mf.grads()[i]) - md.grads()[i]);
    worst = std::isnan(e) ? e : std::max(worst, e);
    if (std::isnan(e)) break;
  }
  INFO("loss " << lf << " vs " << ld << "; largest gradient " << gmax << ", worst difference " << worst);
  CHECK(std::abs(lf - ld) <= 1e-5 * std::abs(ld));
  CHECK(worst <= 1e-5 * gmax);  // float arithmetic over 1280 tokens (measured: 6e-7)
}

TEST_CASE("float model on the cpu backend matches the double reference model", "[train][gradcheck]") {
  model_config c = tiny(11);
  c.d_model = 32;
  c.heads = 4;
  c.kv_heads = 4;
  c.ffn = 48;
  c.ctx = 32;
  c.rope = true;
  float_matches_double<variants::softmax>(c, "pre-LN, SwiGLU, RoPE");
  float_matches_double<variants::sigmoid>(c, "pre-LN, SwiGLU, RoPE");
  model_config post = c;
  post.norm = norm_place::post;
  post.act = ffn_act::geglu;
  post.gate = true;
  post.kv_heads = 2;
  float_matches_double<variants::kv_bias>(post, "post-LN, GeGLU, gate, GQA");
}

TEST_CASE("a tiny model overfits a few sequences", "[train][overfit]") {
  const fixed_dataset data(16, 4, 16, 5);
  auto overfit = [&](auto v) {
    using V = decltype(v);
    INFO(V::name);
    run_config cfg;
    cfg.model = tiny(16);
    cfg.model.d_model = 32;
    cfg.model.heads = 2;
    cfg.model.kv_heads = 2;
    cfg.model.ffn = 64;
    cfg.model.ctx = 16;
    cfg.model.rope = true;
    cfg.batch = 4;
    cfg.opt.lr = 1e-2;
    cfg.opt.warmup = 10;
    cfg.opt.weight_decay = 0;
    cfg.opt.steps = 250;
    cfg.eval_every = cfg.metrics_every = cfg.log_every = 0;
    cfg.quiet = true;
    variants::settings vs;
    vs.rope.enabled = true;
    model<typename V::type, backend::cpu, float> m(cfg.model, variants::make<V>(vs));
    m.init(1);
    trainer<decltype(m)> t(cfg, m, data);
    const batch b = data.make_batch(cfg.seed, 0, 4, 16, split::train, cfg.tr);
    const double before = m.forward(b.ids, b.targets, b.loss_mask, 4, 16);
    REQUIRE(t.run() == 0);
    const double after = m.forward(b.ids, b.targets, b.loss_mask, 4, 16);
    INFO("loss " << before << " -> " << after);
    CHECK(before > 2.0);
    CHECK(after < 0.05);
  };
  overfit(variants::softmax{});
  overfit(variants::sigmoid{});
  overfit(variants::kv_bias{});
}

namespace {
using resume_model = model<variants::softmax::type, backend::cpu, float>;

run_config resume_config(const std::string& dir, std::size_t steps) {
  run_config cfg;
  cfg.model = tiny(65);
  cfg.model.d_model = 16;
  cfg.model.ctx = 12;
  cfg.batch = 8;
  cfg.opt.steps = steps;
  cfg.opt.warmup = 3;
  cfg.opt.sched = schedule::cosine;
  cfg.eval_every = 4;
  cfg.metrics_every = 4;
  cfg.metric_sequences = 4;
  cfg.metric_tokens = 12;
  cfg.log_every = 0;
  cfg.ckpt_dir = dir;
  cfg.quiet = true;
  return cfg;
}

std::vector<float> train_steps(const run_config& cfg, const dataset& data, bool resume, std::size_t stop_at = 0) {
  run_config c = cfg;
  c.resume = resume;
  c.stop_at = stop_at;
  resume_model m(c.model, variants::make<variants::softmax>({}));
  m.init(c.seed);
  trainer<resume_model> t(c, m, data);
  REQUIRE(t.run() == 0);
  return m.params();
}
}  // namespace

TEST_CASE("resume after an interruption reproduces the run bit for bit", "[train][resume]") {
  const bigram_backcopy data;
  tempdir a, b;
  const std::vector<float> straight = train_steps(resume_config(a.path.string(), 16), data, false);
  const std::vector<float> half = train_steps(resume_config(b.path.string(), 16), data, false, 7);  // "killed" at 7
  const std::vector<float> resumed = train_steps(resume_config(b.path.string(), 16), data, true);
  REQUIRE(straight.size() == resumed.size());
  CHECK(half != straight);
  CHECK(std::memcmp(straight.data(), resumed.data(), straight.size() * sizeof(float)) == 0);
  CHECK(list_checkpoints(b.path.string()).size() == 2);  // steps 7 and 16
}

TEST_CASE("bad checkpoints are refused and nothing is overwritten", "[train][resume][errors]") {
  const bigram_backcopy data;
  tempdir d;
  train_steps(resume_config(d.path.string(), 4), data, false);
  const std::string file = list_checkpoints(d.path.string()).front();
  std::string good;
  {
    std::ifstream in(file, std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto expect_refused = [&](const std::string& bytes, const run_config& cfg, const std::string& text) {
    { std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes; }
    INFO(text);
    resume_model m(cfg.model, variants::make<variants::softmax>({}));
    m.init(cfg.seed);
    run_config c = cfg;
    c.resume = true;
    trainer<resume_model> t(c, m, data);
    try {
      t.run();
      FAIL("no exception");
    } catch (const error& e) {
      CHECK_THAT(e.what(), Catch::Matchers::ContainsSubstring(text));
    }
    std::ifstream in(file, std::ios::binary);
    CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == bytes);  // untouched
    CHECK(list_checkpoints(d.path.string()).size() == 1);
  };
  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 0x40;
  expect_refused(flipped, resume_config(d.path.string(), 8), "checksum mismatch");
  expect_refused(good.substr(0, good.size() - 100), resume_config(d.path.string(), 8), "checksum mismatch");
  expect_refused(good.substr(0, 5), resume_config(d.path.string(), 8), "not an attnsink checkpoint");
  run_config other = resume_config(d.path.string(), 8);
  other.model.d_model = 24;
  expect_refused(good, other, "belongs to another run");
}

TEST_CASE("a non-finite loss stops the run and keeps the last good checkpoint", "[train][errors]") {
  const bigram_backcopy data;
  tempdir d;
  run_config cfg = resume_config(d.path.string(), 4);
  resume_model m(cfg.model, variants::make<variants::softmax>({}));
  m.init(1);
  {
    trainer<resume_model> t(cfg, m, data);
    REQUIRE(t.run() == 0);
  }
  const auto before = list_checkpoints(d.path.string());
  m.params()[5] = std::nanf("");
  run_config more = cfg;
  more.opt.steps = 8;
  trainer<resume_model> t2(more, m, data);
  CHECK(t2.run() == 3);
  CHECK(list_checkpoints(d.path.string()) == before);
  CHECK_NOTHROW(load_checkpoint(before.front()));
}

TEST_CASE("data: text files, fortune entries, Bigram-Backcopy, transforms, errors", "[train][data]") {
  tempdir d;
  { std::ofstream(d / "empty.txt"); }
  CHECK_THROWS_AS(text_dataset({d / "missing.txt"}, 8), io_error);
  CHECK_THROWS_AS(text_dataset({d / "empty.txt"}, 8), io_error);
  CHECK_THROWS_AS(text_dataset({}, 8), value_error);
  { std::ofstream(d / "short.txt") << "tiny"; }
  CHECK_THROWS_AS(text_dataset({d / "short.txt"}, 64), value_error);
  {
    std::ofstream f(d / "fortunes");
    for (int i = 0; i < 20; ++i) f << "fortune number " << i << " says hello\n%\n";
  }
  const text_dataset t({d / "fortunes"}, 16);
  CHECK(t.vocab() == 257);
  const batch b = t.make_batch(1, 0, 3, 16, split::train, {});
  for (std::size_t i = 0; i < b.ids.size(); ++i) {
    CHECK(b.ids[i] != '%');  // separators are not text
    if (i % 16 != 15) CHECK(b.targets[i] == b.ids[i + 1]);
  }
  CHECK(std::count(b.ids.begin(), b.ids.end(), text_dataset::eod) > 0);

  const bigram_backcopy bb;
  const batch s = bb.make_batch(2, 5, 16, 32, split::train, {});
  std::size_t copies = 0;
  for (std::size_t i = 0; i < 16; ++i) {
    CHECK(s.ids[i * 32] == bigram_backcopy::first);
    for (std::size_t t2 = 2; t2 < 32; ++t2)
      if (bigram_backcopy::is_trigger(s.ids[i * 32 + t2 - 1])) {
        CHECK(s.ids[i * 32 + t2] == s.ids[i * 32 + t2 - 2]);
        ++copies;
      }
  }
  CHECK(copies > 0);
  // Same (seed, step): same batch; another step: another batch.
  CHECK(bb.make_batch(2, 5, 16, 32, split::train, {}).ids == s.ids);
  CHECK(bb.make_batch(2, 6, 16, 32, split::train, {}).ids != s.ids);
  transforms tr;
  tr.fix_pos = 3;
  tr.rand_begin = 5;
  tr.rand_end = 9;
  tr.prefix_lm = 4;
  const batch x = bb.make_batch(2, 5, 16, 32, split::train, tr);
  for (std::size_t i = 0; i < 16; ++i) {
    CHECK(x.ids[i * 32 + 3] == bb.special());
    CHECK(x.targets[i * 32 + 2] == bb.special());
    CHECK(x.loss_mask[i * 32 + 3] == 0);
    CHECK(x.loss_mask[i * 32 + 4] == 1);
  }
}
