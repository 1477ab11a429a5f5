# attnsink::kokkos — the Kokkos backend (include/attnsink/kokkos.hpp), when a
# Kokkos is found: any CMake-installed Kokkos (point Kokkos_ROOT at it), or
# Debian 12's Trilinos Kokkos 3.4.01 through cmake/attnsink_kokkos_shim.cmake.
# Without Kokkos the target is skipped and so are the Kokkos tests.

# The Trilinos config forces CMAKE_CXX_EXTENSIONS=OFF into the cache (with a
# warning) unless it is already OFF; set it OFF for the call only, so that
# the rest of the project keeps its own setting.
set(_attnsink_had_ext ${CMAKE_CXX_EXTENSIONS})
set(CMAKE_CXX_EXTENSIONS OFF)
find_package(Kokkos CONFIG QUIET)
set(CMAKE_CXX_EXTENSIONS ${_attnsink_had_ext})
unset(_attnsink_had_ext)
include(${CMAKE_CURRENT_LIST_DIR}/attnsink_kokkos_shim.cmake)

if(NOT TARGET Kokkos::kokkos)
  message(STATUS "attnsink: no Kokkos found (set Kokkos_ROOT, or install libtrilinos-kokkos-dev): "
                 "attnsink::kokkos and its tests are skipped")
  return()
endif()
set(_attnsink_kokkos_devices "${Kokkos_DEVICES}")
message(STATUS "attnsink: Kokkos ${Kokkos_VERSION} found (${_attnsink_kokkos_devices}): attnsink::kokkos enabled")

set(ATTNSINK_KOKKOS_FOUND ON)
add_library(attnsink_kokkos INTERFACE)
add_library(attnsink::kokkos ALIAS attnsink_kokkos)
set_target_properties(attnsink_kokkos PROPERTIES EXPORT_NAME kokkos)
target_link_libraries(attnsink_kokkos INTERFACE attnsink Kokkos::kokkos)
list(APPEND ATTNSINK_EXPORTED attnsink_kokkos)
install(FILES ${CMAKE_CURRENT_LIST_DIR}/attnsink_kokkos_shim.cmake DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/attnsink)

# The GPU benchmark (benchmarks/kokkos/): built only when Kokkos has a device backend.
string(TOUPPER "${_attnsink_kokkos_devices}" _attnsink_kokkos_devices)
if(ATTNSINK_BUILD_BENCHMARKS AND ("CUDA" IN_LIST _attnsink_kokkos_devices OR "HIP" IN_LIST _attnsink_kokkos_devices)
   AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/../benchmarks/kokkos/bench_kokkos_gpu.cpp)
  add_executable(attnsink_bench_kokkos_gpu ${CMAKE_CURRENT_LIST_DIR}/../benchmarks/kokkos/bench_kokkos_gpu.cpp)
  target_link_libraries(attnsink_bench_kokkos_gpu PRIVATE attnsink::kokkos)
endif()
