#!/usr/bin/env bash
# fio benchmark of mirrorfs against its baselines, on this machine (issue #7).
#
# Rows:  store            the store folder itself (ext4, no FUSE)
#        passthrough_ll   libfuse3's example passthrough_ll.c, compiled here
#                         (gcc -O2), multithreaded, its defaults (cache=auto,
#                         1 s timeouts, no writeback cache: as mirrorfs) plus
#                         default_permissions,allow_other (as mirrorfs mounts):
#                         the FUSE ceiling, and the baseline of the ratios.
#                         It runs with BENCH_PLL_TUNABLES as GLIBC_TUNABLES
#                         (default: malloc mmap_threshold 4 MiB, trim_threshold
#                         64 MiB): libfuse malloc()s each read reply's buffer,
#                         and glibc's default mmap()s and munmap()s every one
#                         of 128 KiB or more (a cold dd of 256 MiB here: 85-210
#                         MB/s stock, 0.7-1.3 GB/s with the tunables; mirrorfs
#                         sets the same thresholds with mallopt). Set
#                         BENCH_PLL_TUNABLES= (empty) to run it stock
#        gluster          GlusterFS replica 2 (Debian's glusterfs-server, its
#                         default volume options, or BENCH_GLUSTER_OPTIONS),
#                         both bricks on this disk, mounted with its FUSE
#                         client on 127.0.0.2
#        bindfs           bindfs -o big_writes,max_write=131072 --multithreaded
#        mirrorfs         mirrorfs mount, no peer
#        mirrorfs-peer    mirrorfs mount, one peer on loopback, sync mode
#        mirrorfs-2peers  mirrorfs mount, two peers on loopback, sync mode
#        mirrorfs-wb      as mirrorfs-peer, mounted with -o writeback_cache: a
#                         write() returns once it is in the kernel page cache;
#                         the mirroring (local store and peer) happens when the
#                         kernel writes the pages back; fsync, O_SYNC and
#                         O_DSYNC still wait for both copies
#        mirrorfs-curve   as mirrorfs-peer, with CURVE-encrypted peer links
#        mirrorfs-down    mirrorfs mount whose one peer is down (its changes
#                         go to the fracture log): compare with "mirrorfs"
# Tests (fio, psync, iodepth 1, one job, on one BENCH_SIZE file; buffered):
#        seqwrite_1M          1 MiB sequential writes of BENCH_SIZE, final fsync
#        seqread_1M           1 MiB sequential reads of that file (written by
#                             seqwrite_1M of the same repetition), COLD cache:
#                             sync and drop_caches first (page cache of the
#                             mount and of the store/bricks; GlusterFS's own
#                             io-cache and read-ahead are off by default)
#        randwrite_4k_fsync32 4 KiB random writes, fsync every 32, BENCH_RUNTIME s
#        randwrite_4k_fsync1  4 KiB random writes, fsync every write, BENCH_RUNTIME s
#        randread_4k          4 KiB random reads, BENCH_RUNTIME s, COLD cache at
#                             its start (sync and drop_caches first)
# Each figure is the median of BENCH_REPS repetitions, interleaved (rep 1 of
# every row and test, then rep 2, ...), so drift hits every row alike.
# Ratios: every row against passthrough_ll and against gluster, per test (MB/s).
# Resources, per row, of its daemon processes only (not fio, not the kernel
# time charged to fio): CPU seconds (utime+stime from /proc/PID/stat) used
# during seqwrite_1M per GiB written, median of the repetitions; peak RSS
# (VmHWM) at the end of the run. Daemons: mirrorfs, the mount and its serve
# peers (RSS reported apart); gluster, the FUSE client and the two glusterfsd
# bricks (glusterd, the management daemon, and the self-heal daemon are not
# counted: they carry no data); passthrough_ll and bindfs, their process.
# Targets (for mirrorfs-peer, and mirrorfs-2peers' seq write) are printed as
# met / NOT met at the end and stored in the JSON; they never change the
# exit status. Exit 1 if a peer's copy differs from the primary's.
#
# Environment: BENCH_SIZE (default 512M), BENCH_RUNTIME (3), BENCH_REPS (3),
# BENCH_ROWS (default "store passthrough_ll gluster mirrorfs mirrorfs-peer
# mirrorfs-2peers mirrorfs-wb mirrorfs-down"), BENCH_TESTS (default: all
# five, in the order above; the read tests read the file seqwrite_1M wrote),
# BENCH_PLL_TUNABLES (see passthrough_ll above),
# BENCH_GLUSTER_OPTIONS ("KEY VALUE ..." set on the GlusterFS volume before
# it starts; e.g. "performance.write-behind off": its client then answers a
# write once both bricks have it, as mirrorfs' sync mode does, where by
# default it answers first and sends later, up to the next fsync),
# BENCH_DIR (parent of the scratch folder, default /var/tmp),
# BENCH_PEER_DIR (parent of a second scratch folder for the peers' stores,
# e.g. another disk or /dev/shm, as on two machines; default: beside the
# primaries', on the same disk),
# BENCH_RESULTS (where the results go, default tests/bench/results),
# BENCH_PAGE_REPORTING_ORDER (this VM's free page reporting order for the
# run, put back at exit; unset leaves it as it is: see vm_state in
# tests/bench/lib.sh, which the run prints and bench.json records),
# MIRRORFS_BIN (default build/cli/mirrorfs; built if missing).
# If GlusterFS cannot be installed or started, the gluster row is skipped
# (said on stdout) and the ratios against it are empty.
# Output: a table on stdout and BENCH_RESULTS/bench.json (plus the raw fio
# JSON in BENCH_RESULTS/fio/).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
bench_name="bench"
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"

