#!/usr/bin/env bash
# mirrorfs in one command, on a fresh Debian 12 machine (as root):
# installs the packages, builds, then mirrors a store to a second store on
# loopback, writes through the mount, shows both copies and the status, and
# stops both nodes. Everything lives in a temporary folder that is removed at
# the end (DEMO_KEEP=1 keeps it). Exits non-zero if the copies differ.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { printf '\n== %s\n' "$*"; }
show() {
  printf '$ %s\n' "$*"
  "$@"
}

say "packages"
bash scripts/install-deps.sh
# MIRRORFS_BIN=PATH runs the demo with that binary instead of building one.
bin=${MIRRORFS_BIN:-$repo/build/cli/mirrorfs}
if [[ -z ${MIRRORFS_BIN:-} ]]; then
  say "build"
  bash scripts/build.sh >/dev/null
fi
[[ -x $bin ]] || { echo "demo: no mirrorfs binary at $bin" >&2; exit 1; }
python=/usr/bin/python3
[[ -x $python ]] || python=python3

work=$(mktemp -d /tmp/mirrorfs-demo.XXXXXX)
store=$work/primary-store
copy=$work/backup-store
mnt=$work/mnt
mkdir -p "$store" "$copy" "$mnt"
pids=()

# Every pid of a mirrorfs daemon whose command line names our folder.
daemon_pids() {
  pgrep -f -- "mirrorfs (mount|serve) $work/" || true
}

cleanup() {
  local rc=$? pid
  set +e
  trap - EXIT
  if [[ $rc -ne 0 ]]; then
    echo "demo: failed (exit $rc); cleaning up" >&2
    for log in "$store/.mirrorfs/log" "$copy/.mirrorfs/log"; do
      [[ -s $log ]] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  for s in "$store" "$copy"; do
    "$bin" status "$s" >/dev/null 2>&1 && timeout 20 "$bin" stop "$s" >/dev/null 2>&1
  done
  if mountpoint -q "$mnt" 2>/dev/null; then
    fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt"
  fi
  mapfile -t left < <(daemon_pids)
  for pid in "${pids[@]}" "${left[@]}"; do
    kill "$pid" 2>/dev/null
  done
  if mountpoint -q "$mnt" 2>/dev/null; then
    fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt"
  fi
  if [[ ${DEMO_KEEP:-0} == 1 ]]; then
    echo "demo: kept $work"
  elif ! mountpoint -q "$mnt" 2>/dev/null; then
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_backup=$(free_port)
port_primary=$(free_port)
while [[ $port_primary == "$port_backup" ]]; do port_primary=$(free_port); done
ep_backup=tcp://127.0.0.1:$port_backup
ep_primary=tcp://127.0.0.1:$port_primary

# Polls `status --json` of $1 until peer $2 is connected (20 s at most).
wait_connected() {
  "$python" - "$bin" "$1" "$2" <<'EOF'
import json, subprocess, sys, time
binary, store, peer = sys.argv[1:]
deadline = time.monotonic() + 20
state = None
while time.monotonic() < deadline:
    r = subprocess.run([binary, "status", store, "--json"], capture_output=True, text=True)
    if r.returncode == 0:
        peers = {p["name"]: p for p in json.loads(r.stdout).get("peers", [])}
        state = peers.get(peer, {}).get("state")
        if state == "connected":
            sys.exit(0)
    time.sleep(0.1)
sys.exit(f"demo: peer {peer} not connected after 20 s (state: {state})")
EOF
}

say "a secondary node 'backup' serving $copy"
show "$bin" serve "$copy" --listen "$ep_backup" --name backup
mapfile -t pids < <(daemon_pids)

say "the primary node 'primary': $store mounted at $mnt, mirrored to backup"
show "$bin" mount "$store" "$mnt" --name primary --listen "$ep_primary" --peer "backup=$ep_backup"
mapfile -t pids < <(daemon_pids)
wait_connected "$store" backup

say "write through the mount: a 64 MiB sparse image with data at both ends, and a text file"
show truncate -s 64M "$mnt/disk.img"
show dd if=/dev/urandom of="$mnt/disk.img" bs=1M count=4 conv=notrunc,fsync status=none
show dd if=/dev/urandom of="$mnt/disk.img" bs=1M count=4 seek=60 conv=notrunc,fsync status=none
echo "hello from $(uname -n) at $(date -u +%FT%TZ)" >"$mnt/hello.txt"
printf '$ echo ... > %s\n' "$mnt/hello.txt"

say "both copies (ls -ls shows allocated blocks: holes stay holes)"
show ls -ls "$store" "$copy"
show sha256sum "$store/disk.img" "$copy/disk.img" "$store/hello.txt" "$copy/hello.txt"
for f in disk.img hello.txt; do
  a=$(sha256sum <"$store/$f")
  b=$(sha256sum <"$copy/$f")
  if [[ $a != "$b" ]]; then
    echo "demo: $f differs between $store and $copy" >&2
    exit 1
  fi
done

say "status"
show "$bin" status "$store"
show "$bin" status "$copy"
printf '$ %s status %s --json\n' "$bin" "$store"
"$bin" status "$store" --json | "$python" -m json.tool

say "stop both nodes"
show "$bin" stop "$store"
show "$bin" stop "$copy"
if mountpoint -q "$mnt"; then
  echo "demo: $mnt is still mounted after mirrorfs stop" >&2
  exit 1
fi

say "demo OK: both copies identical; nodes stopped"
