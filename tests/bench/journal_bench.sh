#!/usr/bin/env bash
# What the write-intent journal costs: fio write throughput of a one-peer
# mirrorfs mount (sync mode, peer on loopback) with the journal, against the
# same build mounted with the test-only `--test-no-intent-journal`.
#
# Tests: seqwrite_1M          1 MiB sequential writes of BENCH_SIZE, end_fsync
#        randwrite_4k_fsync32 4 KiB random writes into a BENCH_SIZE file,
#                             fsync every 32, BENCH_RUNTIME s
# Each figure is the median of BENCH_REPS repetitions, interleaved (rep 1 of
# both rows and tests, then rep 2, ...). Prints the table and the ratio
# journal / no-journal per test; checks each peer's copy equals its primary.
#
# Environment: BENCH_SIZE (default 256M), BENCH_RUNTIME (3), BENCH_REPS (3),
# BENCH_DIR (parent of the scratch folder, default /var/tmp), MIRRORFS_BIN
# (default build/cli/mirrorfs; a build with the tests, as scripts/build.sh
# makes: the flag exists only there).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
bench_name="journal_bench"
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"

size=${BENCH_SIZE:-256M}
runtime=${BENCH_RUNTIME:-3}
reps=${BENCH_REPS:-3}
bin=${MIRRORFS_BIN:-$repo/build/cli/mirrorfs}
[[ -x $bin ]] || { echo "journal_bench: no mirrorfs binary at $bin" >&2; exit 1; }
command -v fio >/dev/null || { echo "journal_bench: fio is not installed" >&2; exit 1; }

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/mirrorfs-jbench.XXXXXX")
out=$work/fio
mkdir -p "$out"
rows=(journal nojournal)

# Pids of mirrorfs daemons whose command line names $work (ours only).
our_pids() {
  local p
  for p in /proc/[0-9]*; do
    [[ -r $p/cmdline ]] || continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "^$bin .*$work/"; then
      echo "${p#/proc/}"
    fi
  done
}

cleanup() {
  local rc=$? row pid
  set +e
  trap - EXIT
  for row in "${rows[@]}"; do
    for s in "$work/$row-store" "$work/$row-copy"; do
      [[ -d $s/.mirrorfs ]] && timeout 30 "$bin" stop "$s" >/dev/null 2>&1
    done
  done
  for row in "${rows[@]}"; do
    mountpoint -q "$work/$row-mnt" 2>/dev/null && fusermount3 -uz "$work/$row-mnt"
  done
  for pid in $(our_pids); do kill "$pid" 2>/dev/null; done
  rm -rf "$work"
  [[ $rc -ne 0 ]] && echo "journal_bench: failed (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT



echo "journal_bench: setting up ${rows[*]} in $work ($bin)"
for row in "${rows[@]}"; do
  mkdir -p "$work/$row-store" "$work/$row-mnt" "$work/$row-copy"
  ep_copy=tcp://127.0.0.1:$(free_port)
  ep_primary=tcp://127.0.0.1:$(free_port)
  "$bin" serve "$work/$row-copy" --listen "$ep_copy" --name copy
  extra=()
  [[ $row == nojournal ]] && extra=(--test-no-intent-journal)
  "$bin" mount "$work/$row-store" "$work/$row-mnt" --name bench --listen "$ep_primary" \
    --peer "copy=$ep_copy" "${extra[@]}"
  wait_connected "$work/$row-store" copy
done
# The switch must really be off on one and on on the other.
"$python" - "$bin" "$work" <<'EOF'
import json, subprocess, sys
binary, work = sys.argv[1:]
for row, want in (("journal", True), ("nojournal", False)):
    doc = json.loads(subprocess.run([binary, "status", f"{work}/{row}-store", "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    got = doc.get("intent", {}).get("enabled")
    if got is not want:
        sys.exit(f"journal_bench: {row}: intent.enabled is {got!r}, expected {want}")
EOF

tests=(seqwrite_1M randwrite_4k_fsync32)
common=(--ioengine=psync --direct=0 --iodepth=1 --numjobs=1 --size="$size"
  --fallocate=none --output-format=json)

run_fio() {
  local row=$1 test=$2 rep=$3 file=$work/$1-mnt/bench.dat
  local json=$out/$row.$test.$rep.json args=()
  case $test in
    seqwrite_1M)
      rm -f "$file"
      args=(--rw=write --bs=1M --end_fsync=1) ;;
    randwrite_4k_fsync32)
      args=(--rw=randwrite --bs=4k --fsync=32 --time_based --runtime="$runtime") ;;
  esac
  sync
  fio --name="$test" --filename="$file" "${common[@]}" "${args[@]}" --output="$json"
  printf '  rep %s  %-10s %-22s %s\n' "$rep" "$row" "$test" \
    "$("$python" -c 'import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print("%9.1f MB/s %10.0f IOPS" % (w["bw_bytes"] / 1e6, w["iops"]))' "$json")"
}

echo "journal_bench: size $size, random ${runtime} s, $reps repetitions, interleaved"
for rep in $(seq 1 "$reps"); do
  for test in "${tests[@]}"; do
    # Alternate which row goes first, so neither always runs on a warmer cache.
    if (( rep % 2 )); then order=(journal nojournal); else order=(nojournal journal); fi
    for row in "${order[@]}"; do
      run_fio "$row" "$test" "$rep"
    done
  done
done

# Each peer's copy must equal its primary's once the writes settled.
for row in "${rows[@]}"; do
  "$python" - "$bin" "$work/$row-store" <<'EOF'
import json, subprocess, sys, time
binary, store = sys.argv[1:]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    doc = json.loads(subprocess.run([binary, "status", store, "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    if all(p.get("in_sync") for p in doc.get("peers", [])):
        sys.exit(0)
    time.sleep(0.1)
sys.exit(f"journal_bench: {store}: peer not in sync after 60 s")
EOF
  cmp -s "$work/$row-store/bench.dat" "$work/$row-copy/bench.dat" ||
    { echo "journal_bench: $row: the peer's copy differs from the primary's" >&2; exit 1; }
done

"$python" - "$out" "$reps" "${tests[*]}" <<'EOF'
import json, os, statistics, sys
out, reps, tests = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def figures(row, test):
    mbps = []
    for rep in range(1, reps + 1):
        with open(os.path.join(out, f"{row}.{test}.{rep}.json")) as f:
            mbps.append(json.load(f)["jobs"][0]["write"]["bw_bytes"] / 1e6)
    return statistics.median(mbps), mbps
print()
# Each repetition runs the two rows back to back, so the ratio within a
# repetition cancels the disk's drift; its median is the figure to quote.
print("| test | journal MB/s median [all] | no journal MB/s median [all] | ratio of medians | median of paired ratios |")
print("|---|---|---|---|---|")
for test in tests:
    j, ja = figures("journal", test)
    n, na = figures("nojournal", test)
    paired = statistics.median(a / b for a, b in zip(ja, na))
    fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
    print(f"| {test} | {j:.1f} [{fmt(ja)}] | {n:.1f} [{fmt(na)}] | {j / n:.2f} | {paired:.2f} |")
print()
print("peer copies identical to their primaries: true")
EOF
