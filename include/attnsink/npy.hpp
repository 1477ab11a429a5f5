// attnsink/npy.hpp — .npy reading and writing with typed errors (link attnsink::io).
//
// Reads float32 / float64 C-order arrays through xtensor's npy reader and
// converts them to the element type asked for; anything else (missing file,
// truncated data, another dtype, Fortran order, a wrong rank) is an io_error or
// shape_error naming the argument. Writes go to a temporary file renamed into
// place, so a failed write leaves an existing file untouched.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xnpy.hpp>

#include "error.hpp"

namespace attnsink::npy {

enum class dtype { float32, float64 };

template <class T>
struct array {
  xt::xarray<T> data;
  dtype stored = dtype::float32;  // the dtype the file held
};

// Reads `path` (named `argument` in errors) as T, from float32 or float64 data.
template <class T>
array<T> read(const std::string& path, const std::string& argument) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) throw io_error(argument, "cannot open '" + path + "'");
  std::error_code ec;
  const auto file_size = std::filesystem::file_size(path, ec);
  auto load = [&] {
    try {
      return xt::detail::load_npy_file(stream);
    } catch (const std::exception& e) {
      throw io_error(argument, "'" + path + "' is not a readable .npy file (" + e.what() + ")");
    }
  };
  xt::detail::npy_file file = load();
  if (!stream || (!ec && std::uintmax_t(stream.tellg()) > file_size))
    throw io_error(argument, "'" + path + "' is truncated: its header promises more data than it holds");
  if (file.m_fortran_order) throw io_error(argument, "'" + path + "' is in Fortran order; expected C order");
  array<T> out;
  if (file.m_typestring == "<f4") {
    out.stored = dtype::float32;
    auto a = file.cast<float>(true);
    out.data = xt::cast<T>(a);
  } else if (file.m_typestring == "<f8") {
    out.stored = dtype::float64;
    auto a = file.cast<double>(true);
    out.data = xt::cast<T>(a);
  } else {
    throw io_error(argument, "'" + path + "' holds dtype " + file.m_typestring + "; expected float32 (<f4) or float64 (<f8)");
  }
  return out;
}

// Checks that a read array has `rank` dimensions; `what` describes them.
template <class T>
void require_rank(const array<T>& a, std::size_t rank, const std::string& argument, const std::string& what) {
  if (a.data.dimension() != rank) {
    std::string shape = "(";
    for (std::size_t i = 0; i < a.data.dimension(); ++i) shape += (i ? ", " : "") + std::to_string(a.data.shape()[i]);
    throw shape_error(argument, "expected " + std::to_string(rank) + " dimensions " + what + ", got shape " + shape + ")");
  }
}

// Writes `a` to `path` as `as` (float32 or float64), atomically.
template <class E>
void write(const std::string& path, const std::string& argument, const E& a, dtype as) {
  const std::string tmp = path + ".tmp-attnsink";
  try {
    if (as == dtype::float32) {
      xt::xarray<float> f = xt::cast<float>(a);
      xt::dump_npy(tmp, f);
    } else {
      xt::xarray<double> f = xt::cast<double>(a);
      xt::dump_npy(tmp, f);
    }
  } catch (const std::exception& e) {
    std::remove(tmp.c_str());
    throw io_error(argument, "cannot write '" + path + "' (" + e.what() + ")");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw io_error(argument, "cannot write '" + path + "' (" + ec.message() + ")");
  }
}

}  // namespace attnsink::npy
