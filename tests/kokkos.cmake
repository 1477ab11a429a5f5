# The Kokkos backend's tests: every tests/test_kokkos_*.cpp is one Catch2
# program with its own main (Kokkos is initialized around the Catch2 session),
# run on Kokkos' default execution space (Serial with Debian's Kokkos, CUDA
# with a CUDA build). CMAKE_CURRENT_LIST_DIR: a consumer project may include
# this file to build the same tests against its own Kokkos.
file(GLOB ATTNSINK_KOKKOS_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_kokkos_*.cpp)
foreach(src ${ATTNSINK_KOKKOS_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE attnsink::kokkos Catch2::Catch2)
  catch_discover_tests(${name} DISCOVERY_MODE PRE_TEST PROPERTIES TIMEOUT 900)
endforeach()
