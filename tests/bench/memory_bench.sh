#!/usr/bin/env bash
# Memory benchmark of the mirrorfs mount daemon (issue #7).
#
# 1. At rest: a mount with one peer on loopback (sync mode) holding
#    BENCH_IMAGES (default 100) images of 64 MiB, each sparse (truncate) with
#    1 MiB of data written at a different offset in each; once the peer has
#    everything, BENCH_IDLE (5) s idle, then the mount daemon's VmRSS (and
#    VmHWM, and the peer's VmRSS). Target: VmRSS < 100 MiB.
# 2. Fracture log: a mount whose one peer is down (`--peer gone=tcp://...` on
#    a port nobody serves, --peer-timeout 0.5) and a 1 TiB sparse image
#    (truncate -s 1T); fio writes BENCH_IO_SIZE (default 1g) of 4 KiB blocks at
#    random offsets over the whole TiB (psync, iodepth 1, norandommap: about
#    262144 scattered extents for 1 GiB), as fast as it can; then the mount
#    daemon's VmRSS and VmHWM, and fracture_extents / fracture_bytes of the
#    peer (`mirrorfs status STORE --json`, peers[0]). Target: VmHWM (the peak
#    while logging; VmRSS is reported too) < 200 MiB.
# At ~8k IOPS, 1 GiB of 4 KiB writes takes 30-40 s.
# Targets are reported (met / NOT met), never the exit status.
#
# Environment: BENCH_IMAGES (100), BENCH_IDLE (5), BENCH_IO_SIZE (1g, fio
# syntax), BENCH_DIR (parent of the scratch folder, default /var/tmp),
# BENCH_RESULTS (where the results go, default tests/bench/results),
# MIRRORFS_BIN (default build/cli/mirrorfs; built if missing).
# Output: a table on stdout and BENCH_RESULTS/memory.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
bench_name="memory bench"
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"

images=${BENCH_IMAGES:-100}
idle=${BENCH_IDLE:-5}
io_size=${BENCH_IO_SIZE:-1g}
results=${BENCH_RESULTS:-$repo/tests/bench/results}

bash scripts/install-deps.sh >/dev/null
bin=${MIRRORFS_BIN:-$repo/build/cli/mirrorfs}
[[ -x $bin ]] || bash scripts/build.sh >/dev/null

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/mirrorfs-memory.XXXXXX")
mkdir -p "$results"
pids=()

