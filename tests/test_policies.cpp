// Policies and the attention type: hand-worked cases whose expected numbers
// come from tests/handworked/normalizations.py (plain Python, no attnsink
// code), positional and bias conventions, masks by type, decode, edge cases.
#include <catch2/catch_approx.hpp>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>

#include <attnsink/cpu.hpp>
#include <attnsink/variants.hpp>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "forward_cases.hpp"

using namespace attnsink;
using test::operands;

namespace {

// The 3-token, head_dim 2 causal problem of normalizations.py.
const std::vector<double> hq = {1.0, 0.0, 0.5, -1.0, 2.0, 1.0};
const std::vector<double> hk = {1.0, 2.0, -1.0, 0.5, 0.3, -0.7};
const std::vector<double> hv = {1.0, 2.0, 3.0, -1.0, 0.0, 0.5};

// Output of normalizations.py, pasted (12 decimals).
struct expected_row {
  const char* name;
  std::array<double, 6> o;
};
const expected_row handworked[] = {
    {"softmax", {1.000000000000, 2.000000000000, 2.174958001679, 0.237562997481, 0.986850585821, 1.866114902828}},
    {"softmax_off_by_one", {0.669761549327, 1.339523098653, 0.992463084632, 0.108403245071, 0.935443515874, 1.768905152216}},
    {"sink_logit(b=0.5)", {0.551592413274, 1.103184826549, 0.733689981242, 0.080138370962, 0.904865206171, 1.711082174493}},
    {"scaled_softmax(alpha=0.5)", {0.500000000000, 1.000000000000, 1.087479000840, 0.118781498741, 0.493425292911, 0.933057451414}},
    {"sigmoid(b=-1)", {0.427295707204, 0.854591414409, 0.573597722527, 0.072419951557, 1.200513207649, 1.737802816270}},
    {"elu_plus_one", {1.707106781187, 3.414213562373, 1.825433239648, 0.199385639529, 4.867108621132, 7.776492795742}},
    {"identity", {0.707106781187, 1.414213562373, -3.181980515339, -1.414213562373, -0.353553390593, 6.682159082213}},
    {"normalized<sigmoid>", {0.999999985069, 1.999999970139, 2.124365691644, 0.313451402952, 1.019027628222, 1.112051223120}},
    {"normalized<elu_plus_one>", {0.999999994142, 1.999999988284, 2.174957975765, 0.237562994651, 0.953141592616, 1.522895687209}},
    {"normalized<relu>", {0.999999985858, 1.999999971716, 0.000000000000, 0.000000000000, 0.999999996464, 1.999999992929}},
    {"abs_clamped", {0.707106781187, 1.414213562373, -1.800000000000, -0.800000000000, -0.208333333333, 3.937500000000}},
    {"softpick", {0.999999027347, 1.999998054694, 0.000000000000, 0.000000000000, 0.956610299592, 1.913220599183}},
};

const std::array<double, 6>& expected(const std::string& name) {
  for (const auto& e : handworked)
    if (name == e.name) return e.o;
  FAIL("no hand-worked row " << name);
  return handworked[0].o;
}

// Runs `a` on the hand problem with the reference (double) and cpu (float and
// double) backends and checks all three against the pasted numbers.
template <class A>
void check_handworked(const A& a, const std::string& name) {
  INFO(name);
  const auto& want = expected(name);
  const tensor4<const double> Q(hq.data(), 1, 1, 3, 2), K(hk.data(), 1, 1, 3, 2), V(hv.data(), 1, 1, 3, 2);
  std::vector<double> ref(6, std::nan("")), cpud(6, std::nan(""));
  forward(backend::reference{}, a, Q, K, V, tensor4<double>(ref.data(), 1, 1, 3, 2));
  forward(backend::cpu{}, a, Q, K, V, tensor4<double>(cpud.data(), 1, 1, 3, 2));
  const std::vector<float> qf(hq.begin(), hq.end()), kf(hk.begin(), hk.end()), vf(hv.begin(), hv.end());
  std::vector<float> cpuf(6, std::nanf(""));
  forward(backend::cpu{}, a, tensor4<const float>(qf.data(), 1, 1, 3, 2), tensor4<const float>(kf.data(), 1, 1, 3, 2),
          tensor4<const float>(vf.data(), 1, 1, 3, 2), tensor4<float>(cpuf.data(), 1, 1, 3, 2));
  for (int e = 0; e < 6; ++e) {
    INFO("element " << e);
    CHECK(ref[e] == Catch::Approx(want[e]).margin(1e-11));
    CHECK(cpud[e] == Catch::Approx(want[e]).margin(1e-11));
    CHECK(cpuf[e] == Catch::Approx(want[e]).margin(2e-6));
  }
}

}  // namespace

