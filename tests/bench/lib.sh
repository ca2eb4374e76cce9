# shellcheck shell=bash
# Shared by the benchmark scripts (source it; they set $bin, the
# mirrorfs binary, and $bench_name, used in messages).
# shellcheck disable=SC2154  # bin, bench_name: set by the sourcing script

python=/usr/bin/python3  # Debian's, with the modules the scripts use
[[ -x $python ]] || python=python3

# The two settings of this VM that move the figures most, as one line
# (each "none" where the kernel has no such module):
# - page_reporting_order: free page reporting (virtio-balloon) hands back
#   to the host every free block of 2^order pages, at once here
#   (min_free_ms 0); a page-cache page allocated from such memory then
#   faults in from the host. At order 9 (2 MiB blocks), writing 512 MiB
#   into the page cache with dd ran at 0.4-0.65 GB/s; at order 11 (8 MiB
#   blocks, which hardly ever come free) 4.5-5.5 GB/s. Buffered figures
#   from the two states are not comparable.
# - guest_halt_poll_ns: 0 halts an idle vCPU at once, so every thread
#   wake-up on it is an exit to the host (sync/busy_poll.h).
vm_state() {
  local m=/sys/module
  printf 'page_reporting_order=%s guest_halt_poll_ns=%s\n' \
    "$(cat $m/page_reporting/parameters/page_reporting_order 2>/dev/null || echo none)" \
    "$(cat $m/haltpoll/parameters/guest_halt_poll_ns 2>/dev/null || echo none)"
}

# BENCH_PAGE_REPORTING_ORDER, when set, is written to page_reporting_order
# for the run, and the order found before is written back at exit
# (restore_vm_state, from the scripts' exit traps): so that either state
# of vm_state() can be measured on purpose. Exits 2 where the kernel has
# no such setting or refuses the value.
page_reporting=/sys/module/page_reporting/parameters/page_reporting_order
saved_page_reporting_order=""
set_vm_state() {
  local want=${BENCH_PAGE_REPORTING_ORDER:-} was
  [[ -n $want ]] || return 0
  if ! was=$(cat "$page_reporting" 2>/dev/null); then
    echo "$bench_name: BENCH_PAGE_REPORTING_ORDER: this kernel has no $page_reporting" >&2
    exit 2
  fi
  if ! (echo "$want" >"$page_reporting") 2>/dev/null; then
    echo "$bench_name: BENCH_PAGE_REPORTING_ORDER: the kernel refused order '$want' (it has $was)" >&2
    exit 2
  fi
  saved_page_reporting_order=$was
}
restore_vm_state() {
  if [[ -n $saved_page_reporting_order ]]; then
    echo "$saved_page_reporting_order" >"$page_reporting" || true
  fi
}

# Writes back and drops the page cache: the next read is cold.
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# A TCP port on 127.0.0.1 free right now.
free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Appends the pids of processes whose command line matches $1 to pids[].
remember_pids() {
  local p
  for p in $(pgrep -f -- "$1" || true); do pids+=("$p"); done
}

# Polls `status --json` of store $1 until its peer $2 is connected (30 s at most).
wait_connected() {
  "$python" - "$bin" "$1" "$2" "$bench_name" <<'PY'
import json, subprocess, sys, time
binary, store, peer, name = sys.argv[1:]
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    r = subprocess.run([binary, "status", store, "--json"], capture_output=True, text=True)
    if r.returncode == 0 and any(p.get("name") == peer and p.get("state") == "connected"
                                 for p in json.loads(r.stdout).get("peers", [])):
        sys.exit(0)
    time.sleep(0.1)
sys.exit(f"{name}: peer {peer} of {store} not connected after 30 s")
PY
}

# passthrough_ll's allocator settings (BENCH_PLL_TUNABLES; empty: stock).
# libfuse allocates every read reply's buffer, and glibc's default mmaps
# and unmaps each one of 128 KiB or more.
# shellcheck disable=SC2034 # used by the sourcing scripts
pll_tunables=${BENCH_PLL_TUNABLES-glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864}

# Compiles libfuse's passthrough_ll example (maybe shipped gzipped) into
# $1/passthrough_ll.
build_passthrough_ll() {
  local out=$1 ex=/usr/share/doc/libfuse3-dev/examples f
  mkdir -p "$out/pll-build"
  for f in passthrough_ll.c passthrough_helpers.h; do
    if [[ -f $ex/$f ]]; then
      cp "$ex/$f" "$out/pll-build/$f"
    elif [[ -f $ex/$f.gz ]]; then
      gzip -dc "$ex/$f.gz" >"$out/pll-build/$f"
    else
      echo "$bench_name: $ex/$f(.gz) missing (libfuse3-dev)" >&2
      return 1
    fi
  done
  # shellcheck disable=SC2046 # pkg-config's flags are words
  (cd "$out/pll-build" && gcc -O2 -Wall passthrough_ll.c $(pkg-config fuse3 --cflags --libs) \
    -o "$out/passthrough_ll")
}
