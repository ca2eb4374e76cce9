# shellcheck shell=bash
# Shared by the benchmark scripts (source it; they set $bin, the
# mirrorfs binary, and $bench_name, used in messages).
# shellcheck disable=SC2154  # bin, bench_name: set by the sourcing script

python=/usr/bin/python3  # Debian's, with the modules the scripts use
[[ -x $python ]] || python=python3

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
