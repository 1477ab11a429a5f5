# Defines attnsink::kokkos when Kokkos is found (see issue 7). Placeholder until the backend lands.