size=${BENCH_SIZE:-512M}
runtime=${BENCH_RUNTIME:-3}
reps=${BENCH_REPS:-3}
results=${BENCH_RESULTS:-$repo/tests/bench/results}
gvol=benchvol

read -r -a rows <<<"${BENCH_ROWS:-store passthrough_ll gluster mirrorfs mirrorfs-peer mirrorfs-2peers mirrorfs-wb mirrorfs-down}"
read -r -a tests <<<"${BENCH_TESTS:-seqwrite_1M seqread_1M randwrite_4k_fsync32 randwrite_4k_fsync1 randread_4k}"
has_row() { [[ " ${rows[*]} " == *" $1 "* ]]; }
drop_row() {
  local r kept=()
  for r in "${rows[@]}"; do [[ $r == "$1" ]] || kept+=("$r"); done
  rows=("${kept[@]}")
}
for row in "${rows[@]}"; do
  case $row in
    store | passthrough_ll | gluster | bindfs | mirrorfs | mirrorfs-peer | mirrorfs-2peers | \
      mirrorfs-wb | mirrorfs-curve | mirrorfs-down) ;;
    *) echo "bench: unknown row $row" >&2; exit 2 ;;
  esac
done
for test in "${tests[@]}"; do
  case $test in
    seqwrite_1M | seqread_1M | randwrite_4k_fsync32 | randwrite_4k_fsync1 | randread_4k) ;;
    *) echo "bench: unknown test $test" >&2; exit 2 ;;
  esac
