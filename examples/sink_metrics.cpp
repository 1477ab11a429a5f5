// sink_metrics — the paper's sink measurements for a few attention variants,
// on random inputs and on inputs with a planted sink; prints a table and
// writes an SVG (an attention map per input, α_1 per head per variant).
//
//   sink_metrics [out.svg]        (default: ./sink_metrics.svg)
//
// The metrics are streamed from q, k and the row state (m, l) the CPU
// backend's forward pass keeps, without forming the T × T weights; the last
// table column is their largest difference from the same metric taken on the
// reference backend's materialized weights. The planted input gives every
// sequence the geometry trained LMs develop (Gu et al., ICLR 2025): a shared
// direction u that every query leans towards and that the first key holds.
#include <attnsink/cpu.hpp>
#include <attnsink/metrics.hpp>
#include <attnsink/variants.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace attnsink;
namespace M = attnsink::metrics;

constexpr std::size_t S = 16, H = 4, T = 64, D = 64;  // samples, heads, tokens, head_dim

struct inputs {
  const char* name;
  std::vector<float> q, k, v;
  tensor4<const float> Q() const { return {q.data(), S, H, T, D}; }
  tensor4<const float> K() const { return {k.data(), S, H, T, D}; }
  tensor4<const float> V() const { return {v.data(), S, H, T, D}; }
};

inputs make_inputs(bool planted, const std::vector<float>& u, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  inputs in{planted ? "planted sink" : "random", std::vector<float>(S * H * T * D), {}, {}};
  in.k = in.v = in.q;
  for (auto* x : {&in.q, &in.k, &in.v})
    for (auto& e : *x) e = normal(gen);
  if (planted) {  // q_t += 0.5·√d·u, k_1 = √d·u: k_1 gains ≈ 0.5·√d = +4 in every query's score
    const float r = std::sqrt(float(D));
    for (std::size_t sh = 0; sh < S * H; ++sh) {
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t e = 0; e < D; ++e) in.q[(sh * T + t) * D + e] += 0.5f * r * u[e];
      for (std::size_t e = 0; e < D; ++e) in.k[sh * T * D + e] = r * u[e];
    }
  }
  return in;
}

struct row {
  std::string variant, input, proxy;
  double alpha1, sink1, alpha_star = NAN, sink_star = NAN, key_ratio, cos1, route_diff;
  std::vector<double> head_alpha;
};

// α_1 streamed (cpu, float32 row state) and from reference weights (float64).
template <class A>
row measure(const char* variant, const A& a, const inputs& in, std::vector<double>* probs_out) {
  std::vector<float> o(S * H * T * D), m(S * H * T), l(S * H * T);
  forward(backend::cpu{}, a, in.Q(), in.K(), in.V(), tensor4<float>(o.data(), S, H, T, D), row_stats<float>{m.data(), l.data()});
  const M::options opt;  // ε = 0.3, k = 1, the paper's proxy where weights do not sum to one
  const M::alpha_map streamed = M::alphas_streamed(backend::cpu{}, a, in.Q(), in.K(), row_stats<float>{m.data(), l.data()}, opt);

  const std::vector<double> qd(in.q.begin(), in.q.end()), kd(in.k.begin(), in.k.end()), vd(in.v.begin(), in.v.end());
  constexpr std::size_t cols = T + (A::bias_type::has_kv ? 1 : 0);
  std::vector<double> od(o.size()), probs(S * H * T * cols);
  forward(backend::reference{}, a, tensor4<const double>(qd.data(), S, H, T, D), tensor4<const double>(kd.data(), S, H, T, D),
          tensor4<const double>(vd.data(), S, H, T, D), tensor4<double>(od.data(), S, H, T, D), row_stats<double>{},
          probs_view<double>{probs.data()});
  const M::alpha_map ref = M::alphas(a, M::weights_view<double>{probs.data(), S, H, T, A::bias_type::has_kv}, opt);
  if (probs_out) *probs_out = probs;

  row r;
  r.variant = variant;
  r.input = in.name;
  r.proxy = M::name(streamed.weights);
  r.route_diff = 0;
  for (std::size_t i = 0; i < ref.alpha.size(); ++i) r.route_diff = std::max(r.route_diff, std::abs(streamed.alpha[i] - ref.alpha[i]));
  double sum = 0;
  for (std::size_t h = 0; h < H; ++h) r.head_alpha.push_back(streamed.head_mean(h)), sum += streamed.head_mean(h);
  r.alpha1 = sum / H;
  r.sink1 = M::sink_rate(streamed, opt.eps);
  if (streamed.has_bias()) {
    double s = 0;
    for (std::size_t h = 0; h < H; ++h) s += streamed.head_mean(h, true);
    r.alpha_star = s / H;
    r.sink_star = M::sink_rate(streamed, opt.eps, true);
  }
  // Geometry: how the first key stands out (‖k_1‖ / mean ‖k_t‖) and where queries point.
  const std::vector<double> ratio = M::massive_activation_ratio(in.K(), "k");
  const M::first_key_angles g = M::qk_angles(a, in.Q(), in.K());
  r.key_ratio = 0;
  for (double x : ratio) r.key_ratio += x / double(ratio.size());
  r.cos1 = 0;
  for (double x : g.cos) r.cos1 += x / double(g.cos.size());
  return r;
}

