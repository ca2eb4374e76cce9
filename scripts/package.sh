#!/usr/bin/env bash
# Builds the Debian package mirrorfs_VERSION_ARCH.deb: a release build
# (no test seams) installed under /usr, packed by CPack
# (packaging/CMakeLists.txt says what goes in). Needs the packages of
# scripts/install-deps.sh.
# Usage: scripts/package.sh [BUILD_DIR]     (default build-release/)
# Build output goes to stderr; the last line on stdout is the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${1:-build-release}
bash scripts/build.sh "$build_dir" -DMIRRORFS_BUILD_TESTS=OFF \
  -DCMAKE_INSTALL_PREFIX=/usr >&2
rm -f "$build_dir"/mirrorfs_*.deb
if ! (cd "$build_dir" && cpack -G DEB) >"$build_dir/cpack.log" 2>&1; then
  cat "$build_dir/cpack.log" >&2
  echo "package: cpack failed (log: $build_dir/cpack.log)" >&2
  exit 1
fi
debs=("$build_dir"/mirrorfs_*.deb)
[[ -f ${debs[0]} ]] || { echo "package: cpack made no .deb in $build_dir" >&2; exit 1; }
echo "${debs[0]}"