done
read -r -a gopts <<<"${BENCH_GLUSTER_OPTIONS:-}"
if ((${#gopts[@]} % 2)); then
  echo "bench: BENCH_GLUSTER_OPTIONS takes KEY VALUE pairs: ${BENCH_GLUSTER_OPTIONS}" >&2
  exit 2
fi

extra_packages=()
if has_row bindfs; then extra_packages+=(bindfs); fi
bash scripts/install-deps.sh ${extra_packages[@]+"${extra_packages[@]}"} >/dev/null
bin=${MIRRORFS_BIN:-$repo/build/cli/mirrorfs}
if [[ ! -x $bin && " ${rows[*]}" == *" mirrorfs"* ]]; then
  bash scripts/build.sh >/dev/null
fi

if [[ -n ${BENCH_PEER_DIR:-} && ! -d $BENCH_PEER_DIR ]]; then
  echo "bench: BENCH_PEER_DIR is not a folder: $BENCH_PEER_DIR" >&2
  exit 2
fi
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/mirrorfs-bench.XXXXXX")
echo $$ >"$work/bench.pid"
# The peers' stores: beside the primaries', or apart (BENCH_PEER_DIR).
peers=$work
if [[ -n ${BENCH_PEER_DIR:-} ]]; then
  peers=$(mktemp -d "$BENCH_PEER_DIR/mirrorfs-bench-peers.XXXXXX")
fi
echo "bench: peer stores in $peers"
mkdir -p "$results/fio"
rm -f "$results"/fio/*.json
pids=()
glusterd_started=0
gluster_created=0

# The mirrorfs rows: primary store, mountpoint, peer copies.
declare -A mstore=(
  [mirrorfs]=$work/mfs-store [mirrorfs-peer]=$work/mfsp-store
  [mirrorfs-2peers]=$work/mfs2-store [mirrorfs-wb]=$work/mfsw-store
  [mirrorfs-down]=$work/mfsd-store [mirrorfs-curve]=$work/mfsc-store
)
declare -A mcopies=(
  [mirrorfs]="" [mirrorfs-peer]=$peers/mfsp-copy
  [mirrorfs-2peers]="$peers/mfs2-copy1 $peers/mfs2-copy2" [mirrorfs-wb]=$peers/mfsw-copy
  [mirrorfs-down]="" [mirrorfs-curve]=$peers/mfsc-copy
)
declare -A dir=(
  [store]=$work/store [passthrough_ll]=$work/pll-mnt [gluster]=$work/gluster-mnt
  [bindfs]=$work/bindfs-mnt
  [mirrorfs]=$work/mfs-mnt [mirrorfs-peer]=$work/mfsp-mnt
  [mirrorfs-2peers]=$work/mfs2-mnt [mirrorfs-wb]=$work/mfsw-mnt
  [mirrorfs-down]=$work/mfsd-mnt [mirrorfs-curve]=$work/mfsc-mnt
)
fuse_mnts=("$work/bindfs-mnt" "$work/pll-mnt" "$work/mfs-mnt" "$work/mfsp-mnt"
  "$work/mfs2-mnt" "$work/mfsw-mnt" "$work/mfsd-mnt" "$work/mfsc-mnt")

gcli() { timeout 60 gluster --mode=script "$@" >/dev/null 2>&1; }

cleanup_gluster() {
  local p
  if mountpoint -q "$work/gluster-mnt" 2>/dev/null; then
    umount "$work/gluster-mnt" 2>/dev/null || umount -l "$work/gluster-mnt"
  fi
  if [[ $gluster_created -eq 1 ]]; then
    gcli volume stop "$gvol" force
    gcli volume delete "$gvol" || echo "bench: gluster: could not delete volume $gvol" >&2
  fi
  # Bricks and client of this run, should the volume stop have missed them.
  for p in $(pgrep -f -- "glusterfsd .*--brick-name $work/brick[12]( |$)" || true) \
    $(pgrep -f -- "glusterfs .*$work/gluster-mnt( |$)" || true); do
    kill "$p" 2>/dev/null
  done
  if [[ $glusterd_started -eq 1 ]]; then
    # The self-heal daemon of our volume (glusterd starts it for replicas).
    p=$(cat "/var/run/gluster/shd/$gvol/$gvol-shd.pid" 2>/dev/null || true)
    [[ -n $p ]] && kill "$p" 2>/dev/null
    p=$(cat "$work/glusterd.pid" 2>/dev/null || true)
    [[ -n $p ]] && kill "$p" 2>/dev/null
    # glusterd is down now: a volume it could not delete would be restarted
    # (with missing bricks) by the next glusterd; drop its state.
    [[ $gluster_created -eq 1 && -d /var/lib/glusterd/vols/$gvol ]] &&
      rm -rf "/var/lib/glusterd/vols/$gvol"
  fi
}

cleanup() {
  local rc=$? s m pid
  set +e
  trap - EXIT
  restore_vm_state
  # shellcheck disable=SC2068 # a row's copies are one space-separated word
  for s in "${mstore[@]}" ${mcopies[@]}; do
    [[ -d $s/.mirrorfs ]] && "$bin" status "$s" >/dev/null 2>&1 &&
      timeout 30 "$bin" stop "$s" >/dev/null 2>&1
  done
  for m in "${fuse_mnts[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u "$m" 2>/dev/null || fusermount -u "$m" 2>/dev/null || umount -l "$m"
    fi
  done
  cleanup_gluster
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for m in "${fuse_mnts[@]}" "$work/gluster-mnt"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  rm -rf "$work" "$peers"
  [[ $rc -ne 0 ]] && echo "bench: failed (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set_vm_state

# Prints "ROLE PID" for each process matching the regex $2.
pids_of() {
  local p
  for p in $(pgrep -f -- "$2" || true); do echo "$1 $p"; done
}
# Prints "ROLE PID" for each daemon process of row $1 (none for store).
row_daemons() {
  local c
  case $1 in
    passthrough_ll) pids_of fuse "^$work/passthrough_ll " ;;
    bindfs) pids_of fuse "bindfs .*$work/bindfs-src( |$)" ;;
    gluster)
      pids_of client "glusterfs .*$work/gluster-mnt( |$)"
      pids_of brick "glusterfsd .*--brick-name $work/brick[12]( |$)" ;;
    mirrorfs*)
      pids_of mount "${bin##*/} mount ${mstore[$1]}( |$)"
      for c in ${mcopies[$1]}; do pids_of peer "${bin##*/} serve $c( |$)"; done ;;
  esac
}
# Sum of utime+stime, in clock ticks, of the processes $@.
cpu_ticks() {
  local pid stat total=0 f
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a f <<<"${stat##*) }" # fields from 3 (state) on: utime is 14, stime 15
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# A mirrorfs row: mount ${mstore[$1]} with a serve peer per copy; more mount
# options in $2...
mount_mirrorfs() {
  local row=$1 store=${mstore[$1]} mnt=${dir[$1]} c n=0 ep peer_args=()
  shift
  for c in ${mcopies[$row]}; do
    n=$((n + 1))
    ep=tcp://127.0.0.1:$(free_port)
    "$bin" serve "$c" --listen "$ep" --name "copy$n"
    remember_pids "${bin##*/} serve $c( |$)"
    peer_args+=(--peer "copy$n=$ep")
  done
  "$bin" mount "$store" "$mnt" --name bench --listen "tcp://127.0.0.1:$(free_port)" \
    "${peer_args[@]}" "$@"
  remember_pids "${bin##*/} mount $store( |$)"
  for ((c = 1; c <= n; c++)); do wait_connected "$store" "copy$c"; done
}

# Compiles libfuse's passthrough_ll example and mounts it.
setup_passthrough_ll() {
  build_passthrough_ll "$work"
  GLIBC_TUNABLES=$pll_tunables "$work/passthrough_ll" \
    -o "source=$work/pll-src,default_permissions,allow_other" "$work/pll-mnt"
  remember_pids "^$work/passthrough_ll "
}

# GlusterFS replica 2 on 127.0.0.2 (glusterd refuses 127.0.0.1 as a brick
# host). Returns non-zero (having said why) when it cannot be set up.
setup_gluster() {
  local i info b owner
  if ! command -v glusterd >/dev/null || ! command -v mount.glusterfs >/dev/null; then
    if ! bash scripts/install-deps.sh glusterfs-server glusterfs-client >/dev/null 2>&1; then
      echo "bench: gluster: cannot install glusterfs-server and glusterfs-client"
      return 1
    fi
  fi
  if ! timeout 20 gluster volume list >/dev/null 2>&1; then
    # No running glusterd (systemd does not run here): start our own.
    glusterd -p "$work/glusterd.pid" </dev/null >/dev/null 2>&1 || {
      echo "bench: gluster: glusterd does not start"
      return 1
    }
    glusterd_started=1
    for ((i = 0; i < 150; i++)); do
      timeout 10 gluster volume list >/dev/null 2>&1 && break
      sleep 0.2
    done
    [[ $i -lt 150 ]] || { echo "bench: gluster: glusterd does not answer"; return 1; }
  fi
  if info=$(timeout 20 gluster volume info "$gvol" 2>/dev/null); then
    # Its bricks sit in a scratch folder holding the pid of the run that
    # made it: a live run keeps its volume.
    while read -r b; do
      owner=$(cat "${b%/*}/bench.pid" 2>/dev/null || true)
      if [[ -n $owner ]] && kill -0 "$owner" 2>/dev/null; then
        echo "bench: gluster: volume $gvol is in use by another run (pid $owner)"
        return 1
      fi
    done < <(sed -n 's/^Brick[0-9]*: [^:]*://p' <<<"$info")
    echo "bench: gluster: deleting the volume $gvol an earlier run left behind"
    gcli volume stop "$gvol" force
    gcli volume delete "$gvol"
  fi
  mkdir -p "$work/brick1" "$work/brick2"
  # --mode=script answers the replica 2 split-brain warning; force allows
  # bricks on the root file system and twice on one host.
  gcli volume create "$gvol" replica 2 "127.0.0.2:$work/brick1" "127.0.0.2:$work/brick2" force ||
    { echo "bench: gluster: volume create failed"; return 1; }
  gluster_created=1
  for ((i = 0; i < ${#gopts[@]}; i += 2)); do
    gcli volume set "$gvol" "${gopts[i]}" "${gopts[i + 1]}" ||
      { echo "bench: gluster: volume set ${gopts[i]} ${gopts[i + 1]} failed"; return 1; }
  done
  gcli volume start "$gvol" || { echo "bench: gluster: volume start failed"; return 1; }
  timeout 60 mount -t glusterfs "127.0.0.2:/$gvol" "$work/gluster-mnt" ||
    { echo "bench: gluster: mount failed"; return 1; }
  mountpoint -q "$work/gluster-mnt" || { echo "bench: gluster: not mounted"; return 1; }
  remember_pids "glusterfs .*$work/gluster-mnt( |$)"
  remember_pids "glusterfsd .*--brick-name $work/brick[12]( |$)"
}

echo "bench: setting up ${rows[*]} in $work"
# shellcheck disable=SC2068 # a row's copies are one space-separated word
mkdir -p "$work"/{store,meta,keys,gluster-mnt,pll-src,bindfs-src} "${fuse_mnts[@]}" \
  "${mstore[@]}" ${mcopies[@]}
if has_row passthrough_ll; then
  setup_passthrough_ll
fi
if has_row gluster && ! setup_gluster; then
  echo "bench: gluster: row skipped"
  cleanup_gluster
  glusterd_started=0 gluster_created=0
  drop_row gluster
fi
if has_row bindfs; then
  bindfs -o big_writes,max_write=131072 --multithreaded "$work/bindfs-src" "$work/bindfs-mnt"
  remember_pids "bindfs .*$work/bindfs-src( |$)"
fi
has_row mirrorfs && mount_mirrorfs mirrorfs
has_row mirrorfs-peer && mount_mirrorfs mirrorfs-peer
has_row mirrorfs-2peers && mount_mirrorfs mirrorfs-2peers
has_row mirrorfs-wb && mount_mirrorfs mirrorfs-wb -o writeback_cache
if has_row mirrorfs-down; then
  # A peer nobody serves: every change is logged for it.
  "$bin" mount "$work/mfsd-store" "$work/mfsd-mnt" --name bench \
    --peer "gone=tcp://127.0.0.1:$(free_port)" --peer-timeout 0.5
  remember_pids "${bin##*/} mount $work/mfsd-store( |$)"
fi
if has_row mirrorfs-curve; then
  "$bin" keygen "$work/keys/p.key" >/dev/null
  "$bin" keygen "$work/keys/c.key" >/dev/null
  echo "copy1 $(cat "$work/keys/c.key.pub")" >"$work/keys/p.auth"
  echo "bench $(cat "$work/keys/p.key.pub")" >"$work/keys/c.auth"
  ep_ccopy=tcp://127.0.0.1:$(free_port)
  "$bin" serve "${mcopies[mirrorfs-curve]}" --listen "$ep_ccopy" --name copy1 \
    --key "$work/keys/c.key" --authorized-keys "$work/keys/c.auth"
  remember_pids "${bin##*/} serve ${mcopies[mirrorfs-curve]}( |$)"
  "$bin" mount "$work/mfsc-store" "$work/mfsc-mnt" --name bench \
    --peer "copy1=$ep_ccopy" --key "$work/keys/p.key" \
    --authorized-keys "$work/keys/p.auth"
  remember_pids "${bin##*/} mount $work/mfsc-store( |$)"
  wait_connected "$work/mfsc-store" copy1
fi

common=(--ioengine=psync --direct=0 --iodepth=1 --numjobs=1 --size="$size"
  --fallocate=none --output-format=json)
clk_tck=$(getconf CLK_TCK)

run_fio() {
  local row=$1 test=$2 rep=$3 file=${dir[$1]}/bench.dat
  local out=$results/fio/$row.$test.$rep.json
  local args=() section=write daemons=() t0 t1
  case $test in
    seqwrite_1M)
      rm -f "$file"
      args=(--rw=write --bs=1M --end_fsync=1) ;;
    seqread_1M)
      section="read"
      args=(--rw=read --bs=1M) ;;
    randwrite_4k_fsync32)
      args=(--rw=randwrite --bs=4k --fsync=32 --time_based --runtime="$runtime") ;;
    randwrite_4k_fsync1)
      args=(--rw=randwrite --bs=4k --fsync=1 --time_based --runtime="$runtime") ;;
    randread_4k)
      section="read"
      args=(--rw=randread --bs=4k --time_based --runtime="$runtime") ;;
  esac
  if [[ $section == read ]]; then drop_caches; else sync; fi
  if [[ $test == seqwrite_1M ]]; then
    read -r -a daemons <<<"$(row_daemons "$row" | awk '{print $2}' | tr '\n' ' ')"
    t0=$(cpu_ticks ${daemons[@]+"${daemons[@]}"})
  fi
  fio --name="$test" --filename="$file" "${common[@]}" "${args[@]}" --output="$out"
  if [[ $test == seqwrite_1M ]]; then
    t1=$(cpu_ticks ${daemons[@]+"${daemons[@]}"})
    echo "$((t1 - t0)) $clk_tck ${#daemons[@]}" >"$work/meta/$row.cpu.$rep"
  fi
  printf '  rep %s  %-15s %-22s %s\n' "$rep" "$row" "$test" \
    "$("$python" -c 'import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]
print("%9.1f MB/s %10.0f IOPS" % (w["bw_bytes"] / 1e6, w["iops"]))' "$out" "$section")"
}

