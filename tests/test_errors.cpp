// Bad input: a typed exception that names the argument, thrown before any
// output is written.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <attnsink/cpu.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

using namespace attnsink;

namespace {

struct call {
  std::size_t B = 2, H = 4, Hk = 2, Tq = 8, Tk = 8, D = 16, Dv = 16;
  std::size_t qB = 0, kB = 0, vH = 0, vT = 0, oT = 0, kD = 0;  // overrides (0 = consistent)
};

template <class E, class Backend, class A>
void expect_error(const Backend& be, const A& a, const call& c, const std::string& argument, const std::string& text) {
  const std::size_t qB = c.qB ? c.qB : c.B, kB = c.kB ? c.kB : c.B, vH = c.vH ? c.vH : c.Hk;
  const std::size_t vT = c.vT ? c.vT : c.Tk, oT = c.oT ? c.oT : c.Tq, kD = c.kD ? c.kD : c.D;
  std::vector<float> q(qB * c.H * c.Tq * std::max<std::size_t>(c.D, 1), 1.0f), k(kB * c.Hk * c.Tk * std::max<std::size_t>(kD, 1), 1.0f),
      v(c.B * vH * vT * c.Dv, 1.0f);
  const float sentinel = 12345.0f;
  std::vector<float> o(qB * c.H * oT * c.Dv + 1, sentinel);
  INFO("expecting " << argument << ": " << text);
  try {
    forward(be, a, tensor4<const float>(q.data(), qB, c.H, c.Tq, c.D), tensor4<const float>(k.data(), kB, c.Hk, c.Tk, kD),
            tensor4<const float>(v.data(), c.B, vH, vT, c.Dv), tensor4<float>(o.data(), qB, c.H, oT, c.Dv));
    FAIL("no exception");
  } catch (const E& e) {
    CHECK(e.argument() == argument);
    CHECK_THAT(e.what(), Catch::Matchers::ContainsSubstring(text));
  }
  for (float x : o) REQUIRE(x == sentinel);  // outputs untouched
}


}  // namespace

TEST_CASE("shape errors name the argument and leave outputs untouched", "[errors]") {
  const attention<> a;
  for (int backend = 0; backend < 2; ++backend) {
    auto run = [&](auto check) {
      if (backend == 0) check(backend::reference{});
      else check(backend::cpu{});
    };
    run([&](auto be) {
      call c;
      c.Hk = 3;
      expect_error<shape_error>(be, a, c, "k", "kv heads (3) must divide the query heads (4)");
    });
    run([&](auto be) {
      call c;
      c.D = 0;
      c.kD = 0;
      expect_error<shape_error>(be, a, c, "q", "head_dim >= 1");
    });
    run([&](auto be) {
      call c;
      c.kB = 3;
      expect_error<shape_error>(be, a, c, "k", "expected batch 2");
    });
    run([&](auto be) {
      call c;
      c.kD = 8;
      expect_error<shape_error>(be, a, c, "k", "expected head_dim 16");
    });
    run([&](auto be) {
      call c;
      c.vT = 7;
      expect_error<shape_error>(be, a, c, "v", "as k");
    });
    run([&](auto be) {
      call c;
      c.oT = 9;
      expect_error<shape_error>(be, a, c, "out", "expected shape (2, 4, 8, 16)");
    });
    run([&](auto be) {
      call c;
      c.D = 15;
      c.kD = 15;
      expect_error<shape_error>(be, attention_of<pos::rope>{}, c, "q", "rope needs an even head_dim");
    });
  }
}

TEST_CASE("value errors: masks and learnable parameters", "[errors]") {
  call c;
  attention_of<mask::sliding_window> w;
  w.mask.window = 0;
  expect_error<value_error>(backend::cpu{}, w, c, "window", "at least 1");
  attention_of<mask::prefix_lm> pl;
  pl.mask.prefix = 9;
  expect_error<value_error>(backend::reference{}, pl, c, "prefix", "exceeds the sequence length (8)");
  mask::dynamic dm;
  dm.which = mask::dynamic::kind::window;
  dm.param = 0;
  expect_error<value_error>(backend::cpu{}, attention<score::scaled_dot, norm::softmax, bias::none, pos::nope, mask::dynamic>{{}, {}, {}, {}, dm}, c, "window", "at least 1");

  std::vector<double> sink = {0.1, 0.2, std::numeric_limits<double>::infinity(), 0.4};
  attention_of<norm::sink_logit> s;
  s.norm.logits = param_ref(sink.data(), sink.size());
  expect_error<value_error>(backend::cpu{}, s, c, "sink", "must be finite; element 2");
  s.norm.logits = param_ref(sink.data(), 3);
  expect_error<shape_error>(backend::cpu{}, s, c, "sink", "expected 4 values, got 3");
  s.norm.logits = {};
  expect_error<value_error>(backend::reference{}, s, c, "sink", "got none");

  std::vector<float> kstar(2 * 16, 0.5f);
  kstar[5] = std::nanf("");
  attention_of<bias::kv_bias> kv;
  kv.bias.k = param_ref(kstar.data(), kstar.size());
  expect_error<value_error>(backend::cpu{}, kv, c, "kstar", "must be finite");
  std::vector<float> vstar(2 * 15, 0.5f);
  kstar[5] = 0.f;
  kv.bias.v = param_ref(vstar.data(), vstar.size());
  expect_error<shape_error>(backend::cpu{}, kv, c, "vstar", "expected 32 values");

  attention_of<score::softcap<>> cap;
  cap.score.cap = 0;
  expect_error<value_error>(backend::cpu{}, cap, c, "score.cap", "> 0");
  attention_of<norm::sigmoid> sig;
  sig.norm.bias = std::nan("");
  expect_error<value_error>(backend::cpu{}, sig, c, "norm.bias", "finite");
  std::vector<double> table(4 * 31);
  attention_of<bias::t5_relative> t5;
  t5.bias.table = param_ref(table.data(), table.size());
  expect_error<shape_error>(backend::cpu{}, t5, c, "t5_table", "expected 128 values");
}
