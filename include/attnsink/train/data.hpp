// attnsink/train/data.hpp — token streams for the trainer.
//
// Byte-level text: every byte is a token, 256 is end-of-document; documents
// are packed back to back (no BOS) and training windows are cut at random
// offsets. Files in fortune format (entries separated by lines holding only
// "%") give one document per entry; any other file is one document. The last
// tenth of the documents is the validation split.
//
// Bigram-Backcopy (Guo et al. 2024): 64 tokens whose successors follow a
// random bigram table (rows ~ Dirichlet(0.3)), except after one of three
// trigger tokens, where the token before the trigger is copied; every
// sequence starts with a fixed extra token (id 64).
//
// Batches depend only on (seed, step, split), so a resumed run sees exactly
// the batches the uninterrupted run saw.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../error.hpp"

namespace attnsink::train {

// One batch: ids (batch × tokens), next-token targets, and the loss mask.
struct batch {
  std::size_t size = 0, tokens = 0;
  std::vector<std::int32_t> ids, targets;
  std::vector<std::uint8_t> loss_mask;  // empty: every position counts
};

// The paper's data transforms, applied to every sequence.
struct transforms {
  long fix_pos = -1;             // position of a fixed token (-1: none)
  std::int32_t fix_id = -1;      // its id (-1: the dataset's special token)
  long rand_begin = -1, rand_end = -1;  // positions [begin, end) get uniform random tokens
  std::size_t prefix_lm = 0;     // no loss on the first p positions
};

enum class split { train, validation };

class dataset {
 public:
  virtual ~dataset() = default;
  virtual std::size_t vocab() const = 0;
  virtual std::int32_t special() const = 0;  // end-of-document, or the fixed first token
  virtual std::size_t base_vocab() const = 0;  // ids random tokens are drawn from: [0, base)
  virtual std::string describe() const = 0;
  // tokens + 1 consecutive tokens for sequence `index` of (seed, step, split).
  virtual std::vector<std::int32_t> sequence(std::uint64_t seed, std::uint64_t step, std::size_t index,
                                             std::size_t tokens, split s) const = 0;

  batch make_batch(std::uint64_t seed, std::uint64_t step, std::size_t size, std::size_t tokens, split s,
                   const transforms& tr) const {
    batch b;
    b.size = size;
    b.tokens = tokens;
    b.ids.resize(size * tokens);
    b.targets.resize(size * tokens);
    std::mt19937_64 gen(mix(seed ^ 0xA5A5, step, 7, s));
    std::uniform_int_distribution<std::int32_t> uni(0, std::int32_t(base_vocab()) - 1);
    for (std::size_t i = 0; i < size; ++i) {
      std::vector<std::int32_t> seq = sequence(seed, step, i, tokens, s);
      if (tr.fix_pos >= 0 && std::size_t(tr.fix_pos) <= tokens) seq[tr.fix_pos] = tr.fix_id >= 0 ? tr.fix_id : special();
      for (long p = std::max(tr.rand_begin, 0L); p < tr.rand_end && std::size_t(p) <= tokens; ++p) seq[p] = uni(gen);
      std::copy(seq.begin(), seq.begin() + long(tokens), b.ids.begin() + long(i * tokens));
      std::copy(seq.begin() + 1, seq.end(), b.targets.begin() + long(i * tokens));
    }
    if (tr.prefix_lm > 0) {
      b.loss_mask.assign(size * tokens, 1);
      for (std::size_t i = 0; i < size; ++i)
        for (std::size_t t = 0; t < std::min(tr.prefix_lm, tokens); ++t) b.loss_mask[i * tokens + t] = 0;
    }
    return b;
  }

 protected:
  static std::uint64_t mix(std::uint64_t seed, std::uint64_t step, std::uint64_t index, split s) {
    std::uint64_t h = seed * 0x9E3779B97F4A7C15ull + step * 0xBF58476D1CE4E5B9ull + index * 0x94D049BB133111EBull +
                      (s == split::validation ? 0x5851F42D4C957F2Dull : 0);
    h ^= h >> 31;
    h *= 0xD6E8FEB86659FD93ull;
    return h ^ (h >> 32);
  }
};

class text_dataset : public dataset {
 public:
  static constexpr std::int32_t eod = 256;