echo "bench: size $size, random tests ${runtime} s, $reps repetitions, interleaved"
echo "bench: VM state $(vm_state) (tests/bench/lib.sh says what they do)"
for rep in $(seq 1 "$reps"); do
  for row in "${rows[@]}"; do
    for test in "${tests[@]}"; do
      run_fio "$row" "$test" "$rep"
    done
  done
done

# Peak RSS of each row's daemons, at the end: "ROLE PID VmHWM-kB VmRSS-kB".
for row in "${rows[@]}"; do
  row_daemons "$row" | while read -r role pid; do
    echo "$role $pid $(awk '/^VmHWM:/ {h = $2} /^VmRSS:/ {r = $2} END {print h + 0, r + 0}' \
      "/proc/$pid/status" 2>/dev/null)"
  done >"$work/meta/$row.rss"
done

# Every peer's copy must equal the primary's, or the peer rows measured nothing.
sync
: >"$work/meta/mirror"
for row in "${rows[@]}"; do
  [[ $row == mirrorfs* && -n ${mcopies[$row]} ]] || continue
  ok=true
  for c in ${mcopies[$row]}; do
    cmp -s "${mstore[$row]}/bench.dat" "$c/bench.dat" || ok=false
  done
  echo "$row $ok" >>"$work/meta/mirror"
