// attnsink/tensor.hpp — non-owning views of (batch, heads, tokens, dim) tensors.
//
// The last extent is contiguous; the other three have element strides, so a
// view can address a slice of a larger buffer (a KV cache of capacity C
// holding n valid tokens is a view with tokens = n and stride_h = C·dim).
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>

#include "config.hpp"

namespace attnsink {

template <class T>
struct tensor4 {
  T* data = nullptr;
  std::size_t batch = 0, heads = 0, tokens = 0, dim = 0;
  std::size_t stride_b = 0, stride_h = 0, stride_t = 0;

  tensor4() = default;
  // A contiguous row-major (batch, heads, tokens, dim) tensor.
  ATTNSINK_HD tensor4(T* p, std::size_t b, std::size_t h, std::size_t t, std::size_t d)
      : data(p), batch(b), heads(h), tokens(t), dim(d),
        stride_b(h * t * d), stride_h(t * d), stride_t(d) {}
  ATTNSINK_HD tensor4(T* p, std::size_t b, std::size_t h, std::size_t t, std::size_t d,
                      std::size_t sb, std::size_t sh, std::size_t st)
      : data(p), batch(b), heads(h), tokens(t), dim(d), stride_b(sb), stride_h(sh), stride_t(st) {}
  // A view of the same memory with const elements.
  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  ATTNSINK_HD operator tensor4<const U>() const {
    return {data, batch, heads, tokens, dim, stride_b, stride_h, stride_t};
  }

  ATTNSINK_HD T* row(std::size_t b, std::size_t h, std::size_t t) const {
    return data + b * stride_b + h * stride_h + t * stride_t;
  }
  ATTNSINK_HD std::size_t size() const { return batch * heads * tokens * dim; }
  ATTNSINK_HD bool empty() const { return size() == 0; }
  std::array<std::size_t, 4> shape() const { return {batch, heads, tokens, dim}; }
};

// Per-row normalizer state that a forward pass keeps for the backward pass and
// the streaming sink metrics: for row (b, h, i) the final running maximum m and
// the denominator l (both in the normalization's own convention, see norm.hpp;
// for the softmax family lse = m + log l). Contiguous (batch, heads, tokens).
template <class T>
struct row_stats {
  T* max = nullptr;
  T* sum = nullptr;
  ATTNSINK_HD bool empty() const { return max == nullptr && sum == nullptr; }
};

}  // namespace attnsink