cleanup() {
  local rc=$? s m pid
  set +e
  trap - EXIT
  for s in "$work/rest-store" "$work/rest-copy" "$work/frac-store"; do
    [[ -d $s/.mirrorfs ]] && "$bin" status "$s" >/dev/null 2>&1 &&
      timeout 60 "$bin" stop "$s" >/dev/null 2>&1
  done
  for m in "$work/rest-mnt" "$work/frac-mnt"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u "$m" 2>/dev/null || umount -l "$m"
    fi
  done
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for m in "$work/rest-mnt" "$work/frac-mnt"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  rm -rf "$work"
  [[ $rc -ne 0 ]] && echo "memory bench: failed (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The pid of the daemon serving store $1 (from its status).
daemon_pid() {
  "$bin" status "$1" --json | "$python" -c 'import json, sys; print(json.load(sys.stdin)["pid"])'
}
# "VmRSS VmHWM" of process $1, in KiB.
mem_kib() {
  awk '/^VmRSS:/ {r = $2} /^VmHWM:/ {h = $2} END {print r + 0, h + 0}' "/proc/$1/status"
}

mkdir -p "$work"/{rest-store,rest-copy,rest-mnt,frac-store,frac-mnt}

# 1. At rest.
echo "memory bench: at rest: $images sparse images of 64 MiB with one peer"
ep_copy=tcp://127.0.0.1:$(free_port)
"$bin" serve "$work/rest-copy" --listen "$ep_copy" --name copy
remember_pids "${bin##*/} serve $work/rest-copy( |$)"
"$bin" mount "$work/rest-store" "$work/rest-mnt" --name rest --peer "copy=$ep_copy"
remember_pids "${bin##*/} mount $work/rest-store( |$)"
"$bin" sync "$work/rest-store" --wait --timeout 60 >/dev/null
for ((i = 0; i < images; i++)); do
  truncate -s 64M "$work/rest-mnt/image$i"
  dd if=/dev/urandom of="$work/rest-mnt/image$i" bs=1M count=1 seek=$((i % 64)) \
    conv=notrunc status=none
done
sync
"$bin" sync "$work/rest-store" --wait --timeout 120 >/dev/null
sleep "$idle"
rest_pid=$(daemon_pid "$work/rest-store")
read -r rest_rss rest_hwm <<<"$(mem_kib "$rest_pid")"
read -r rest_peer_rss _ <<<"$(mem_kib "$(daemon_pid "$work/rest-copy")")"
echo "  mount daemon VmRSS $((rest_rss / 1024)) MiB (VmHWM $((rest_hwm / 1024)) MiB)," \
  "peer VmRSS $((rest_peer_rss / 1024)) MiB"
timeout 60 "$bin" stop "$work/rest-store" >/dev/null
timeout 60 "$bin" stop "$work/rest-copy" >/dev/null

# 2. A fracture log of scattered 4 KiB writes over a 1 TiB image.
echo "memory bench: fracture log: $io_size of random 4 KiB writes over a 1 TiB image, peer down"
"$bin" mount "$work/frac-store" "$work/frac-mnt" --name frac \
  --peer "gone=tcp://127.0.0.1:$(free_port)" --peer-timeout 0.5
remember_pids "${bin##*/} mount $work/frac-store( |$)"
truncate -s 1T "$work/frac-mnt/image"
frac_pid=$(daemon_pid "$work/frac-store")
read -r frac_rss0 _ <<<"$(mem_kib "$frac_pid")"
fio --name=fracture --filename="$work/frac-mnt/image" --rw=randwrite --bs=4k \
  --filesize=1t --io_size="$io_size" --norandommap --randrepeat=0 \
  --ioengine=psync --iodepth=1 --numjobs=1 --direct=0 --fallocate=none \
  --output-format=json --output="$work/fracture.fio.json"
sleep 1
read -r frac_rss frac_hwm <<<"$(mem_kib "$frac_pid")"
"$bin" status "$work/frac-store" --json >"$work/frac-status.json"

"$python" - "$results" "$work" "$images" "$idle" "$io_size" "$rest_rss" "$rest_hwm" \
  "$rest_peer_rss" "$frac_rss0" "$frac_rss" "$frac_hwm" <<'EOF'
import json, os, platform, sys
(results, work, images, idle, io_size, rest_rss, rest_hwm, rest_peer_rss,
 frac_rss0, frac_rss, frac_hwm) = sys.argv[1:]
mib = lambda kib: round(int(kib) / 1024, 1)
fio = json.load(open(os.path.join(work, "fracture.fio.json")))["jobs"][0]["write"]
peer = json.load(open(os.path.join(work, "frac-status.json")))["peers"][0]
rest = {"images": int(images), "image_size": "64M", "data_per_image": "1M",
        "idle_seconds": int(idle), "mount_vmrss_mib": mib(rest_rss),
        "mount_vmhwm_mib": mib(rest_hwm), "peer_vmrss_mib": mib(rest_peer_rss),
        "target_mib": 100}
rest["met"] = rest["mount_vmrss_mib"] < rest["target_mib"]
frac = {"image_size": "1T", "io_size": io_size, "block_size": 4096,
        "writes": fio["total_ios"], "seconds": round(fio["runtime"] / 1000, 1),
        "iops": round(fio["iops"]),
        "mount_vmrss_mib_before": mib(frac_rss0), "mount_vmrss_mib": mib(frac_rss),
        "mount_vmhwm_mib": mib(frac_hwm), "peer_state": peer.get("state"),
        "fracture_extents": peer.get("fracture_extents"),
        "fracture_bytes": peer.get("fracture_bytes"), "target_mib": 200,
        "target_on": "mount_vmhwm_mib"}
frac["met"] = frac["mount_vmhwm_mib"] < frac["target_mib"]
doc = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
       "at_rest": rest, "fracture_log": frac}
with open(os.path.join(results, "memory.json"), "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
status = lambda met: "met" if met else "NOT met"
print()
print("| test | mount daemon memory | target | status |")
print("|---|---|---|---|")
print(f"| at rest: {images} images of 64 MiB (sparse, 1 MiB written each), one peer, "
      f"{idle} s idle | VmRSS {rest['mount_vmrss_mib']} MiB (VmHWM {rest['mount_vmhwm_mib']}; "
      f"peer VmRSS {rest['peer_vmrss_mib']}) | VmRSS < 100 MiB | {status(rest['met'])} |")
print(f"| fracture log: {io_size} of random 4 KiB writes over a 1 TiB image, peer down "
      f"| VmHWM {frac['mount_vmhwm_mib']} MiB (VmRSS {frac['mount_vmrss_mib']}; "
      f"{frac['mount_vmrss_mib_before']} before) | VmHWM < 200 MiB | {status(frac['met'])} |")
print()
print(f"fracture log: {frac['fracture_extents']} extents, {frac['fracture_bytes']} bytes "
      f"(peer {frac['peer_state']}); fio: {frac['writes']} writes in {frac['seconds']} s, "
      f"{frac['iops']} IOPS")
print("targets are reported only; they do not change the exit status")
print(f"wrote {os.path.join(results, 'memory.json')}")
EOF
