#!/usr/bin/env bash
# Configures and builds mirrorfs.
# Usage: scripts/build.sh [BUILD_DIR] [EXTRA-CMAKE-ARG...]
#   scripts/build.sh                      # build/, RelWithDebInfo
#   scripts/build.sh build-asan -DMIRRORFS_SANITIZE=address,undefined
# BUILD_DIR may also come from the environment; a first argument that starts
# with '-' is taken as a cmake argument. BUILD_TARGET builds one target
# only (e.g. unit_tests: every unit test binary, no daemon).
#   BUILD_TARGET=unit_tests scripts/build.sh build-asan -DMIRRORFS_SANITIZE=address,undefined
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${BUILD_DIR:-build}
if [[ $# -gt 0 && $1 != -* ]]; then
  build_dir=$1
  shift
fi

# Debian's python3 carries python3-pytest and python3-zmq; a python3 found
# first on PATH (pyenv, venv) usually does not.
python=/usr/bin/python3
[[ -x $python ]] || python=$(command -v python3)

echo "build: cmake -S . -B $build_dir $*"
mkdir -p "$build_dir"
if ! cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMIRRORFS_PYTHON="$python" "$@" >"$build_dir/configure.log" 2>&1; then
  cat "$build_dir/configure.log" >&2
  echo "build: cmake configure failed (log: $build_dir/configure.log)" >&2
  exit 1
fi
cmake --build "$build_dir" -j "$(nproc)" ${BUILD_TARGET:+--target "$BUILD_TARGET"}