TEST_CASE("every normalization matches a hand computation", "[policies][handworked]") {
  check_handworked(attention_of<norm::softmax>{}, "softmax");
  check_handworked(attention_of<norm::softmax_off_by_one>{}, "softmax_off_by_one");
  const double b = 0.5;
  attention_of<norm::sink_logit> sink;
  sink.norm.logits = param_ref(&b, 1);
  check_handworked(sink, "sink_logit(b=0.5)");
  attention_of<norm::scaled_softmax> scaled;
  scaled.norm.alpha = 0.5;
  check_handworked(scaled, "scaled_softmax(alpha=0.5)");
  attention_of<norm::sigmoid> sig;
  sig.norm.bias = -1.0;
  check_handworked(sig, "sigmoid(b=-1)");
  check_handworked(attention_of<norm::elu_plus_one>{}, "elu_plus_one");
  check_handworked(attention_of<norm::identity>{}, "identity");
  check_handworked(attention_of<norm::normalized<fn::sigmoid>>{}, "normalized<sigmoid>");
  check_handworked(attention_of<norm::normalized<fn::elu_plus_one>>{}, "normalized<elu_plus_one>");
  check_handworked(attention_of<norm::normalized<fn::relu>>{}, "normalized<relu>");
  check_handworked(attention_of<norm::abs_clamped>{}, "abs_clamped");
  check_handworked(attention_of<norm::softpick>{}, "softpick");
}

TEST_CASE("attention_of places policies by axis, in any order, with defaults", "[policies]") {
  using expected_t = attention<score::scaled_dot, norm::sigmoid, bias::alibi, pos::rope, mask::none>;
  STATIC_CHECK(std::is_same_v<attention_of<mask::none, pos::rope, bias::alibi, norm::sigmoid>, expected_t>);
  STATIC_CHECK(std::is_same_v<attention_of<norm::sigmoid, bias::alibi, mask::none, pos::rope>, expected_t>);
  STATIC_CHECK(std::is_same_v<attention_of<>, attention<>>);
  STATIC_CHECK(std::is_same_v<attention<>, attention<score::scaled_dot, norm::softmax, bias::none, pos::nope, mask::causal>>);
  STATIC_CHECK(attention_type<attention_of<score::kernel<fn::elu_plus_one>, norm::identity>>);
  STATIC_CHECK(!attention_type<int>);
  STATIC_CHECK(norm_policy<norm::softpick>);
  STATIC_CHECK(!norm_policy<score::scaled_dot>);
  STATIC_CHECK(score_policy<score::softcap<score::kernel<fn::relu>>>);
  STATIC_CHECK(mask_policy<mask::document>);
  STATIC_CHECK(bias_policy<bias::kv_bias>);
  STATIC_CHECK(pos_policy<pos::rope>);
}

TEST_CASE("ALiBi slopes are 2^(-8h/H) for h = 1..H", "[policies][bias]") {
  const bias::alibi a;
  for (std::size_t h = 0; h < 8; ++h) CHECK(a.slope(h, 8) == std::pow(2.0, -double(h + 1)));
  CHECK(a.slope(0, 4) == 0.25);
  CHECK(a.slope(3, 4) == std::pow(2.0, -8.0));
  // bias_ij = -m_h (i - j)
  CHECK(a.value(site{0, 1, 4, 10, 7, 0, 0, 0, true}) == -a.slope(1, 4) * 3.0);
}

