#!/usr/bin/env bash
# fio benchmark of mirrorfs against its baselines, on this machine.
#
# Rows:  store           the store folder itself (ext4, no FUSE)
#        bindfs          bindfs -o big_writes,max_write=131072 --multithreaded
#        mirrorfs        mirrorfs mount, no peer
#        mirrorfs-peer   mirrorfs mount, one peer on loopback, sync mode
#        mirrorfs-curve  as mirrorfs-peer, with CURVE-encrypted peer links
#        mirrorfs-down   mirrorfs mount whose one peer is down (its changes
#                        go to the fracture log): compare with "mirrorfs"
# Tests: seqwrite_1M          1 MiB sequential writes of BENCH_SIZE, final fsync
#        randwrite_4k_fsync32 4 KiB random writes, fsync every 32, BENCH_RUNTIME s
#        randwrite_4k_fsync1  4 KiB random writes, fsync every write, BENCH_RUNTIME s
# Each figure is the median of BENCH_REPS repetitions, interleaved (rep 1 of
# every row and test, then rep 2, ...), so drift hits every row alike.
#
# Environment: BENCH_SIZE (default 512M), BENCH_RUNTIME (3), BENCH_REPS (3),
# BENCH_ROWS (default "store bindfs mirrorfs mirrorfs-peer"),
# BENCH_DIR (parent of the scratch folder, default /var/tmp),
# MIRRORFS_BIN (default build/cli/mirrorfs; built if missing).
# Output: a table on stdout and tests/bench/results/bench.json (plus the raw
# fio JSON in tests/bench/results/fio/).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

size=${BENCH_SIZE:-512M}
runtime=${BENCH_RUNTIME:-3}
reps=${BENCH_REPS:-3}
results=$repo/tests/bench/results
python=/usr/bin/python3
[[ -x $python ]] || python=python3

read -r -a rows <<<"${BENCH_ROWS:-store bindfs mirrorfs mirrorfs-peer mirrorfs-down}"
has_row() { [[ " ${rows[*]} " == *" $1 "* ]]; }

bash scripts/install-deps.sh bindfs >/dev/null
bin=${MIRRORFS_BIN:-$repo/build/cli/mirrorfs}
if [[ ! -x $bin ]] && { has_row mirrorfs || has_row mirrorfs-peer; }; then
  bash scripts/build.sh >/dev/null
