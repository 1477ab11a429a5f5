// attnsink/metrics.hpp — the paper's sink measurements (Gu et al., ICLR 2025;
// DESIGN.md §4) as reducers, in two routes that give one answer:
//
//   metrics/reduce.hpp   init/join/final reducers (mean, exceed_rate, l2_norm,
//                        massive_ratio) for serial, oneTBB or Kokkos reductions
//   metrics/alpha.hpp    α_k, α_* and Sink_k^ε, from materialized weights or
//                        streamed from q, k and a forward pass's row state
//   metrics/vectors.hpp  per-token L2 norms, ‖h_1‖ / mean ‖h_t‖, cos(q_t, k_1)
//   metrics/capture.hpp  per-layer, per-head collection during a model's forward
//
// Core only (no xsimd, TBB or Kokkos): include attnsink/cpu.hpp as well to run
// the proxy's row-mass pass on the CPU backend.
#pragma once

#include "metrics/alpha.hpp"
#include "metrics/capture.hpp"
#include "metrics/reduce.hpp"
#include "metrics/vectors.hpp"