done
# A peer dropped during the run (timeout, error) makes its row measure the
# fracture log, not mirroring: count the drops the primary logged.
: >"$work/meta/drops"
for row in "${rows[@]}"; do
  [[ $row == mirrorfs* && -n ${mcopies[$row]} ]] || continue
  echo "$row $(grep -c 'its changes are logged from now on' "${mstore[$row]}/.mirrorfs/log" 2>/dev/null || true)" \
    >>"$work/meta/drops"
done

PLL_TUNABLES=$pll_tunables "$python" - "$results" "$work/meta" "$size" "$runtime" "$reps" "${rows[*]}" "${tests[*]}" <<'EOF'
import json, os, platform, statistics, subprocess, sys
results, meta, size, runtime, reps, rows, tests = sys.argv[1:]
rows, tests, reps = rows.split(), tests.split(), int(reps)
READS = {"seqread_1M", "randread_4k"}
table = {}
for row in rows:
    for test in tests:
        mbps, iops, gib = [], [], []
        for rep in range(1, reps + 1):
            with open(os.path.join(results, "fio", f"{row}.{test}.{rep}.json")) as f:
                w = json.load(f)["jobs"][0]["read" if test in READS else "write"]
            mbps.append(w["bw_bytes"] / 1e6)
            iops.append(w["iops"])
            gib.append(w["io_bytes"] / 2**30)
        table.setdefault(row, {})[test] = {
            "mb_per_s": round(statistics.median(mbps), 1), "iops": round(statistics.median(iops)),
            "mb_per_s_all": [round(x, 1) for x in mbps], "iops_all": [round(x) for x in iops],
            "_gib": gib}
