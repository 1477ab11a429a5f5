// attnsink/train/checkpoint.hpp — checkpoints that a crash cannot corrupt.
//
// A checkpoint is one binary file: a magic string, a header line (variant,
// model and optimizer settings, data description, seed), the step, the
// parameters, AdamW's moments and step count, and an FNV-1a checksum of all
// of it. It is written to a temporary file and renamed into place, so a
// reader sees either the old file or the whole new one. load() refuses a
// truncated, corrupted or mismatched file and changes nothing then.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../error.hpp"

namespace attnsink::train {

struct checkpoint {
  std::string header;  // must match the run that loads it
  std::uint64_t step = 0, adam_t = 0;
  std::vector<float> params, m, v;
};

namespace ckpt_detail {
inline constexpr char magic[8] = {'A', 'T', 'S', 'N', 'K', 'C', 'K', '1'};
inline std::uint64_t fnv1a(const std::string& bytes) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}
template <class T>
void put(std::string& s, const T& x) {
  s.append(reinterpret_cast<const char*>(&x), sizeof(T));
}
inline void put_vec(std::string& s, const std::vector<float>& v) {
  put(s, std::uint64_t(v.size()));
  s.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}
struct reader {
  const std::string& s;
  std::size_t pos = 0;
  const std::string& path;
  template <class T>
  T get() {
    need(sizeof(T));
    T x;
    std::memcpy(&x, s.data() + pos, sizeof(T));
    pos += sizeof(T);
    return x;
  }
  std::vector<float> get_vec() {
    const auto n = get<std::uint64_t>();
    if (n > (s.size() - pos) / sizeof(float)) throw io_error("--ckpt", "'" + path + "' is truncated");
    std::vector<float> v(n);
    std::memcpy(v.data(), s.data() + pos, n * sizeof(float));
    pos += n * sizeof(float);
    return v;
  }
  void need(std::size_t n) const {
    if (pos + n > s.size()) throw io_error("--ckpt", "'" + path + "' is truncated");
  }
};
}  // namespace ckpt_detail

// Writes `c` to dir/ckpt-<step>.bin atomically; returns the path.
inline std::string save_checkpoint(const std::string& dir, const checkpoint& c) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw io_error("--ckpt", "cannot create directory '" + dir + "': " + ec.message());
  std::string body(ckpt_detail::magic, 8);
  ckpt_detail::put(body, std::uint64_t(c.header.size()));
  body += c.header;
  ckpt_detail::put(body, c.step);
  ckpt_detail::put(body, c.adam_t);
  ckpt_detail::put_vec(body, c.params);
  ckpt_detail::put_vec(body, c.m);
  ckpt_detail::put_vec(body, c.v);
  ckpt_detail::put(body, ckpt_detail::fnv1a(body));
  char name[64];
  std::snprintf(name, sizeof name, "ckpt-%08llu.bin", static_cast<unsigned long long>(c.step));
  const std::string path = (fs::path(dir) / name).string(), tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(body.data(), std::streamsize(body.size()));
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      throw io_error("--ckpt", "cannot write '" + tmp + "'");
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw io_error("--ckpt", "cannot rename '" + tmp + "' to '" + path + "'");
  }
  return path;
}

// Reads and verifies one checkpoint file. `expected_header` (if not empty)
// must equal the stored header.
inline checkpoint load_checkpoint(const std::string& path, const std::string& expected_header = {}) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error("--ckpt", "cannot open '" + path + "'");
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (s.size() < 16 || std::memcmp(s.data(), ckpt_detail::magic, 8) != 0)
    throw io_error("--ckpt", "'" + path + "' is not an attnsink checkpoint");
  std::uint64_t stored;
  std::memcpy(&stored, s.data() + s.size() - 8, 8);
  if (ckpt_detail::fnv1a(s.substr(0, s.size() - 8)) != stored)
    throw io_error("--ckpt", "'" + path + "' is corrupted or truncated (checksum mismatch)");
  ckpt_detail::reader r{s, 8, path};
  checkpoint c;
  const auto hn = r.get<std::uint64_t>();
  r.need(hn);
  c.header = s.substr(r.pos, hn);
  r.pos += hn;
  if (!expected_header.empty() && c.header != expected_header)
    throw value_error("--resume", "'" + path + "' belongs to another run: it holds [" + c.header +
                                      "] but this run is [" + expected_header + "]");
  c.step = r.get<std::uint64_t>();
  c.adam_t = r.get<std::uint64_t>();
  c.params = r.get_vec();
  c.m = r.get_vec();
  c.v = r.get_vec();
  if (c.m.size() != c.params.size() || c.v.size() != c.params.size())
    throw io_error("--ckpt", "'" + path + "' has optimizer state of the wrong size");
  return c;
}

// The checkpoint files in dir, newest step first.
inline std::vector<std::string> list_checkpoints(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("ckpt-", 0) == 0 && e.path().extension() == ".bin") out.push_back(e.path().string());
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

}  // namespace attnsink::train
