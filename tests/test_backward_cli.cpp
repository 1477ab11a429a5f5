// attnsink grad from the shell: the files it writes equal the library's
// reference backward, and bad input exits 2 without writing.
#include <catch2/catch_test_macros.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>

#include <sys/wait.h>
#include <xtensor/xnpy.hpp>

#include <attnsink/npy.hpp>

#include "test_backward_common.hpp"

using namespace attnsink;
namespace fs = std::filesystem;

namespace {

int run_cli(const std::string& args) {
  const int status = std::system((std::string(ATTNSINK_CLI) + " " + args + " >/dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

xt::xarray<double> as_array(const std::vector<double>& x, std::vector<std::size_t> shape) {
  xt::xarray<double> a = xt::zeros<double>(shape);
  std::copy(x.begin(), x.end(), a.begin());
  return a;
}

}  // namespace

TEST_CASE("attnsink grad writes the reference backward's gradients", "[backward][cli]") {
  const fs::path dir = fs::temp_directory_path() / ("attnsink-grad-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto path = [&](const char* n) { return (dir / n).string(); };
  const test::operands p(1, 4, 2, 6, 6, 8, 8, 9100);
  const std::vector<double> dO = test::random_vector(p.out_size(), 9101), sink = test::random_vector(4, 9102);
  xt::dump_npy(path("q.npy"), as_array(p.q, {1, 4, 6, 8}));
  xt::dump_npy(path("k.npy"), as_array(p.k, {1, 2, 6, 8}));
  xt::dump_npy(path("v.npy"), as_array(p.v, {1, 2, 6, 8}));
  xt::dump_npy(path("do.npy"), as_array(dO, {1, 4, 6, 8}));
  xt::dump_npy(path("sink.npy"), as_array(sink, {4}));
  const std::string common = "grad --variant sink_logit --backend reference --rope --mask window:3 --q " + path("q.npy") +
                             " --k " + path("k.npy") + " --v " + path("v.npy") + " --dout " + path("do.npy") +
                             " --sink " + path("sink.npy") + " --dq " + path("dq.npy") + " --dk " + path("dk.npy") +
                             " --dv " + path("dv.npy");
  REQUIRE(run_cli(common + " --dsink " + path("dsink.npy")) == 0);

  variants::settings st;
  st.sink = param_ref(sink.data(), 4);
  st.rope.enabled = true;
  st.mask = {mask::dynamic::kind::window, 3};
  std::vector<double> dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), ds(4);
  gradients<double> g{{dq.data(), 1, 4, 6, 8}, {dk.data(), 1, 2, 6, 8}, {dv.data(), 1, 2, 6, 8}};
  g.params.sink = ds.data();
  backward(backend::reference{}, variants::make<variants::sink_logit>(st), p.Q<double>(), p.K<double>(),
           p.V<double>(), tensor4<const double>(dO.data(), 1, 4, 6, 8), g);
  auto same = [&](const char* file, const std::vector<double>& want) {
    INFO(file);
    const auto got = npy::read<double>(path(file), file);
    REQUIRE(got.data.size() == want.size());
    CHECK(std::equal(want.begin(), want.end(), got.data.begin()));
  };
  same("dq.npy", dq);
  same("dk.npy", dk);
  same("dv.npy", dv);
  same("dsink.npy", ds);

  // A parameter gradient without its parameter: exit 2, nothing written.
  fs::remove(path("dq.npy"));
  const std::string no_sink = "grad --variant softmax --q " + path("q.npy") + " --k " + path("k.npy") + " --v " +
                              path("v.npy") + " --dout " + path("do.npy") + " --dq " + path("dq.npy") + " --dk " +
                              path("dk.npy") + " --dv " + path("dv.npy") + " --dsink " + path("x.npy");
  CHECK(run_cli(no_sink) == 2);
  CHECK_FALSE(fs::exists(path("dq.npy")));
  CHECK(run_cli(common + " --dout " + path("k.npy")) == 2);  // dO of the wrong shape (the later flag wins)
  CHECK_FALSE(fs::exists(path("dq.npy")));
  fs::remove_all(dir);
}