// ---------------------------------------------------------------------------
// SVG: two attention maps and a grouped bar chart, in plain text.

std::string heat_color(double a) {  // white → deep blue on √A, so small weights stay visible
  const double x = std::sqrt(std::clamp(a, 0.0, 1.0));
  const int r = int(255 * (1 - x) + 8 * x), g = int(255 * (1 - x) + 48 * x), b = int(255 * (1 - x) + 107 * x);
  char buf[16];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", r, g, b);
  return buf;
}

void heatmap(std::ostringstream& svg, const std::vector<double>& probs, std::size_t cols, double x0, double y0,
             const std::string& title) {
  const double cell = 4.5;
  svg << "<text x='" << x0 << "' y='" << y0 - 10 << "' font-size='14'>" << title << "</text>\n";
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t j = 0; j < T; ++j)
      svg << "<rect x='" << x0 + j * cell << "' y='" << y0 + t * cell << "' width='" << cell + 0.05 << "' height='"
          << cell + 0.05 << "' fill='" << heat_color(probs[t * cols + j]) << "'/>\n";
  svg << "<rect x='" << x0 << "' y='" << y0 << "' width='" << T * cell << "' height='" << T * cell
      << "' fill='none' stroke='#444'/>\n";
  svg << "<text x='" << x0 << "' y='" << y0 + T * cell + 16 << "' font-size='11'>key j = 1 … " << T
      << " →   (query t ↓; colour √A, white 0, blue 1)</text>\n";
}

void write_svg(const std::string& path, const std::vector<double>& random_map, const std::vector<double>& planted_map,
               const std::vector<row>& rows) {
  std::ostringstream svg;
  const double W = 1000, Hh = 760;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << Hh << "' font-family='sans-serif'>\n"
      << "<rect width='100%' height='100%' fill='white'/>\n"
      << "<text x='20' y='28' font-size='18'>Attention sinks: softmax, sample 1, head 1, T = " << T << ", causal</text>\n";
  heatmap(svg, random_map, T, 40, 70, "random q, k");
  heatmap(svg, planted_map, T, 400, 70, "planted sink (k_1 along u, queries lean to u)");

  // α_1 per head for each variant, planted input; dashed line at ε = 0.3.
  const double bx = 60, by = 420, bw = 880, bh = 260;
  svg << "<text x='" << bx - 40 << "' y='" << by - 18 << "' font-size='14'>α_1 per head (mean over " << S
      << " samples), planted input; hatched: α_* of the kv-bias key, mean over heads</text>\n";
  svg << "<line x1='" << bx << "' y1='" << by + bh << "' x2='" << bx + bw << "' y2='" << by + bh << "' stroke='#000'/>\n"
      << "<line x1='" << bx << "' y1='" << by << "' x2='" << bx << "' y2='" << by + bh << "' stroke='#000'/>\n";
  for (int tick = 0; tick <= 4; ++tick) {
    const double y = by + bh - tick * 0.25 * bh;
    svg << "<text x='" << bx - 34 << "' y='" << y + 4 << "' font-size='11'>" << tick * 0.25 << "</text>\n"
        << "<line x1='" << bx - 4 << "' y1='" << y << "' x2='" << bx << "' y2='" << y << "' stroke='#000'/>\n";
  }
  const double ey = by + bh - 0.3 * bh;
  svg << "<line x1='" << bx << "' y1='" << ey << "' x2='" << bx + bw << "' y2='" << ey
      << "' stroke='#c00' stroke-dasharray='6,4'/>\n<text x='" << bx + 6 << "' y='" << ey - 4
      << "' font-size='11' fill='#c00'>ε = 0.3</text>\n";
  const char* colors[H] = {"#4c72b0", "#55a868", "#c44e52", "#8172b2"};
  std::vector<const row*> planted;
  for (const row& r : rows)
    if (r.input == "planted sink") planted.push_back(&r);
  const double group = bw / double(planted.size()), bar = group * 0.8 / (H + 1);
  for (std::size_t v = 0; v < planted.size(); ++v) {
    const double gx = bx + v * group + group * 0.1;
    for (std::size_t h = 0; h < H; ++h) {
      const double a = std::clamp(planted[v]->head_alpha[h], 0.0, 1.0);
      svg << "<rect x='" << gx + h * bar << "' y='" << by + bh - a * bh << "' width='" << bar * 0.9 << "' height='"
          << a * bh << "' fill='" << colors[h] << "'/>\n";
    }
    if (!std::isnan(planted[v]->alpha_star)) {
      const double a = std::clamp(planted[v]->alpha_star, 0.0, 1.0);
      svg << "<rect x='" << gx + H * bar << "' y='" << by + bh - a * bh << "' width='" << bar * 0.9 << "' height='"
          << a * bh << "' fill='url(#hatch)' stroke='#333'/>\n";
    }
    svg << "<text x='" << gx << "' y='" << by + bh + 18 << "' font-size='12'>" << planted[v]->variant << "</text>\n";
  }
  svg << "<defs><pattern id='hatch' width='6' height='6' patternUnits='userSpaceOnUse' patternTransform='rotate(45)'>"
         "<line x1='0' y1='0' x2='0' y2='6' stroke='#333' stroke-width='2'/></pattern></defs>\n";
  for (std::size_t h = 0; h < H; ++h)
    svg << "<rect x='" << bx + 20 + h * 80 << "' y='" << Hh - 34 << "' width='12' height='12' fill='" << colors[h]
        << "'/><text x='" << bx + 36 + h * 80 << "' y='" << Hh - 24 << "' font-size='12'>head " << h + 1 << "</text>\n";
  svg << "</svg>\n";

  const std::string tmp = path + ".tmp";
  std::ofstream f(tmp, std::ios::binary);
  f << svg.str();
  f.close();
  if (!f || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw io_error("out.svg", "cannot write '" + path + "'");
  }
}

