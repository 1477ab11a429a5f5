// The reference backward against central finite differences of the reference
// forward, in double: every named variant × every mask × RoPE off/on, and the
// policies no named variant uses (MLP and other kernel feature maps, a tensor
// bias, the document mask, a constant v*, the fixed T5 form).
#include <catch2/catch_template_test_macros.hpp>

#include "test_backward_common.hpp"

using namespace attnsink;

namespace {

// Small: every element of every input is perturbed twice.
const std::vector<test::shape>& fd_shapes() {
  static const std::vector<test::shape> s = {
      {2, 4, 2, 5, 5, 4, 3},  // grouped-query (2 query heads per kv head), value dim != head dim
      {1, 2, 1, 2, 6, 4, 5},  // fewer queries than keys (decode / cross)
      {1, 1, 1, 1, 1, 2, 2},  // one token
  };
  return s;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("reference backward matches finite differences", "[backward][fd]", variants::all) {
  std::uint64_t seed = 5000;
  for (const test::shape& s : fd_shapes())
    for (const mask::dynamic& m : test::masks_for(s.tk))
      for (int rope = 0; rope < 2; ++rope) {
        ++seed;
        const test::operands p(s.batch, s.heads, s.kv_heads, s.tq, s.tk, s.dim, s.vdim, seed);
        test::variant_params vp(s, seed);
        variants::settings st = vp.settings();
        st.mask = m;
        st.rope.enabled = rope != 0;
        const auto a = variants::make<TestType>(st);
        INFO(TestType::name << " " << test::describe(s, m, rope));
        test::check_finite_differences(a, p, test::variant_slots(vp, a), seed);
      }
}

TEST_CASE("reference backward: learnable MLP feature map (W1, W2)", "[backward][fd]") {
  const std::size_t d = 4, hidden = 6, features = 5;
  std::vector<double> w(hidden * d + features * hidden);
  w = test::random_vector(w.size(), 71, 0.7);
  score::mlp_kernel k{param_ref(w.data(), hidden * d), param_ref(w.data() + hidden * d, features * hidden), hidden,
                      features, true};
  // W1 and W2 live in one array, the layout of their gradient.
  const std::vector<test::param_slot> slots = {{"dW1,dW2", &w, &param_grads<double>::score}};
  for (std::uint64_t seed : {1u, 2u}) {
    const test::operands p(1, 2, 1, 5, 5, d, 3, 7100 + seed);
    INFO("softmax, causal, rope");
    test::check_finite_differences(attention<score::mlp_kernel, norm::softmax, bias::none, pos::rope, mask::causal>{k},
                                   p, slots, seed);
    INFO("abs_clamped, bidirectional");
    test::check_finite_differences(attention<score::mlp_kernel, norm::abs_clamped, bias::none, pos::nope, mask::none>{k},
                                   p, slots, seed + 10);
  }
}

TEST_CASE("reference backward: other feature maps and softcap", "[backward][fd]") {
  const test::operands p(1, 2, 2, 6, 6, 4, 4, 7200);
  test::check_finite_differences(attention<score::kernel<fn::relu>, norm::identity, bias::none, pos::nope, mask::causal>{},
                                 p, {}, 1);
  test::check_finite_differences(
      attention<score::kernel<fn::sigmoid>, norm::normalized<fn::relu>, bias::none, pos::rope, mask::none>{{true}}, p, {}, 2);
  test::check_finite_differences(
      attention<score::softcap<score::kernel<fn::elu_plus_one>>, norm::softmax, bias::alibi, pos::nope, mask::causal>{
          {{}, 1.5}},
      p, {}, 3);
  test::check_finite_differences(
      attention<score::scaled_dot, norm::normalized<fn::sigmoid>, bias::none, pos::nope, mask::sliding_window>{
          {}, {}, {}, {}, {2}},
      p, {}, 4);
}

TEST_CASE("reference backward: tensor bias, document mask, fixed T5, constant v*", "[backward][fd]") {
  const test::operands p(2, 2, 1, 6, 6, 4, 3, 7300);
  std::vector<double> B = test::random_vector(2 * 2 * 6 * 6, 7301);
  const std::vector<test::param_slot> bslot = {{"dbias", &B, &param_grads<double>::bias}};
  using tensor_attn = attention<score::scaled_dot, norm::softmax, bias::tensor, pos::rope, mask::none>;
  test::check_finite_differences(tensor_attn{{}, {}, {param_ref(B.data(), B.size())}}, p, bslot, 1);
  using tensor_sig = attention<score::scaled_dot, norm::sigmoid, bias::tensor, pos::nope, mask::causal>;
  test::check_finite_differences(tensor_sig{{}, {{}, -0.5}, {param_ref(B.data(), B.size())}}, p, bslot, 2);

  const std::int32_t ids[12] = {0, 0, 0, 1, 1, 2, 5, 5, 6, 6, 6, 6};
  const auto starts = mask::document_starts(ids, 2, 6);
  test::check_finite_differences(
      attention<score::scaled_dot, norm::softmax_off_by_one, bias::none, pos::rope, mask::document>{
          {}, {}, {}, {}, {starts.data()}},
      p, {}, 3);

  // The fixed T5 form learns nothing; the bias still shifts every score.
  test::check_finite_differences(attention<score::scaled_dot, norm::softmax, bias::t5_relative, pos::nope, mask::none>{},
                                 p, {}, 4);

  std::vector<double> ks = test::random_vector(1 * 4, 7302);
  bias::kv_bias kv{param_ref(ks.data(), ks.size()), {}, 0.7};
  test::check_finite_differences(attention<score::scaled_dot, norm::softmax, bias::kv_bias, pos::rope, mask::causal>{
                                     {}, {}, kv},
                                 p, {{"dkstar", &ks, &param_grads<double>::kstar}}, 5);
  // softpick with a kv bias: both branches of its mass derivative.
  test::check_finite_differences(attention<score::scaled_dot, norm::softpick, bias::kv_bias, pos::nope, mask::none>{
                                     {}, {}, kv},
                                 p, {{"dkstar", &ks, &param_grads<double>::kstar}}, 6);
}

TEST_CASE("reference backward rejects gradients for parameters the attention does not learn", "[backward]") {
  const test::operands p(1, 2, 1, 3, 3, 4, 4, 7400);
  std::vector<double> dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), dO(p.out_size(), 1.0), extra(64);
  gradients<double> g{{dq.data(), 1, 2, 3, 4}, {dk.data(), 1, 1, 3, 4}, {dv.data(), 1, 1, 3, 4}};
  g.params.sink = extra.data();
  const tensor4<const double> dout(dO.data(), 1, 2, 3, 4);
  CHECK_THROWS_AS(backward(backend::reference{}, attention<>{}, p.Q<double>(), p.K<double>(), p.V<double>(), dout, g),
                  value_error);
  g.params.sink = nullptr;
  g.dk = {dk.data(), 1, 1, 2, 4};
  CHECK_THROWS_AS(backward(backend::reference{}, attention<>{}, p.Q<double>(), p.K<double>(), p.V<double>(), dout, g),
                  shape_error);
}
