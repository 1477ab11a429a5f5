// attnsink/kokkos.hpp — the core plus the Kokkos backend (link attnsink::kokkos).
// Initialize Kokkos (Kokkos::initialize or Kokkos::ScopeGuard) before the
// first forward call.
#pragma once

#include "attnsink.hpp"
#include "backend/kokkos.hpp"
#include "backend/kokkos_backward.hpp"
