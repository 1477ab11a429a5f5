// attnsink grad: gradients of a named variant with respect to q, k, v and its
// learnable parameters, given dO = dL/d out.
#include <attnsink/backend/cpu_backward.hpp>
#include <attnsink/backend/reference_backward.hpp>
#include <attnsink/cpu.hpp>

#include "common.hpp"

namespace attnsink::cli {
namespace {

template <class T>
int grad_typed(const args& a, const std::string& backend_name) {
  const std::string variant = a.get("--variant");
  const npy::array<T> qa = npy::read<T>(a.get("--q"), "--q"), ka = npy::read<T>(a.get("--k"), "--k"),
                      va = npy::read<T>(a.get("--v"), "--v"), ga = npy::read<T>(a.get("--dout"), "--dout");
  const auto q = view4(qa, "--q"), k = view4(ka, "--k"), v = view4(va, "--v"), dout = view4(ga, "--dout");
  const std::string dq_path = a.get("--dq"), dk_path = a.get("--dk"), dv_path = a.get("--dv");
  std::map<std::string, param_file> files;
  const variants::settings s = read_settings(a, files);

  xt::xarray<T> dq = xt::zeros<T>(qa.data.shape()), dk = xt::zeros<T>(ka.data.shape()),
                dv = xt::zeros<T>(va.data.shape());
  gradients<T> g{{dq.data(), q.batch, q.heads, q.tokens, q.dim},
                 {dk.data(), k.batch, k.heads, k.tokens, k.dim},
                 {dv.data(), v.batch, v.heads, v.tokens, v.dim}};
  // Each requested parameter gradient has the shape of the parameter file it belongs to.
  struct wanted {
    const char* flag;   // output
    const char* param;  // the input it is the gradient of
    T* param_grads<T>::*field;
    xt::xarray<T> data;
  };
  std::vector<wanted> outs = {{"--dsink", "--sink", &param_grads<T>::sink, {}},
                              {"--dkstar", "--kstar", &param_grads<T>::kstar, {}},
                              {"--dvstar", "--vstar", &param_grads<T>::vstar, {}},
                              {"--dt5-table", "--t5-table", &param_grads<T>::bias, {}}};
  for (wanted& w : outs) {
    if (!a.has(w.flag)) continue;
    if (!a.has(w.param))
      throw value_error(w.flag, std::string("is the gradient of ") + w.param + ", which was not given");
    w.data = xt::zeros<T>(files.at(w.param).a.data.shape());
    g.params.*(w.field) = w.data.data();
  }
  const bool found = variants::visit(variant, s, [&](const auto& attn) {
    if (backend_name == "reference")
      backward(backend::reference{}, attn, q, k, v, dout, g);
    else
      backward(backend::cpu{}, attn, q, k, v, dout, g);
  });
  if (!found) throw value_error("--variant", "unknown variant '" + variant + "'; one of: " + variants::names());

  // Everything computed: only now touch the output files.
  const npy::dtype as = qa.stored;
  npy::write(dq_path, "--dq", dq, as);
  npy::write(dk_path, "--dk", dk, as);
  npy::write(dv_path, "--dv", dv, as);
  for (const wanted& w : outs)
    if (a.has(w.flag)) npy::write(a.get(w.flag), w.flag, w.data, as);
  return 0;
}

}  // namespace

int cmd_grad(int argc, char** argv) {
  std::vector<std::string> valued = variant_flags();
  for (const char* f : {"--q", "--k", "--v", "--dout", "--dq", "--dk", "--dv", "--backend", "--dsink", "--dkstar",
                        "--dvstar", "--dt5-table"})
    valued.push_back(f);
  const args a = parse(argc, argv, {"--rope"}, valued);
  const std::string backend = a.has("--backend") ? a.get("--backend") : "cpu";
  if (backend == "reference") return grad_typed<double>(a, backend);
  if (backend == "cpu") return grad_typed<float>(a, backend);
  throw value_error("--backend", "expected reference or cpu, got '" + backend + "'");
}

}  // namespace attnsink::cli
