#!/usr/bin/env bash
# Installs attnsink's build and test dependencies from Debian 12 (bookworm) packages.
# Catch2 v3 comes from bookworm-backports, which this script adds to apt's sources.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "attnsink: apt-get update reported errors (an unreachable extra source?); continuing"
$SUDO apt-get install -y -qq --no-install-recommends \
  g++ cmake ninja-build ccache pkg-config \
  xtensor-dev libxsimd-dev libtbb-dev libbenchmark-dev \
  libopenblas-dev libxtensor-blas-dev python3-matplotlib fortunes \
  libtrilinos-kokkos-dev >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports libcatch2-dev >/dev/null
echo "attnsink: dependencies installed"
