#!/usr/bin/env bash
# A/B of two mirrorfs builds in one sitting, the way changes for issue #7
# are judged: on this VM single runs swing more than most changes do, so
# both builds run side by side against passthrough_ll. Each round starts
# fresh daemons for both builds and a fresh passthrough_ll mount, runs one
# fio test on each in shuffled order, and stops them all again. Prints per
# row the median MB/s over the rounds and the median of its per-round ratio
# to passthrough_ll.
#
# Usage: tests/bench/ab.sh OLD_MIRRORFS NEW_MIRRORFS
#   e.g. git worktree add /tmp/old HEAD~1 && scripts/build.sh /tmp/old-build ... ;
#        tests/bench/ab.sh /tmp/old-build/cli/mirrorfs build/cli/mirrorfs
#
# Environment: AB_TEST (randwrite_4k_fsync32, randwrite_4k_fsync1,
# randwrite_4k, seqwrite_1M, seqwrite_1M_cached (no final fsync: the
# write path without the disk's flush), seqread_1M or randread_4k (cold:
# caches dropped first);
# default randwrite_4k_fsync32), AB_ROUNDS (5),
# AB_PEERS (serve peers on loopback per mount, sync mode; 1), AB_SIZE (fio
# file size, 256M), AB_RUNTIME (seconds of a random test, 3),
# BENCH_PLL_TUNABLES and BENCH_PAGE_REPORTING_ORDER (see bench.sh),
# BENCH_DIR (parent of the scratch folder, /var/tmp). Needs root,
# /dev/fuse, fio and libfuse3-dev.
set -euo pipefail
shopt -s inherit_errexit  # a failing step inside $(...) stops the script too
cd "$(dirname "$0")/../.."
repo=$(pwd)
bench_name="ab"
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"

if [[ $# -ne 2 || ! -x $1 || ! -x $2 ]]; then
  echo "usage: tests/bench/ab.sh OLD_MIRRORFS NEW_MIRRORFS (two mirrorfs binaries)" >&2
  exit 2
fi
declare -A binary=([old]=$(realpath "$1") [new]=$(realpath "$2"))
test_name=${AB_TEST:-randwrite_4k_fsync32}
rounds=${AB_ROUNDS:-5}
peers=${AB_PEERS:-1}
size=${AB_SIZE:-256M}
runtime=${AB_RUNTIME:-3}
section="write"  # fio's result section
case $test_name in
  seqwrite_1M) fio_args=(--rw=write --bs=1M --end_fsync=1) ;;
  seqwrite_1M_cached) fio_args=(--rw=write --bs=1M) ;;
  seqread_1M)
    fio_args=(--rw=read --bs=1M)
    section="read"
    ;;
  randread_4k)
    fio_args=(--rw=randread --bs=4k --time_based "--runtime=$runtime")
    section="read"
    ;;
  randwrite_4k) fio_args=(--rw=randwrite --bs=4k --time_based "--runtime=$runtime") ;;
  randwrite_4k_fsync1) fio_args=(--rw=randwrite --bs=4k --fsync=1 --time_based "--runtime=$runtime") ;;
  randwrite_4k_fsync32) fio_args=(--rw=randwrite --bs=4k --fsync=32 --time_based "--runtime=$runtime") ;;
  *)
    echo "ab: unknown AB_TEST $test_name" >&2
    exit 2
    ;;
esac
command -v fio >/dev/null || bash scripts/install-deps.sh >/dev/null

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/mirrorfs-ab.XXXXXX")
cleanup() {
  local rc=$? m p
  set +e
  trap - EXIT
  restore_vm_state
  while read -r m; do
    fusermount3 -u "$m" 2>/dev/null || umount -l "$m"
  done < <(awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts)
  for p in $(pgrep -f -- "$work/" || true); do kill "$p" 2>/dev/null; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set_vm_state

build_passthrough_ll "$work"

# Starts row $1 of round $2 in $work/$1.$2; prints its mount point. (Run
# in $(...): the daemons must not keep its stdout, or it never ends.)
up() {
  local row=$1 d=$work/$1.$2 c ep peer_args=()
  mkdir -p "$d/mnt"
  if [[ $row == passthrough_ll ]]; then
    mkdir -p "$d/src"
    GLIBC_TUNABLES=$pll_tunables "$work/passthrough_ll" \
      -o "source=$d/src,default_permissions,allow_other" "$d/mnt" >/dev/null
  else
    bin=${binary[$row]}
    mkdir -p "$d/store"
    for ((c = 1; c <= peers; c++)); do
      mkdir -p "$d/copy$c"
      ep=tcp://127.0.0.1:$(free_port)
      "$bin" serve "$d/copy$c" --listen "$ep" --name "copy$c" >/dev/null
      peer_args+=(--peer "copy$c=$ep")
    done
    "$bin" mount "$d/store" "$d/mnt" --name ab --listen "tcp://127.0.0.1:$(free_port)" \
      "${peer_args[@]}" >/dev/null
    for ((c = 1; c <= peers; c++)); do wait_connected "$d/store" "copy$c"; done
  fi
  echo "$d/mnt"
}

# Stops row $1 of round $2 and removes its folder.
down() {
  local row=$1 d=$work/$1.$2 c
  if [[ $row == passthrough_ll ]]; then
    fusermount3 -u "$d/mnt"
  else
    "${binary[$row]}" stop "$d/store" >/dev/null
    for ((c = 1; c <= peers; c++)); do "${binary[$row]}" stop "$d/copy$c" >/dev/null; done
  fi
  rm -rf "$d"
}

echo "ab: $test_name, $rounds rounds, $peers peer(s), $size; old ${binary[old]}, new ${binary[new]}"
echo "ab: VM state $(vm_state)"
: >"$work/results"
for ((r = 1; r <= rounds; r++)); do
  for row in $(printf '%s\n' passthrough_ll old new | shuf); do
    mnt=$(up "$row" "$r")
    if [[ $test_name != seqwrite_1M* ]]; then  # random writes into a laid-out file
      dd if=/dev/zero of="$mnt/ab.dat" bs=1M count="${size%M}" status=none
    fi
    if [[ $section == read ]]; then drop_caches; else sync; fi
    mbps=$(fio --name=ab --filename="$mnt/ab.dat" --ioengine=psync --iodepth=1 --size="$size" \
      --output-format=json "${fio_args[@]}" |
      "$python" -c 'import json, sys; w = json.load(sys.stdin)["jobs"][0][sys.argv[1]]; print("%.1f" % (w["bw_bytes"] / 1e6))' "$section")
    echo "  round $r: $row $mbps MB/s"
    echo "$r $row $mbps" >>"$work/results"
    down "$row" "$r"
  done
done

"$python" - "$work/results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, row, mbps = line.split()
    runs[row][r] = float(mbps)
base = runs["passthrough_ll"]
print(f"{'row':16s} {'median MB/s':>12s} {'x passthrough_ll':>17s}   all MB/s")
for row in ("passthrough_ll", "old", "new"):
    v = runs[row]
    ratio = statistics.median(v[r] / base[r] for r in v if base.get(r))
    print(f"{row:16s} {statistics.median(v.values()):12.1f} {ratio:17.2f}   "
          + " ".join(f"{x:.0f}" for x in sorted(v.values())))
PY
