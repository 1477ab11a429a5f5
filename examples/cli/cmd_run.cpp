// attnsink run / attnsink list
#include <attnsink/cpu.hpp>

#include <cstdio>

#include "common.hpp"

namespace attnsink::cli {
namespace {

template <class T>
int run_typed(const args& a, const std::string& backend_name) {
  const std::string variant = a.get("--variant");
  const npy::array<T> qa = npy::read<T>(a.get("--q"), "--q"), ka = npy::read<T>(a.get("--k"), "--k"),
                      va = npy::read<T>(a.get("--v"), "--v");
  const auto q = view4(qa, "--q"), k = view4(ka, "--k"), v = view4(va, "--v");
  const std::string out_path = a.get("--out");
  std::map<std::string, param_file> files;
  const variants::settings s = read_settings(a, files);
  if (a.has("--probs") && backend_name != "reference")
    throw value_error("--probs", "the weights come from the reference backend only (add --backend reference)");

  xt::xarray<T> out = xt::zeros<T>({q.batch, q.heads, q.tokens, v.dim});
  xt::xarray<T> m = xt::zeros<T>({q.batch, q.heads, q.tokens}), l = m;
  xt::xarray<T> probs;
  tensor4<T> o(out.data(), q.batch, q.heads, q.tokens, v.dim);
  row_stats<T> st{m.data(), l.data()};
  const bool found = variants::visit(variant, s, [&](const auto& attn) {
    using A = std::decay_t<decltype(attn)>;
    if (backend_name == "reference") {
      probs_view<T> pv;
      if (a.has("--probs")) {
        probs = xt::zeros<T>({q.batch, q.heads, q.tokens, k.tokens + (A::bias_type::has_kv ? 1 : 0)});
        pv.data = probs.data();
      }
      forward(backend::reference{}, attn, q, k, v, o, st, pv);
    } else {
      forward(backend::cpu{}, attn, q, k, v, o, st);
    }
  });
  if (!found) throw value_error("--variant", "unknown variant '" + variant + "'; one of: " + variants::names());

  // Everything computed: only now touch the output files.
  const npy::dtype as = qa.stored;
  npy::write(out_path, "--out", out, as);
  if (a.has("--lse")) {
    xt::xarray<T> lse = m + xt::log(l);
    npy::write(a.get("--lse"), "--lse", lse, as);
  }
  if (a.has("--stats")) {
    xt::xarray<T> both = xt::stack(xt::xtuple(m, l), 3);
    npy::write(a.get("--stats"), "--stats", both, as);
  }
  if (a.has("--probs")) npy::write(a.get("--probs"), "--probs", probs, as);
  return 0;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  std::vector<std::string> valued = variant_flags();
  for (const char* f : {"--q", "--k", "--v", "--out", "--backend", "--lse", "--stats", "--probs"}) valued.push_back(f);
  const args a = parse(argc, argv, {"--rope"}, valued);
  const std::string backend = a.has("--backend") ? a.get("--backend") : "cpu";
  if (backend == "reference") return run_typed<double>(a, backend);
  if (backend == "cpu") return run_typed<float>(a, backend);
  throw value_error("--backend", "expected reference or cpu, got '" + backend + "'");
}

int cmd_list(int, char**) {
  std::printf("%-28s %s\n", "variant", "formula (s = score; j runs over the keys a query sees)");
  variants::for_each([](auto v) { std::printf("%-28s %s\n", decltype(v)::name, decltype(v)::formula); });
  std::printf("\nEvery variant takes --rope (RoPE, rotate-half, base 10000, positions 0..T-1; k* is never rotated)\n"
              "and --mask causal|none|window:W|prefix:P.\n");
  return 0;
}

}  // namespace attnsink::cli
