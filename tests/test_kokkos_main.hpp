// tests/test_kokkos_main.hpp — main() for the Kokkos test programs: Kokkos
// is initialized around the Catch2 session (it takes its own --kokkos-*
// arguments out of argv first). Include from exactly one file per program.
#pragma once

#include <catch2/catch_session.hpp>

#include <Kokkos_Core.hpp>

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  return Catch::Session().run(argc, argv);
}