fi

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/mirrorfs-bench.XXXXXX")
mkdir -p "$results/fio"
rm -f "$results"/fio/*.json
pids=()

cleanup() {
  local rc=$? s m pid
  set +e
  trap - EXIT
  for s in "$work/mfs-store" "$work/mfsp-store" "$work/mfsp-copy" "$work/mfsd-store" "$work/mfsc-store" "$work/mfsc-copy"; do
    [[ -d $s/.mirrorfs ]] && "$bin" status "$s" >/dev/null 2>&1 &&
      timeout 30 "$bin" stop "$s" >/dev/null 2>&1
  done
  for m in "$work/bindfs-mnt" "$work/mfs-mnt" "$work/mfsp-mnt" "$work/mfsd-mnt" "$work/mfsc-mnt"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u "$m" 2>/dev/null || fusermount -u "$m" 2>/dev/null || umount -l "$m"
    fi
  done
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for m in "$work/bindfs-mnt" "$work/mfs-mnt" "$work/mfsp-mnt" "$work/mfsd-mnt" "$work/mfsc-mnt"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  rm -rf "$work"
  [[ $rc -ne 0 ]] && echo "bench: failed (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
remember_pids() {
  local p
  for p in $(pgrep -f -- "$1" || true); do pids+=("$p"); done
}

# Polls `status --json` of $1 until peer $2 is connected (30 s at most).
wait_connected() {
  "$python" - "$bin" "$1" "$2" <<'EOF'
import json, subprocess, sys, time
binary, store, peer = sys.argv[1:]
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    r = subprocess.run([binary, "status", store, "--json"], capture_output=True, text=True)
    if r.returncode == 0 and any(p.get("name") == peer and p.get("state") == "connected"
                                 for p in json.loads(r.stdout).get("peers", [])):
        sys.exit(0)
    time.sleep(0.1)
sys.exit(f"bench: peer {peer} of {store} not connected after 30 s")
EOF
}

echo "bench: setting up ${rows[*]} in $work"
mkdir -p "$work"/{store,bindfs-src,bindfs-mnt,mfs-store,mfs-mnt,mfsp-store,mfsp-mnt,mfsp-copy,mfsd-store,mfsd-mnt,mfsc-store,mfsc-mnt,mfsc-copy,keys}
if has_row bindfs; then
  bindfs -o big_writes,max_write=131072 --multithreaded "$work/bindfs-src" "$work/bindfs-mnt"
  remember_pids "bindfs .*$work/bindfs-src"
fi
if has_row mirrorfs; then
  "$bin" mount "$work/mfs-store" "$work/mfs-mnt" --name bench
  remember_pids "mirrorfs mount $work/mfs-store"
fi
if has_row mirrorfs-peer; then
  ep_copy=tcp://127.0.0.1:$(free_port)
  ep_primary=tcp://127.0.0.1:$(free_port)
  "$bin" serve "$work/mfsp-copy" --listen "$ep_copy" --name copy
  remember_pids "mirrorfs serve $work/mfsp-copy"
  "$bin" mount "$work/mfsp-store" "$work/mfsp-mnt" --name bench --listen "$ep_primary" \
    --peer "copy=$ep_copy"
  remember_pids "mirrorfs mount $work/mfsp-store"
  wait_connected "$work/mfsp-store" copy
fi
if has_row mirrorfs-down; then
  # A peer nobody serves: every change is logged for it.
  "$bin" mount "$work/mfsd-store" "$work/mfsd-mnt" --name bench \
    --peer "gone=tcp://127.0.0.1:$(free_port)" --peer-timeout 0.5
  remember_pids "mirrorfs mount $work/mfsd-store"
fi
if has_row mirrorfs-curve; then
  "$bin" keygen "$work/keys/p.key" >/dev/null
  "$bin" keygen "$work/keys/c.key" >/dev/null
  echo "copy $(cat "$work/keys/c.key.pub")" >"$work/keys/p.auth"
  echo "bench $(cat "$work/keys/p.key.pub")" >"$work/keys/c.auth"
  ep_ccopy=tcp://127.0.0.1:$(free_port)
  "$bin" serve "$work/mfsc-copy" --listen "$ep_ccopy" --name copy \
    --key "$work/keys/c.key" --authorized-keys "$work/keys/c.auth"
  remember_pids "mirrorfs serve $work/mfsc-copy"
  "$bin" mount "$work/mfsc-store" "$work/mfsc-mnt" --name bench \
    --peer "copy=$ep_ccopy" --key "$work/keys/p.key" \
    --authorized-keys "$work/keys/p.auth"
  remember_pids "mirrorfs mount $work/mfsc-store"
  wait_connected "$work/mfsc-store" copy
fi
declare -A dir=(
  [store]=$work/store [bindfs]=$work/bindfs-mnt
  [mirrorfs]=$work/mfs-mnt [mirrorfs-peer]=$work/mfsp-mnt
  [mirrorfs-down]=$work/mfsd-mnt [mirrorfs-curve]=$work/mfsc-mnt
)
tests=(seqwrite_1M randwrite_4k_fsync32 randwrite_4k_fsync1)
common=(--ioengine=psync --direct=0 --iodepth=1 --numjobs=1 --size="$size"
  --fallocate=none --output-format=json)

run_fio() {
  local row=$1 test=$2 rep=$3 file=${dir[$1]}/bench.dat
  local out=$results/fio/$row.$test.$rep.json
  local args=()
  case $test in
    seqwrite_1M)
      rm -f "$file"
      args=(--rw=write --bs=1M --end_fsync=1) ;;
    randwrite_4k_fsync32)
      args=(--rw=randwrite --bs=4k --fsync=32 --time_based --runtime="$runtime") ;;
    randwrite_4k_fsync1)
      args=(--rw=randwrite --bs=4k --fsync=1 --time_based --runtime="$runtime") ;;
  esac
  sync
  fio --name="$test" --filename="$file" "${common[@]}" "${args[@]}" --output="$out"
  printf '  rep %s  %-14s %-22s %s\n' "$rep" "$row" "$test" \
    "$("$python" -c 'import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print("%9.1f MB/s %10.0f IOPS" % (w["bw_bytes"] / 1e6, w["iops"]))' "$out")"
}

echo "bench: size $size, random tests ${runtime} s, $reps repetitions, interleaved"
for rep in $(seq 1 "$reps"); do
  for row in "${rows[@]}"; do
    for test in "${tests[@]}"; do
      run_fio "$row" "$test" "$rep"
    done
  done
done

# The peer's copy must equal the primary's, or the peer row measured nothing.
mirror_ok=n/a
if has_row mirrorfs-peer; then
  mirror_ok=false
  if cmp -s "$work/mfsp-store/bench.dat" "$work/mfsp-copy/bench.dat"; then
    mirror_ok=true
  fi
fi

"$python" - "$results" "$size" "$runtime" "$reps" "$mirror_ok" "${rows[*]}" "${tests[*]}" <<'EOF'
import json, os, platform, statistics, subprocess, sys
results, size, runtime, reps, mirror_ok, rows, tests = sys.argv[1:]
rows, tests, reps = rows.split(), tests.split(), int(reps)
table = {}
for row in rows:
    for test in tests:
        mbps, iops = [], []
        for rep in range(1, reps + 1):
            with open(os.path.join(results, "fio", f"{row}.{test}.{rep}.json")) as f:
                w = json.load(f)["jobs"][0]["write"]
            mbps.append(w["bw_bytes"] / 1e6)
            iops.append(w["iops"])
        table.setdefault(row, {})[test] = {
            "mb_per_s": round(statistics.median(mbps), 1), "iops": round(statistics.median(iops)),
            "mb_per_s_all": [round(x, 1) for x in mbps], "iops_all": [round(x) for x in iops]}
for row in rows:
    for test in tests:
        base = table.get("bindfs", {}).get(test, {}).get("mb_per_s")
        cell = table[row][test]
        cell["ratio_vs_bindfs"] = round(cell["mb_per_s"] / base, 2) if base else None
fio_version = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
doc = {"size": size, "runtime_seconds": int(runtime), "repetitions": reps,
       "statistic": "median",
       "mirror_verified": None if mirror_ok == "n/a" else mirror_ok == "true",
       "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "fio": fio_version},
       "results": table}
with open(os.path.join(results, "bench.json"), "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
print()
print("| row | test | MB/s median [min–max] | IOPS | vs bindfs |")
print("|---|---|---|---|---|")
for test in tests:
    for row in rows:
        c = table[row][test]
        lo, hi = min(c["mb_per_s_all"]), max(c["mb_per_s_all"])
        ratio = "" if c["ratio_vs_bindfs"] is None else f"{c['ratio_vs_bindfs']:.2f}"
        print(f"| {row} | {test} | {c['mb_per_s']:.1f} [{lo:.1f}–{hi:.1f}] | {c['iops']} | {ratio} |")
print()
print(f"peer copy identical to the primary's: {mirror_ok}")
print(f"wrote {os.path.join(results, 'bench.json')}")
EOF
[[ $mirror_ok != false ]] || { echo "bench: the peer's copy differs from the primary's" >&2; exit 1; }
