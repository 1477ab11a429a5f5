// attnsink/axis.hpp — the five axes an attention operator is composed of, and
// the small pieces every policy header shares.
#pragma once

#include <cstddef>
#include <string>

#include "config.hpp"
#include "error.hpp"

namespace attnsink {

// Each policy names its axis with a nested `using axis = axis::X;`, which lets
// attention_of<...> place policies given in any order.
namespace axis {
struct score {};
struct norm {};
struct bias {};
struct pos {};
struct mask {};
}  // namespace axis

// A learnable parameter array held by reference: float or double elements,
// in host or device memory (whichever the backend runs on). Read as double.
struct param_ref {
  const float* f32 = nullptr;
  const double* f64 = nullptr;
  std::size_t size = 0;

  param_ref() = default;
  ATTNSINK_HD param_ref(const float* p, std::size_t n) : f32(p), size(n) {}
  ATTNSINK_HD param_ref(const double* p, std::size_t n) : f64(p), size(n) {}

  ATTNSINK_HD bool empty() const { return f32 == nullptr && f64 == nullptr; }
  ATTNSINK_HD double operator[](std::size_t i) const { return f64 ? f64[i] : double(f32[i]); }

  // Host-side check, used by policies' check(): size and finiteness.
  void check(const char* argument, std::size_t expected) const {
    if (empty()) throw value_error(argument, "expected " + std::to_string(expected) + " values, got none");
    if (size != expected)
      throw shape_error(argument, "expected " + std::to_string(expected) + " values, got " + std::to_string(size));
    for (std::size_t i = 0; i < size; ++i)
      if (!math::isfinite((*this)[i]))
        throw value_error(argument, "every value must be finite; element " + std::to_string(i) + " is not");
  }
};

// The extents of one attention call, handed to every policy's check().
struct problem {
  std::size_t batch, heads, kv_heads, tq, tk, dim, vdim;
};

// Where one score s_ij sits: passed to bias policies.
struct site {
  std::size_t batch, head, heads;  // query head and the number of query heads
  std::ptrdiff_t qpos, kpos;       // absolute positions (queries end where keys end)
  std::size_t qrow, tq, tk;        // row index into q, and the extents
  bool causal;                     // the mask never shows a key after the query
};

}  // namespace attnsink