TEST_CASE("T5 buckets match the reference implementation", "[policies][bias]") {
  // From normalizations.py (HF transformers' _relative_position_bucket).
  const bias::t5_relative t5;
  const int causal_n[] = {-3, 0, 1, 15, 16, 17, 30, 60, 127, 128, 500};
  const std::size_t causal_b[] = {0, 0, 1, 15, 16, 16, 20, 26, 31, 31, 31};
  for (int i = 0; i < 11; ++i) CHECK(t5.bucket(causal_n[i], 0, true) == causal_b[i]);
  const int bi_n[] = {-20, -5, -1, 0, 1, 7, 8, 20, 100, 500};
  const std::size_t bi_b[] = {26, 21, 17, 0, 1, 7, 8, 10, 15, 15};
  for (int i = 0; i < 10; ++i) CHECK(t5.bucket(bi_n[i], 0, false) == bi_b[i]);
  // Without a table the fixed form adds the bucket itself; with one, g_h(bucket).
  CHECK(t5.value(site{0, 0, 2, 40, 10, 0, 0, 0, true}) == 20.0);
  std::vector<double> table(64);
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = 0.01 * double(i);
  bias::t5_relative learned;
  learned.table = param_ref(table.data(), table.size());
  CHECK(learned.value(site{0, 1, 2, 40, 10, 0, 0, 0, true}) == Catch::Approx(0.01 * (32 + 20)));
}

TEST_CASE("RoPE is the rotate-half form with base 10000", "[policies][pos]") {
  const pos::rope r;
  // d = 4: pairs (0, 2) at θ_0 = 1 and (1, 3) at θ_1 = 10000^(-1/2) = 0.01.
  std::array<double, 4> x = {1.0, 2.0, 0.0, 0.0};
  r.apply(x.data(), 4, 3, 1);
  CHECK(x[0] == Catch::Approx(std::cos(3.0)));
  CHECK(x[2] == Catch::Approx(std::sin(3.0)));
  CHECK(x[1] == Catch::Approx(2 * std::cos(0.03)));
  CHECK(x[3] == Catch::Approx(2 * std::sin(0.03)));
  r.apply(x.data(), 4, 3, -1);  // the backward's inverse rotation
  CHECK(x[0] == Catch::Approx(1.0));
  CHECK(x[1] == Catch::Approx(2.0));
  CHECK(x[2] == Catch::Approx(0.0).margin(1e-15));
  // Scores depend only on the relative position.
  const auto qv = test::random_vector(8, 1), kv = test::random_vector(8, 2);
  auto dot_at = [&](std::ptrdiff_t pq, std::ptrdiff_t pk) {
    auto a = qv, b = kv;
    r.apply(a.data(), 8, pq, 1);
    r.apply(b.data(), 8, pk, 1);
    double s = 0;
    for (int e = 0; e < 8; ++e) s += a[e] * b[e];
    return s;
  };
  CHECK(dot_at(9, 4) == Catch::Approx(dot_at(105, 100)));
  // A precomputed angle table changes nothing, bit for bit, either direction;
  // positions outside it fall back to computing.
  pos::rope cached;
  const std::vector<double> table = pos::rope_table(cached, 50, 8);
  cached.table = table.data();
  cached.table_positions = 50;
  cached.table_dim = 8;
  for (std::ptrdiff_t p : {0, 1, 17, 49, 50, 300})
    for (int sign : {1, -1}) {
      auto a = qv, b = qv;
      r.apply(a.data(), 8, p, sign);
      cached.apply(b.data(), 8, p, sign);
      CHECK(a == b);
      std::vector<float> af(qv.begin(), qv.end()), bf = af;
      r.apply(af.data(), 8, p, sign);
      cached.apply(bf.data(), 8, p, sign);
      CHECK(af == bf);
    }
}

