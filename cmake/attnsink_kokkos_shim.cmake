# Repairs the Kokkos::kokkos target of Debian 12's Trilinos Kokkos 3.4.01
# (libtrilinos-kokkos-dev). Its TriBITS-generated KokkosConfig.cmake computes
# the include directory one level too high (/usr/lib/include, which does not
# exist) while its own Kokkos_INCLUDE_DIRS is right (/usr/include/trilinos).
# Included after find_package(Kokkos) by attnsink's build and by the installed
# attnsinkConfig.cmake, so consumers get the same fix. A no-op for Kokkos
# installs whose target is sound (every CMake-built Kokkos 3.x/4.x/5.x).
if(TARGET Kokkos::kokkos AND DEFINED Kokkos_INCLUDE_DIRS)
  get_target_property(_attnsink_kokkos_inc Kokkos::kokkos INTERFACE_INCLUDE_DIRECTORIES)
  set(_attnsink_kokkos_broken FALSE)
  foreach(_dir IN LISTS _attnsink_kokkos_inc)
    if(NOT _dir MATCHES "^\\$<" AND NOT EXISTS "${_dir}")
      set(_attnsink_kokkos_broken TRUE)
    endif()
  endforeach()
  if(_attnsink_kokkos_broken)
    set(_attnsink_kokkos_fixed "")
    foreach(_dir IN LISTS Kokkos_INCLUDE_DIRS)
      get_filename_component(_dir "${_dir}" ABSOLUTE)
      if(EXISTS "${_dir}/Kokkos_Core.hpp")
        list(APPEND _attnsink_kokkos_fixed "${_dir}")
      endif()
    endforeach()
    if(_attnsink_kokkos_fixed)
      set_target_properties(Kokkos::kokkos PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_attnsink_kokkos_fixed}")
    endif()
  endif()
  unset(_attnsink_kokkos_inc)
  unset(_attnsink_kokkos_fixed)
  unset(_attnsink_kokkos_broken)
endif()