int main(int argc, char** argv) try {
  const std::string out = argc > 1 ? argv[1] : "sink_metrics.svg";
  std::mt19937 gen(11);
  std::normal_distribution<float> normal;
  std::vector<float> u(D);
  for (auto& e : u) e = normal(gen) / std::sqrt(float(D));
  const inputs random_in = make_inputs(false, u, 1), planted_in = make_inputs(true, u, 2);

  // A learned key bias along u in every head, a little longer than k_1: on the
  // planted input it takes the attention k_1 would otherwise sink (+5 vs +4).
  std::vector<double> kstar(H * D);
  for (std::size_t h = 0; h < H; ++h)
    for (std::size_t e = 0; e < D; ++e) kstar[h * D + e] = 1.25 * std::sqrt(double(D)) * u[e];
  variants::settings st;  // causal, no RoPE
  st.kstar = param_ref(kstar.data(), kstar.size());

  std::vector<row> rows;
  std::vector<double> random_map, planted_map;
  for (const inputs* in : {&random_in, &planted_in}) {
    const bool first = in == &random_in;
    rows.push_back(measure("softmax", variants::make<variants::softmax>(st), *in, first ? &random_map : &planted_map));
    rows.push_back(measure("sigmoid", variants::make<variants::sigmoid>(st), *in, nullptr));
    rows.push_back(measure("off_by_one", variants::make<variants::softmax_off_by_one>(st), *in, nullptr));
    rows.push_back(measure("kernel_elu1", variants::make<variants::kernel_elu1>(st), *in, nullptr));
    rows.push_back(measure("kv_bias", variants::make<variants::kv_bias>(st), *in, nullptr));
  }

  std::printf("Sink metrics, %zu samples × %zu heads, T = %zu causal, head_dim %zu; ε = 0.3, k = 1.\n", S, H, T, D);
  std::printf("Uniform causal attention would give α_1 = H_64/64 = 0.0741.\n\n");
  std::printf("%-12s %-13s %-12s %8s %8s %8s %8s %10s %9s %10s\n", "variant", "input", "proxy", "α_1", "Sink_1", "α_*",
              "Sink*", "‖k1‖/‖kt‖", "cos(q,k1)", "|str-ref|");
  for (const row& r : rows) {
    auto opt = [](double x) {
      char b[16];
      if (std::isnan(x)) return std::string("-");
      std::snprintf(b, sizeof b, "%.4f", x);
      return std::string(b);
    };
    std::printf("%-12s %-13s %-12s %8.4f %8.3f %8s %8s %10.3f %9.3f %10.1e\n", r.variant.c_str(), r.input.c_str(),
                r.proxy.c_str(), r.alpha1, r.sink1, opt(r.alpha_star).c_str(), opt(r.sink_star).c_str(), r.key_ratio,
                r.cos1, r.route_diff);
  }
  write_svg(out, random_map, planted_map, rows);
  std::printf("\nwrote %s (attention maps of softmax, α_1 per head per variant)\n", out.c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "sink_metrics: error: %s\n", e.what());
  return 2;
}