for row in rows:
    for test in tests:
        cell = table[row][test]
        for base in ("passthrough_ll", "gluster"):
            b = table.get(base, {}).get(test, {}).get("mb_per_s")
            cell[f"ratio_vs_{base}"] = round(cell["mb_per_s"] / b, 2) if b else None

# Daemon CPU per GiB written during seqwrite_1M; peak RSS.
resources = {}
for row in rows:
    r = {"cpu_seconds_per_gib_written": None, "cpu_seconds_per_gib_written_all": [],
         "daemons": [], "peak_rss_mib": None}
    if "seqwrite_1M" in tests:
        per_gib = []
        for rep in range(1, reps + 1):
            path = os.path.join(meta, f"{row}.cpu.{rep}")
            ticks, tck, n = (int(x) for x in open(path).read().split())
            gib = table[row]["seqwrite_1M"]["_gib"][rep - 1]
            if n and gib:
                per_gib.append(ticks / tck / gib)
        if per_gib:
            r["cpu_seconds_per_gib_written"] = round(statistics.median(per_gib), 2)
            r["cpu_seconds_per_gib_written_all"] = [round(x, 2) for x in per_gib]
    for line in open(os.path.join(meta, f"{row}.rss")):
        f = line.split()
        if len(f) == 4:
            r["daemons"].append({"role": f[0], "pid": int(f[1]),
                                 "vmhwm_mib": round(int(f[2]) / 1024, 1),
                                 "vmrss_mib": round(int(f[3]) / 1024, 1)})
    hwm = [d["vmhwm_mib"] for d in r["daemons"]]
    r["peak_rss_mib"] = max(hwm) if hwm else None
    if row.startswith("mirrorfs"):
        m = [d["vmhwm_mib"] for d in r["daemons"] if d["role"] == "mount"]
        p = [d["vmhwm_mib"] for d in r["daemons"] if d["role"] == "peer"]
        r["peak_rss_mib_mount"] = max(m) if m else None
        r["peak_rss_mib_peers"] = max(p) if p else None
    resources[row] = r
