#!/usr/bin/env bash
# Builds and runs the consumer project the way a user would consume attnsink.
#   check.sh install SOURCE_DIR BUILD_DIR WORK_DIR   (cmake --install, then find_package)
#   check.sh subdirectory SOURCE_DIR BUILD_DIR WORK_DIR
set -euo pipefail
mode=$1 src=$2 build=$3 work=$4
here="$src/tests/consumer"
rm -rf "$work"
mkdir -p "$work"
case "$mode" in
  install)
    cmake --install "$build" --prefix "$work/prefix" >/dev/null
    test -f "$work/prefix/lib/cmake/attnsink/attnsinkConfigVersion.cmake"
    cmake -S "$here/find_package" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
    ;;
  subdirectory)
    cmake -S "$here/add_subdirectory" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DATTNSINK_SOURCE_DIR="$src" >/dev/null
    ;;
  *) echo "usage: check.sh install|subdirectory SOURCE_DIR BUILD_DIR WORK_DIR" >&2; exit 2 ;;
esac
cmake --build "$work/build" >/dev/null
"$work/build/consumer"