  // Reads the files; throws io_error for a missing or empty file, value_error
  // when the text is too short to cut `min_tokens`-token windows from each split.
  text_dataset(const std::vector<std::string>& files, std::size_t min_tokens) {
    if (files.empty()) throw value_error("--data", "expected at least one text file");
    std::vector<std::vector<std::int32_t>> docs;
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      if (!in) throw io_error("--data", "cannot open '" + f + "'");
      std::stringstream ss;
      ss << in.rdbuf();
      const std::string text = ss.str();
      if (text.empty()) throw io_error("--data", "'" + f + "' is empty");
      split_documents(text, docs);
      names_ += (names_.empty() ? "" : ", ") + std::filesystem::path(f).filename().string();
    }
    if (docs.size() == 1) {  // one document: split it by bytes instead
      auto& d = docs[0];
      const std::size_t cut = d.size() * 9 / 10;
      std::vector<std::int32_t> tail(d.begin() + long(cut), d.end());
      d.resize(cut);
      docs.push_back(std::move(tail));
    }
    const std::size_t nval = std::max<std::size_t>(1, docs.size() / 10);
    for (std::size_t i = 0; i < docs.size(); ++i) {
      auto& dst = i + nval < docs.size() ? train_ : val_;
      dst.insert(dst.end(), docs[i].begin(), docs[i].end());
      dst.push_back(eod);
    }
    for (const auto* s : {&train_, &val_})
      if (s->size() < min_tokens + 2)
        throw value_error("--data", "too little text: a split holds " + std::to_string(s->size()) +
                                        " tokens, a window needs " + std::to_string(min_tokens + 1));
  }

  std::size_t vocab() const override { return 257; }
  std::int32_t special() const override { return eod; }
  std::size_t base_vocab() const override { return 256; }
  std::string describe() const override {
    return "text (" + names_ + "): " + std::to_string(train_.size()) + " train / " + std::to_string(val_.size()) +
           " validation tokens";
  }
  std::size_t train_tokens() const { return train_.size(); }

  std::vector<std::int32_t> sequence(std::uint64_t seed, std::uint64_t step, std::size_t index, std::size_t tokens,
                                     split s) const override {
    const auto& src = s == split::train ? train_ : val_;
    std::mt19937_64 gen(mix(seed, step, index, s));
    const std::size_t off = std::uniform_int_distribution<std::size_t>(0, src.size() - tokens - 1)(gen);
    return {src.begin() + long(off), src.begin() + long(off + tokens + 1)};
  }

 private:
  std::vector<std::int32_t> train_, val_;
  std::string names_;

  static void split_documents(const std::string& text, std::vector<std::vector<std::int32_t>>& docs) {
    std::vector<std::int32_t> cur;
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size() - 1;
      const std::string_view line(text.data() + pos, end - pos);
      if (line == "%") {
        if (!cur.empty()) docs.push_back(std::move(cur));
        cur.clear();
      } else {
        for (std::size_t i = pos; i <= end; ++i) cur.push_back(std::int32_t(static_cast<unsigned char>(text[i])));
      }
      pos = end + 1;
    }
    if (!cur.empty()) docs.push_back(std::move(cur));
  }
};

class bigram_backcopy : public dataset {
 public:
  static constexpr std::size_t base = 64;
  static constexpr std::int32_t first = 64;  // the fixed extra first token
  static constexpr std::int32_t triggers[3] = {0, 1, 2};

  // The bigram table comes from `table_seed`, fixed per dataset.
  explicit bigram_backcopy(std::uint64_t table_seed = 1234, double alpha = 0.3) : table_(base * base) {
    std::mt19937_64 gen(table_seed);
    std::gamma_distribution<double> gamma(alpha, 1.0);
    for (std::size_t r = 0; r < base; ++r) {
      double sum = 0;
      for (std::size_t c = 0; c < base; ++c) sum += table_[r * base + c] = gamma(gen) + 1e-12;
      double acc = 0;
      for (std::size_t c = 0; c < base; ++c) table_[r * base + c] = acc += table_[r * base + c] / sum;
    }
  }
  std::size_t vocab() const override { return base + 1; }
  std::int32_t special() const override { return first; }
  std::size_t base_vocab() const override { return base; }
  std::string describe() const override { return "Bigram-Backcopy (64 tokens, 3 triggers, Dirichlet(0.3))"; }
  static bool is_trigger(std::int32_t t) { return t >= 0 && t < 3; }

  std::vector<std::int32_t> sequence(std::uint64_t seed, std::uint64_t step, std::size_t index, std::size_t tokens,
                                     split s) const override {
    std::mt19937_64 gen(mix(seed, step, index, s));
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<std::int32_t> seq(tokens + 1);
    seq[0] = first;
    // The first real token is never a trigger (there would be nothing to copy).
    seq[1] = std::int32_t(3 + std::uniform_int_distribution<int>(0, int(base) - 4)(gen));
    for (std::size_t t = 2; t <= tokens; ++t) {
      const std::int32_t prev = seq[t - 1];
      if (is_trigger(prev)) {
        seq[t] = seq[t - 2];
      } else {
        const double x = u(gen);
        const double* row = table_.data() + std::size_t(prev) * base;
        seq[t] = std::int32_t(std::lower_bound(row, row + base, x) - row);
        if (seq[t] >= std::int32_t(base)) seq[t] = std::int32_t(base) - 1;
      }
    }
    return seq;
  }

 private:
  std::vector<double> table_;  // cumulative rows
};

}  // namespace attnsink::train