for row in rows:
    for cell in table[row].values():
        del cell["_gib"]

mirror = {}
for line in open(os.path.join(meta, "mirror")):
    row, ok = line.split()
    mirror[row] = ok == "true"
drops = {}
for line in open(os.path.join(meta, "drops")):
    row, n = line.split()
    drops[row] = int(n or 0)

def ratio(row, test, base):
    return table.get(row, {}).get(test, {}).get(f"ratio_vs_{base}")
targets = []
def target(name, value, threshold, at_most=False):
    met = None if value is None else (value <= threshold if at_most else value >= threshold)
    targets.append({"target": name, "value": value, "threshold": threshold,
                    "at_most": at_most, "met": met})
for test, label, pll, gl in (
        ("seqwrite_1M", "seq write", 0.9, 1.6), ("seqread_1M", "seq read", 0.95, 1.2),
        ("randwrite_4k_fsync32", "randwrite fsync32", 0.4, 2.5),
        ("randwrite_4k_fsync1", "randwrite fsync1", 0.45, 2.5),
        ("randread_4k", "randread", 0.95, None)):
    target(f"mirrorfs-peer {label} vs passthrough_ll", ratio("mirrorfs-peer", test, "passthrough_ll"), pll)
    if gl is not None:
        target(f"mirrorfs-peer {label} vs gluster", ratio("mirrorfs-peer", test, "gluster"), gl)