TEST_CASE("masks by type match the reference on the cpu backend", "[policies][mask]") {
  const operands p(2, 4, 2, 70, 70, 32, 32, 4242);
  test::expect_matches_reference(backend::cpu{}, attention_of<mask::causal>{}, p);
  test::expect_matches_reference(backend::cpu{}, attention_of<mask::none, norm::sigmoid>{}, p);
  test::expect_matches_reference(backend::cpu{}, attention_of<mask::sliding_window>{{}, {}, {}, {}, {9}}, p);
  test::expect_matches_reference(backend::cpu{}, attention_of<mask::prefix_lm, pos::rope>{{}, {}, {}, {}, {20}}, p);
  // Two packed sequences with documents of lengths (30, 40) and (5, 5, 60).
  std::vector<std::int32_t> ids(2 * 70);
  for (std::size_t t = 0; t < 70; ++t) {
    ids[t] = t < 30 ? 0 : 1;
    ids[70 + t] = t < 5 ? 0 : (t < 10 ? 1 : 2);
  }
  const auto starts = mask::document_starts(ids.data(), 2, 70);
  CHECK(starts[29] == 0);
  CHECK(starts[30] == 30);
  CHECK(starts[70 + 7] == 5);
  CHECK(starts[70 + 69] == 10);
  attention_of<mask::document, bias::alibi> doc;
  doc.mask.start = starts.data();
  test::expect_matches_reference(backend::cpu{}, doc, p);
  // Document rows never see an earlier document: the output at a document's
  // first token is its own value (softmax over one key).
  std::vector<double> o(p.out_size());
  forward(backend::reference{}, attention_of<mask::document>{{}, {}, {}, {}, {starts.data()}}, p.Q<double>(),
          p.K<double>(), p.V<double>(), tensor4<double>(o.data(), 2, 4, 70, 32));
  for (std::size_t e = 0; e < 32; ++e) CHECK(o[30 * 32 + e] == Catch::Approx(p.v[30 * 32 + e]));
}

TEST_CASE("decode: one query against a strided KV cache", "[decode]") {
  // Cache capacity 512, valid length n; the query sits at position n - 1.
  const std::size_t B = 2, H = 8, Hk = 2, D = 64, cap = 512;
  for (std::size_t n : {1u, 77u, 300u}) {
    INFO("n = " << n);
    const auto q = test::round_to_float(test::random_vector(B * H * D, 10 + n));
    const auto kc = test::round_to_float(test::random_vector(B * Hk * cap * D, 20 + n));
    const auto vc = test::round_to_float(test::random_vector(B * Hk * cap * D, 30 + n));
    // Contiguous copies of the valid part, for the reference.
    std::vector<double> k(B * Hk * n * D), v(k.size());
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t h = 0; h < Hk; ++h)
        for (std::size_t t = 0; t < n; ++t)
          for (std::size_t e = 0; e < D; ++e) {
            k[((b * Hk + h) * n + t) * D + e] = kc[((b * Hk + h) * cap + t) * D + e];
            v[((b * Hk + h) * n + t) * D + e] = vc[((b * Hk + h) * cap + t) * D + e];
          }
    attention_of<pos::rope, bias::alibi> a;
    std::vector<double> ref(B * H * D);
    forward(backend::reference{}, a, tensor4<const double>(q.data(), B, H, 1, D),
            tensor4<const double>(k.data(), B, Hk, n, D), tensor4<const double>(v.data(), B, Hk, n, D),
            tensor4<double>(ref.data(), B, H, 1, D));
    const std::vector<float> qf(q.begin(), q.end()), kf(kc.begin(), kc.end()), vf(vc.begin(), vc.end());
    std::vector<float> got(B * H * D, std::nanf(""));
    const tensor4<const float> Kc(kf.data(), B, Hk, n, D, Hk * cap * D, cap * D, D);
    const tensor4<const float> Vc(vf.data(), B, Hk, n, D, Hk * cap * D, cap * D, D);
    decode(backend::cpu{}, a, tensor4<const float>(qf.data(), B, H, 1, D), Kc, Vc, tensor4<float>(got.data(), B, H, 1, D));
    REQUIRE(test::all_finite(got));
    CHECK(test::rel_l2(got, ref) <= 1e-5);
  }
  std::vector<float> q2(2 * 8 * 2 * 64), kv(2 * 2 * 5 * 64), o(q2.size());
  CHECK_THROWS_AS(decode(backend::cpu{}, attention<>{}, tensor4<const float>(q2.data(), 2, 8, 2, 64),
                         tensor4<const float>(kv.data(), 2, 2, 5, 64), tensor4<const float>(kv.data(), 2, 2, 5, 64),
                         tensor4<float>(o.data(), 2, 8, 2, 64)),
                  shape_error);
}

