#!/usr/bin/env bash
# Resync benchmark: a 1 GiB image mirrored to a peer on loopback; the peer is
# fractured (mirrorfs fracture), 256 distinct 1 MiB blocks of the image are
# rewritten (256 MiB of damage scattered over 1 GiB, as in the GlusterFS heal
# anchor), then `mirrorfs sync --wait` is timed, against `cp --sparse=always`
# of a 256 MiB file on the same disk. Caches are dropped before each timed
# step. Also reported: bytes the primary daemon read (/proc/PID/io rchar)
# during the resync, and bytes the peer applied.
# Median of BENCH_REPS (default 3) repetitions. Prints a table; writes
# BENCH_RESULTS/resync.json (default tests/bench/results).
# Smaller runs (the test suite's): BENCH_IMAGE_MIB (1024) and
# BENCH_DAMAGE_MIB (256, in distinct 1 MiB blocks). BENCH_PEER_DIR puts the
# peer's store in a folder there (e.g. /dev/shm) instead of beside the
# primary's, so that the peer's writes do not share the primary's disk, as
# on two machines (cp still copies on the primary's disk).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
bench_name="resync_bench"
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"
reps=${BENCH_REPS:-3}
image_mib=${BENCH_IMAGE_MIB:-1024}
damage_mib=${BENCH_DAMAGE_MIB:-256}
results=${BENCH_RESULTS:-$repo/tests/bench/results}
if ((damage_mib < 1 || damage_mib > image_mib)); then
  echo "resync_bench: BENCH_DAMAGE_MIB must be 1..BENCH_IMAGE_MIB" >&2
  exit 2
fi
bin=${MIRRORFS_BIN:-$repo/build/cli/mirrorfs}
bash scripts/install-deps.sh >/dev/null
[[ -x $bin ]] || bash scripts/build.sh >/dev/null
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/mirrorfs-resync.XXXXXX")
peer=$work/b
if [[ -n ${BENCH_PEER_DIR:-} ]]; then
  peer=$(mktemp -d "$BENCH_PEER_DIR/mirrorfs-resync-peer.XXXXXX")
fi
mkdir -p "$results"
port=$((20000 + RANDOM % 20000))

cleanup() {
  set +e
  "$bin" stop "$work/a" >/dev/null 2>&1
  "$bin" stop "$peer" >/dev/null 2>&1
  mountpoint -q "$work/mnt" && fusermount3 -uz "$work/mnt"
  rm -rf "$work" "$peer"
}
trap cleanup EXIT

now() { date +%s.%N; }

mkdir -p "$work"/{a,mnt} "$peer"
"$bin" serve "$peer" --listen "tcp://127.0.0.1:$port" --name b
"$bin" mount "$work/a" "$work/mnt" --name a --peer "b=tcp://127.0.0.1:$port"
"$bin" sync "$work/a" --wait --timeout 60 >/dev/null
echo "peer store: $peer"
echo "writing the $image_mib MiB image through the mount..."
dd if=/dev/urandom of="$work/mnt/image" bs=1M count="$image_mib" status=none conv=fsync
"$bin" sync "$work/a" --wait --timeout 120 >/dev/null
dd if=/dev/urandom of="$work/damage" bs=1M count="$damage_mib" status=none conv=fsync

pid=$("$bin" status "$work/a" --json | "$python" -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
declare -a resync_s cp_s read_mb applied_mb
for rep in $(seq 1 "$reps"); do
  "$bin" fracture "$work/a" b >/dev/null
  fio --name=damage --filename="$work/mnt/image" --rw=randwrite --bs=1M \
      --size="${image_mib}M" --io_size="${damage_mib}M" --refill_buffers --randrepeat=0 \
      --norandommap=0 --ioengine=psync --end_fsync=1 >/dev/null
  before_applied=$("$bin" status "$peer" --json | "$python" -c 'import json,sys; d=json.load(sys.stdin); print(d["peers"][0]["bytes_applied"] if d["peers"] else 0)')
  drop_caches
  r0=$(awk '/^rchar/ {print $2}' "/proc/$pid/io")
  t0=$(now)
  "$bin" sync "$work/a" --peer b --wait --timeout 300 >/dev/null
  t1=$(now)
  r1=$(awk '/^rchar/ {print $2}' "/proc/$pid/io")
  after_applied=$("$bin" status "$peer" --json | "$python" -c 'import json,sys; d=json.load(sys.stdin); print(d["peers"][0]["bytes_applied"])')
  resync_s+=("$(echo "$t1 - $t0" | bc -l)")
  read_mb+=("$(( (r1 - r0) / 1048576 ))")
  applied_mb+=("$(( (after_applied - before_applied) / 1048576 ))")
  rm -f "$work/copy"
  drop_caches
  t0=$(now)
  cp --sparse=always "$work/damage" "$work/copy"
  sync "$work/copy"
  t1=$(now)
  cp_s+=("$(echo "$t1 - $t0" | bc -l)")
  printf 'rep %s: resync %.3f s (primary read %s MiB, peer applied %s MiB), cp %.3f s\n' \
    "$rep" "${resync_s[-1]}" "${read_mb[-1]}" "${applied_mb[-1]}" "${cp_s[-1]}"
done
sha_a=$(sha256sum < "$work/a/image"); sha_b=$(sha256sum < "$peer/image")
[[ $sha_a == "$sha_b" ]] || { echo "FAIL: the copies differ after resync"; exit 1; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rs=$(median "${resync_s[@]}"); cs=$(median "${cp_s[@]}")
rm_=$(median "${read_mb[@]}"); am=$(median "${applied_mb[@]}")
ratio=$(echo "$cs / $rs" | bc -l)
printf '\n| test | median s | MB/s of damage | ratio to cp |\n|---|---|---|---|\n'
damage_mb=$(echo "$damage_mib * 1.048576" | bc -l)
printf '| resync %s MiB scattered in %s MiB | %.2f | %.0f | %.2f |\n' "$damage_mib" "$image_mib" "$rs" "$(echo "$damage_mb / $rs" | bc -l)" "$ratio"
printf '| cp --sparse=always %s MiB | %.2f | %.0f | 1.00 |\n' "$damage_mib" "$cs" "$(echo "$damage_mb / $cs" | bc -l)"
printf '\nprimary daemon read %s MiB, peer applied %s MiB (damage: %s MiB); copies identical\n' "$rm_" "$am" "$damage_mib"
# bc prints ".3" for 0.3: JSON needs the leading zero.
printf -v rs_json '%.4f' "$rs"
printf -v cs_json '%.4f' "$cs"
printf -v ratio_json '%.3f' "$ratio"
cat > "$results/resync.json" <<JSON
{"resync_seconds": $rs_json, "cp_seconds": $cs_json, "ratio_to_cp": $ratio_json,
 "primary_read_mib": $rm_, "peer_applied_mib": $am, "reps": $reps,
 "image_mib": $image_mib, "damage_mib": $damage_mib,
 "peer_dir": "${BENCH_PEER_DIR:-}"}
JSON
