// attnsink/error.hpp — typed exceptions for bad input.
//
// Every check happens before any output is written, so a thrown call leaves
// outputs and files untouched. Each exception names the offending argument.
#pragma once

#include <stdexcept>
#include <string>

namespace attnsink {

// Base of every attnsink error: what() reads "<argument>: <expected ...>".
class error : public std::runtime_error {
 public:
  error(std::string argument, const std::string& message)
      : std::runtime_error(argument + ": " + message), argument_(std::move(argument)) {}
  // The name of the argument (tensor, parameter, file or flag) that was wrong.
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

// A tensor's rank or extents do not fit the others.
class shape_error : public error {
 public:
  using error::error;
};

// A scalar or parameter value is outside what the policy accepts (e.g. a
// window < 1, a non-finite learnable parameter).
class value_error : public error {
 public:
  using error::error;
};

// A file could not be read or written, or holds the wrong dtype or shape.
class io_error : public error {
 public:
  using error::error;
};

}  // namespace attnsink