TEMPLATE_LIST_TEST_CASE("logits up to |1e4| stay finite and match the reference", "[edge]", variants::all) {
  // q, k scaled so that |q·k/√d| reaches ~1e4.
  const operands p(1, 2, 1, 40, 40, 16, 16, 77, 25.0);
  test::variant_params vp(test::shape{1, 2, 1, 40, 40, 16, 16}, 77);
  variants::settings st = vp.settings();
  const auto a = variants::make<TestType>(st);
  test::result<double> ref(p);
  forward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), ref.O(p), ref.stats());
  test::result<float> got(p);
  forward(backend::cpu{}, a, p.Q<float>(), p.K<float>(), p.V<float>(), got.O(p), got.stats());
  double maxlogit = 0;
  for (std::size_t e = 0; e < 16; ++e) maxlogit += std::abs(p.q[e] * p.k[e]);
  INFO("largest |q_0·k_0|/√d ≈ " << maxlogit / 4);
  CHECK(maxlogit / 4 > 1000);
  CHECK(test::all_finite(ref.out));
  CHECK(test::all_finite(got.out));
}

TEMPLATE_LIST_TEST_CASE("a row that sees no key gives zeros, never NaN", "[edge]", variants::all) {
  // Causal with more queries than keys: the first tq - tk rows sit before every key.
  const operands p(1, 2, 2, 6, 3, 8, 8, 99);
  test::variant_params vp(test::shape{1, 2, 2, 6, 3, 8, 8}, 99);
  variants::settings st = vp.settings();
  st.rope.enabled = true;
  const auto a = variants::make<TestType>(st);
  test::result<double> ref(p);
  forward(backend::reference{}, a, p.Q<double>(), p.K<double>(), p.V<double>(), ref.O(p), ref.stats());
  test::result<float> got(p);
  forward(backend::cpu{}, a, p.Q<float>(), p.K<float>(), p.V<float>(), got.O(p), got.stats());
  const bool kv = TestType::type::bias_type::has_kv;
  for (std::size_t h = 0; h < 2; ++h)
    for (std::size_t i = 0; i < 3; ++i)
      for (std::size_t e = 0; e < 8; ++e) {
        const std::size_t idx = (h * 6 + i) * 8 + e;
        if (kv) {  // the bias key is still visible: the row attends to it alone
          CHECK(std::isfinite(got.out[idx]));
        } else {
          CHECK(ref.out[idx] == 0.0);
          CHECK(got.out[idx] == 0.0f);
        }
      }
  CHECK(test::all_finite(got.out));
  test::expect_matches_reference(backend::cpu{}, a, p);
}

namespace {
// A user-written normalization: ReLU² attention normalized per row,
// p = relu(s)² / (Σ relu(s)² + 1). Nothing in the library knows it.
struct relu_squared {
  using axis = attnsink::axis::norm;
  static constexpr const char* name = "relu_squared";
  static constexpr bool tracks_max = false;
  static constexpr bool has_denominator = true;
  static constexpr bool sums_to_one = false;
  static constexpr bool non_negative = true;
  row_init init(std::size_t) const { return {0.0, 1.0}; }
  template <class T> T weight(T s, T) const { return s > T(0) ? s * s : T(0); }
  template <class T> T mass(T s, T m) const { return weight(s, m); }
  template <class T> T finish(T, T l) const { return T(1) / l; }
  void check(const problem&) const {}
};
}  // namespace

TEST_CASE("a user-defined policy runs on every backend", "[policies][custom]") {
  STATIC_CHECK(norm_policy<relu_squared>);
  using A = attention_of<relu_squared, pos::rope, mask::none>;
  const operands p(2, 4, 4, 100, 100, 24, 24, 31337);
  test::expect_matches_reference(backend::cpu{}, A{}, p);
  // And by hand on one row: query 0 of the hand problem sees keys 0..2 (mask none).
  const tensor4<const double> Q(hq.data(), 1, 1, 3, 2), K(hk.data(), 1, 1, 3, 2), V(hv.data(), 1, 1, 3, 2);
  std::vector<double> o(6);
  forward(backend::reference{}, attention_of<relu_squared, mask::none>{}, Q, K, V, tensor4<double>(o.data(), 1, 1, 3, 2));
  const double c = 1 / std::sqrt(2.0), s0 = c * 1.0, s2 = c * 0.3;  // s1 < 0
  const double z = s0 * s0 + s2 * s2 + 1;
  CHECK(o[0] == Catch::Approx((s0 * s0 * 1.0 + s2 * s2 * 0.0) / z));
  CHECK(o[1] == Catch::Approx((s0 * s0 * 2.0 + s2 * s2 * 0.5) / z));
}
