#!/usr/bin/env bash
# Installs the Debian 12 packages mirrorfs needs to build, test and demo.
# Idempotent: when every package is already installed it touches nothing.
# Usage: scripts/install-deps.sh [EXTRA-PACKAGE...]
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libfuse3-dev fuse3 librocksdb-dev libzmq3-dev cppzmq-dev libcli11-dev libgtest-dev libsodium-dev
  python3 python3-pytest python3-zmq tcpdump
  qemu-utils fio bc attr xxd procps psmisc iproute2 clang-format util-linux-extra
  dpkg-dev file
  "$@"
)

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "install-deps: need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
else
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# FUSE needs the kernel module and /dev/fuse. In containers the module may be
# built in or unavailable; only the device node matters.
if [[ ! -e /dev/fuse ]]; then
  as_root modprobe fuse 2>/dev/null || true
fi
if [[ ! -e /dev/fuse ]]; then
  echo "install-deps: /dev/fuse is missing: load the fuse module (modprobe fuse)" \
    "or, in a container, pass the device in (--device /dev/fuse --cap-add SYS_ADMIN)" >&2
  exit 1
fi
