// test_kokkos_backward (see test_kokkos_backward.cpp): small tiles, learnable
// biases and feature maps.
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include "test_kokkos_backward.hpp"

TEST_CASE("kokkos backward with small tiles, learnable biases and feature maps", "[backward][kokkos]") {
  // Tiles smaller than the problem both ways: partial, skipped and several tiles per row and per key.
  const kokkos_be small{space{}, 8, 8};
  for (std::size_t t : {5u, 37u}) {
    const test::operands p(2, 4, 2, t, t, 12, 12, 1700 + t);
    std::vector<double> table = test::round_to_float(test::random_vector(4 * 32, 1701 + t, 0.5));
    std::vector<double> B = test::round_to_float(test::random_vector(2 * 4 * t * t, 1702 + t));
    std::vector<double> w = test::round_to_float(test::random_vector(8 * 12 + 6 * 8, 1703 + t, 0.5));
    std::vector<double> sink = test::round_to_float(test::random_vector(4, 1704 + t));
    std::vector<double> ks = test::round_to_float(test::random_vector(2 * 12, 1705 + t));
    std::vector<double> vs = test::round_to_float(test::random_vector(2 * 12, 1706 + t));
    for (const auto& m : test::masks_for(t)) {
      INFO("tokens " << t << " mask kind " << int(m.which) << ":" << m.param);
      using t5_attn = attention<score::softcap<>, norm::softmax, bias::t5_relative, pos::rope, mask::dynamic>;
      t5_attn a1{{{}, 3.0}, {}, {32, 128, param_ref(table.data(), table.size())}, {}, m};
      expect_backward_matches(small, a1, p, {{"dt5", &table, &param_grads<double>::bias}}, t);
      using tensor_attn = attention<score::scaled_dot, norm::sigmoid, bias::tensor, pos::nope, mask::dynamic>;
      tensor_attn a2{{}, {{}, -1.0}, {param_ref(B.data(), B.size())}, {}, m};
      expect_backward_matches(small, a2, p, {{"dbias", &B, &param_grads<double>::bias}}, t + 1);
      using mlp_attn =
          attention<score::mlp_kernel, norm::normalized<fn::elu_plus_one>, bias::none, pos::rope, mask::dynamic>;
      mlp_attn a3{{param_ref(w.data(), 8 * 12), param_ref(w.data() + 8 * 12, 6 * 8), 8, 6, true}, {}, {}, {}, m};
      expect_backward_matches(small, a3, p, {{"dW1,dW2", &w, &param_grads<double>::score}}, t + 2);
      using sink_kv = attention<score::scaled_dot, norm::sink_logit, bias::kv_bias, pos::rope, mask::dynamic>;
      sink_kv a4{{}, {{}, param_ref(sink.data(), 4)}, {param_ref(ks.data(), ks.size()), param_ref(vs.data(), vs.size())}, {}, m};
      expect_backward_matches(small, a4, p,
                              {{"dsink", &sink, &param_grads<double>::sink},
                               {"dkstar", &ks, &param_grads<double>::kstar},
                               {"dvstar", &vs, &param_grads<double>::vstar}},
                              t + 3);
    }
  }
}
