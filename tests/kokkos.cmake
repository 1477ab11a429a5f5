# The Kokkos backend's tests, run on Kokkos' default execution space (Serial
# with Debian's Kokkos, CUDA with a CUDA build). Every tests/test_kokkos_<name>.cpp
# is one Catch2 program with its own main (test_kokkos_main.hpp: Kokkos is
# initialized around the Catch2 session); tests/test_kokkos_<name>.<part>.cpp
# are more translation units of the same program — slices of the named
# variants (test_kokkos_slices.hpp) and groups of cases, so that a program's
# kernels compile in parallel and no file holds more than a few variants'.
# CMAKE_CURRENT_LIST_DIR: a consumer project may include this file to build the
# same tests against its own Kokkos.
file(GLOB ATTNSINK_KOKKOS_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_kokkos_*.cpp)
set(ATTNSINK_KOKKOS_TESTS "")
foreach(src ${ATTNSINK_KOKKOS_TEST_SOURCES})
  get_filename_component(name ${src} NAME_WE)  # test_kokkos_backward.long.cpp: test_kokkos_backward
  list(APPEND ATTNSINK_KOKKOS_TESTS ${name})
  list(APPEND ATTNSINK_KOKKOS_TEST_SOURCES_${name} ${src})
endforeach()
list(REMOVE_DUPLICATES ATTNSINK_KOKKOS_TESTS)
foreach(name ${ATTNSINK_KOKKOS_TESTS})
  add_executable(${name} ${ATTNSINK_KOKKOS_TEST_SOURCES_${name}})
  target_link_libraries(${name} PRIVATE attnsink::kokkos Catch2::Catch2)
  catch_discover_tests(${name} DISCOVERY_MODE PRE_TEST PROPERTIES TIMEOUT 900)
endforeach()