target("mirrorfs-2peers seq write vs passthrough_ll",
       ratio("mirrorfs-2peers", "seqwrite_1M", "passthrough_ll"), 0.8)
target("mirrorfs-peer CPU s per GiB mirrored (mount + peer)",
       resources.get("mirrorfs-peer", {}).get("cpu_seconds_per_gib_written"), 3.0, at_most=True)

def sysfs(param):
    try:
        with open("/sys/module/" + param) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None

fio_version = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
doc = {"size": size, "runtime_seconds": int(runtime), "repetitions": reps,
       "passthrough_ll_glibc_tunables": os.environ.get("PLL_TUNABLES", ""),
       "gluster_options": os.environ.get("BENCH_GLUSTER_OPTIONS", ""),
       "peer_dir": os.environ.get("BENCH_PEER_DIR", ""),
       "statistic": "median", "rows": rows, "tests": tests,
       "cold_cache_tests": [t for t in tests if t in READS],
       "mirror_verified": all(mirror.values()) if mirror else None,
       "mirror_verified_rows": mirror,
       "peer_drops_during_run": drops,
       "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "fio": fio_version,
                   # read at the end of the run; tests/bench/lib.sh vm_state()
                   "page_reporting_order": sysfs("page_reporting/parameters/page_reporting_order"),
                   "guest_halt_poll_ns": sysfs("haltpoll/parameters/guest_halt_poll_ns")},
       "results": table, "resources": resources, "targets": targets}
with open(os.path.join(results, "bench.json"), "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

def fmt(x, spec=".2f"):
    return "" if x is None else format(x, spec)
print()
print("| row | test | MB/s median [min–max] | IOPS | vs passthrough_ll | vs gluster |")
print("|---|---|---|---|---|---|")
for test in tests:
    for row in rows:
        c = table[row][test]
        lo, hi = min(c["mb_per_s_all"]), max(c["mb_per_s_all"])
        print(f"| {row} | {test} | {c['mb_per_s']:.1f} [{lo:.1f}–{hi:.1f}] | {c['iops']} "
              f"| {fmt(c['ratio_vs_passthrough_ll'])} | {fmt(c['ratio_vs_gluster'])} |")
print()
print("| row | daemons | CPU s per GiB written (seqwrite_1M) | peak RSS MiB | mirrorfs mount / peers MiB |")
print("|---|---|---|---|---|")
for row in rows:
    r = resources[row]
    roles = {}
    for d in r["daemons"]:
        roles[d["role"]] = roles.get(d["role"], 0) + 1
    names = ", ".join(f"{n} {k}" for k, n in roles.items()) or "none"
    split = ""
    if row.startswith("mirrorfs"):
        split = f"{fmt(r['peak_rss_mib_mount'], '.1f')} / {fmt(r['peak_rss_mib_peers'], '.1f') or '–'}"
    print(f"| {row} | {names} | {fmt(r['cpu_seconds_per_gib_written'])} "
          f"| {fmt(r['peak_rss_mib'], '.1f')} | {split} |")
print()
print("targets (reported only; they do not change the exit status):")
for t in targets:
    status = "n/a (row or test not run)" if t["met"] is None else ("met" if t["met"] else "NOT met")
    op = "≤" if t["at_most"] else "≥"
    print(f"  {t['target']}: {fmt(t['value'])} (target {op} {t['threshold']}): {status}")
print()
for row, ok in mirror.items():
    print(f"{row}: peer copies identical to the primary's: {str(ok).lower()}; "
          f"peers dropped during the run: {drops.get(row, 0)}"
          + ("  <- its figures measured the fracture log in part" if drops.get(row, 0) else ""))
print(f"wrote {os.path.join(results, 'bench.json')}")
EOF
if grep -q ' false$' "$work/meta/mirror"; then
  echo "bench: a peer's copy differs from the primary's" >&2
  exit 1
fi
