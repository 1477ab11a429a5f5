// attnsink/mask.hpp — which keys each query row sees.
//
// Every mask here shows each query a contiguous key range [lo, hi), and both
// ends are non-decreasing in the query row: that is the contract a mask policy
// keeps, and what lets a backend classify a (query tile × key tile) block as
// fully visible, partly visible or skipped from the first and last rows alone.
// Queries are the last tq of tk positions: row i sits at position i + tk - tq.
//
// A mask policy is a plain struct:
//   using axis = axis::mask;  static constexpr const char* name;
//   key_range range(batch, row, tq, tk)     // [lo, hi) with 0 <= lo <= hi <= tk
//   bool is_causal() const                   // never shows a key after its query
//   void check(const problem&)
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "axis.hpp"

namespace attnsink {

struct key_range {
  std::size_t lo, hi;
};

template <class M>
concept mask_policy = std::same_as<typename M::axis, axis::mask> && requires(const M& m, std::size_t n,
                                                                            const problem& p) {
  { M::name } -> std::convertible_to<const char*>;
  { m.range(n, n, n, n) } -> std::same_as<key_range>;
  { m.is_causal() } -> std::convertible_to<bool>;
  m.check(p);
};

// Whether a (rows [r0, r1) × keys [j0, j1)) block is skipped, fully or partly visible.
enum class tile_visibility { skip, full, partial };

template <mask_policy M>
ATTNSINK_HD tile_visibility classify(const M& m, std::size_t b, std::size_t r0, std::size_t r1, std::size_t j0,
                                     std::size_t j1, std::size_t tq, std::size_t tk) {
  const key_range first = m.range(b, r0, tq, tk), last = m.range(b, r1 - 1, tq, tk);
  if (j1 <= first.lo || j0 >= last.hi) return tile_visibility::skip;
  if (j0 >= last.lo && j1 <= first.hi) return tile_visibility::full;
  return tile_visibility::partial;
}

namespace mask {

namespace detail {
// Position of query row i: queries end where keys end. Negative when tq > tk.
ATTNSINK_INLINE std::ptrdiff_t qpos(std::size_t row, std::size_t tq, std::size_t tk) {
  return std::ptrdiff_t(row) + std::ptrdiff_t(tk) - std::ptrdiff_t(tq);
}
ATTNSINK_INLINE std::size_t clamp(std::ptrdiff_t x, std::size_t tk) {
  return x < 0 ? 0 : (std::size_t(x) > tk ? tk : std::size_t(x));
}
}  // namespace detail

// Bidirectional: every key.
struct none {
  using axis = axis::mask;
  static constexpr const char* name = "none";
  ATTNSINK_HD key_range range(std::size_t, std::size_t, std::size_t, std::size_t tk) const { return {0, tk}; }
  ATTNSINK_HD bool is_causal() const { return false; }
  void check(const problem&) const {}
};

// Keys at or before the query's position.
struct causal {
  using axis = axis::mask;
  static constexpr const char* name = "causal";
  ATTNSINK_HD key_range range(std::size_t, std::size_t i, std::size_t tq, std::size_t tk) const {
    return {0, detail::clamp(detail::qpos(i, tq, tk) + 1, tk)};
  }
  ATTNSINK_HD bool is_causal() const { return true; }
  void check(const problem&) const {}
};

// Causal within the last `window` positions: keys p-w+1 .. p.
struct sliding_window {
  using axis = axis::mask;
  static constexpr const char* name = "sliding_window";
  std::ptrdiff_t window = 256;
  ATTNSINK_HD key_range range(std::size_t, std::size_t i, std::size_t tq, std::size_t tk) const {
    const std::ptrdiff_t p = detail::qpos(i, tq, tk);
    const std::size_t hi = detail::clamp(p + 1, tk);
    const std::size_t lo = detail::clamp(p - window + 1, tk);
    return {lo < hi ? lo : hi, hi};
  }
  ATTNSINK_HD bool is_causal() const { return true; }
  void check(const problem&) const {
    if (window < 1) throw value_error("window", "expected a window of at least 1, got " + std::to_string(window));
  }
};

// Prefix LM: the first `prefix` positions see each other both ways; later
// positions see everything up to themselves.
struct prefix_lm {
  using axis = axis::mask;
  static constexpr const char* name = "prefix_lm";
  std::size_t prefix = 0;
  ATTNSINK_HD key_range range(std::size_t, std::size_t i, std::size_t tq, std::size_t tk) const {
    const std::ptrdiff_t p = detail::qpos(i, tq, tk);
    if (p < 0) return {0, 0};
    const std::size_t hi = detail::clamp(p + 1, tk);
    return {0, hi > prefix ? hi : (prefix < tk ? prefix : tk)};
  }
  ATTNSINK_HD bool is_causal() const { return prefix <= 1; }
  void check(const problem& p) const {
    if (prefix > p.tk)
      throw value_error("prefix", "the prefix (" + std::to_string(prefix) + ") exceeds the sequence length (" +
                                      std::to_string(p.tk) + ")");
  }
};

// Packed documents, causal within each: `start[b·tk + t]` is the position at
// which the document holding position t of sequence b begins (see
// document_starts). Keys start(p) .. p.
struct document {
  using axis = axis::mask;
  static constexpr const char* name = "document";
  const std::int32_t* start = nullptr;
  ATTNSINK_HD key_range range(std::size_t b, std::size_t i, std::size_t tq, std::size_t tk) const {
    const std::ptrdiff_t p = detail::qpos(i, tq, tk);
    if (p < 0) return {0, 0};
    return {std::size_t(start[b * tk + std::size_t(p)]), detail::clamp(p + 1, tk)};
  }
  ATTNSINK_HD bool is_causal() const { return true; }
  void check(const problem& p) const {
    if (start == nullptr) throw value_error("mask.start", "expected document starts (batch × tokens)");
    for (std::size_t b = 0; b < p.batch; ++b)
      for (std::size_t t = 0; t < p.tk; ++t) {
        const std::int32_t s = start[b * p.tk + t];
        const std::int32_t prev = t ? start[b * p.tk + t - 1] : 0;
        if (s < prev || std::size_t(s) > t)
          throw value_error("mask.start", "document starts must be non-decreasing with start[t] <= t");
      }
  }
};

// Turns document ids per position (batch × tokens, equal ids = same document,
// documents contiguous) into the start positions mask::document reads.
inline std::vector<std::int32_t> document_starts(const std::int32_t* ids, std::size_t batch, std::size_t tokens) {
  std::vector<std::int32_t> start(batch * tokens);
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t t = 0; t < tokens; ++t)
      start[b * tokens + t] =
          (t > 0 && ids[b * tokens + t] == ids[b * tokens + t - 1]) ? start[b * tokens + t - 1] : std::int32_t(t);
  return start;
}

// A mask chosen at run time (the CLI's --mask): one type, so a variant is
// instantiated once whatever the mask. The per-row branch costs nothing in
// the inner loops, which see only key ranges.
struct dynamic {
  using axis = axis::mask;
  static constexpr const char* name = "dynamic";
  enum class kind { none, causal, window, prefix } which = kind::causal;
  std::size_t param = 0;  // the window or the prefix length

  ATTNSINK_HD key_range range(std::size_t b, std::size_t i, std::size_t tq, std::size_t tk) const {
    switch (which) {
      case kind::none: return mask::none{}.range(b, i, tq, tk);
      case kind::causal: return mask::causal{}.range(b, i, tq, tk);
      case kind::window: return sliding_window{std::ptrdiff_t(param)}.range(b, i, tq, tk);
      default: return prefix_lm{param}.range(b, i, tq, tk);
    }
  }
  ATTNSINK_HD bool is_causal() const {
    return which == kind::causal || which == kind::window || (which == kind::prefix && param <= 1);
  }
  void check(const problem& p) const {
    if (which == kind::window) sliding_window{std::ptrdiff_t(param)}.check(p);
    if (which == kind::prefix) prefix_lm{param}.check(p);
  }
};

}  // namespace mask
}  // namespace attnsink
