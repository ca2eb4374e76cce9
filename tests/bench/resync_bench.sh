#!/usr/bin/env bash
# Resync benchmark: a 1 GiB image mirrored to a peer on loopback; the peer is
# fractured (mirrorfs fracture), 256 distinct 1 MiB blocks of the image are
# rewritten (256 MiB of damage scattered over 1 GiB, as in the GlusterFS heal
# anchor), then `mirrorfs sync --wait` is timed, against `cp --sparse=always`
# of a 256 MiB file on the same disk. Caches are dropped before each timed
# step. Also reported: bytes the primary daemon read (/proc/PID/io rchar)
# during the resync, and bytes the peer applied.
# Median of BENCH_REPS (default 3) repetitions. Prints a table; writes
# tests/bench/results/resync.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
reps=${BENCH_REPS:-3}
bin=${MIRRORFS_BIN:-$repo/build/cli/mirrorfs}
bash scripts/install-deps.sh >/dev/null
[[ -x $bin ]] || bash scripts/build.sh >/dev/null
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/mirrorfs-resync.XXXXXX")
mkdir -p "$repo/tests/bench/results"
port=$((20000 + RANDOM % 20000))

cleanup() {
  set +e
  "$bin" stop "$work/a" >/dev/null 2>&1
  "$bin" stop "$work/b" >/dev/null 2>&1
  mountpoint -q "$work/mnt" && fusermount3 -uz "$work/mnt"
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

mkdir -p "$work"/{a,b,mnt}
"$bin" serve "$work/b" --listen "tcp://127.0.0.1:$port" --name b
"$bin" mount "$work/a" "$work/mnt" --name a --peer "b=tcp://127.0.0.1:$port"
"$bin" sync "$work/a" --wait --timeout 60 >/dev/null
echo "writing the 1 GiB image through the mount..."
dd if=/dev/urandom of="$work/mnt/image" bs=1M count=1024 status=none conv=fsync
"$bin" sync "$work/a" --wait --timeout 120 >/dev/null
dd if=/dev/urandom of="$work/damage" bs=1M count=256 status=none conv=fsync

pid=$("$bin" status "$work/a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
declare -a resync_s cp_s read_mb applied_mb
for rep in $(seq 1 "$reps"); do
  "$bin" fracture "$work/a" b >/dev/null
  fio --name=damage --filename="$work/mnt/image" --rw=randwrite --bs=1M \
      --size=1G --io_size=256M --refill_buffers --randrepeat=0 \
      --norandommap=0 --ioengine=psync --end_fsync=1 >/dev/null
  before_applied=$("$bin" status "$work/b" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["peers"][0]["bytes_applied"] if d["peers"] else 0)')
  drop
  r0=$(awk '/^rchar/ {print $2}' "/proc/$pid/io")
  t0=$(now)
  "$bin" sync "$work/a" --peer b --wait --timeout 300 >/dev/null
  t1=$(now)
  r1=$(awk '/^rchar/ {print $2}' "/proc/$pid/io")
  after_applied=$("$bin" status "$work/b" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["peers"][0]["bytes_applied"])')
  resync_s+=("$(echo "$t1 - $t0" | bc -l)")
  read_mb+=("$(( (r1 - r0) / 1048576 ))")
  applied_mb+=("$(( (after_applied - before_applied) / 1048576 ))")
  rm -f "$work/copy"
  drop
  t0=$(now)
  cp --sparse=always "$work/damage" "$work/copy"
  sync "$work/copy"
  t1=$(now)
  cp_s+=("$(echo "$t1 - $t0" | bc -l)")
  echo "rep $rep: resync ${resync_s[-1]} s (primary read ${read_mb[-1]} MiB, peer applied ${applied_mb[-1]} MiB), cp ${cp_s[-1]} s"
done
sha_a=$(sha256sum < "$work/a/image"); sha_b=$(sha256sum < "$work/b/image")
[[ $sha_a == "$sha_b" ]] || { echo "FAIL: the copies differ after resync"; exit 1; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rs=$(median "${resync_s[@]}"); cs=$(median "${cp_s[@]}")
rm_=$(median "${read_mb[@]}"); am=$(median "${applied_mb[@]}")
ratio=$(echo "$cs / $rs" | bc -l)
printf '\n| test | median s | MB/s of damage | ratio to cp |\n|---|---|---|---|\n'
printf '| resync 256 MiB scattered in 1 GiB | %.2f | %.0f | %.2f |\n' "$rs" "$(echo "268.435456 / $rs" | bc -l)" "$ratio"
printf '| cp --sparse=always 256 MiB | %.2f | %.0f | 1.00 |\n' "$cs" "$(echo "268.435456 / $cs" | bc -l)"
printf '\nprimary daemon read %s MiB, peer applied %s MiB (damage: 256 MiB); copies identical\n' "$rm_" "$am"
cat > "$repo/tests/bench/results/resync.json" <<JSON
{"resync_seconds": $rs, "cp_seconds": $cs, "ratio_to_cp": $ratio,
 "primary_read_mib": $rm_, "peer_applied_mib": $am, "reps": $reps}
JSON
