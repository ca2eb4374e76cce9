#!/usr/bin/env bash
# failback.sh — run on the old primary once it is repaired: it comes back as
# a secondary, the current primary resyncs it, and (optionally) the roles
# are switched back in a planned way.
#
#   failback.sh STORE LISTEN_EP REMOTE_STORE [MOUNTPOINT]
#
# STORE, LISTEN_EP  this node's store and replication endpoint
# REMOTE_STORE      the store on the current primary
# MOUNTPOINT        if given, switch back afterwards: demote the current
#                   primary, then promote this node and mount it here
#
# 1. `mirrorfs serve STORE --listen LISTEN_EP` (unless already running as a
#    secondary). What this node wrote that never reached the current primary
#    is undone by the resync.
# 2. On the current primary: `mirrorfs sync REMOTE_STORE --peer NAME --wait
#    --timeout SYNC_TIMEOUT`. If the resync has not finished by then, the
#    script exits 3 (the resync goes on; run failback.sh again to wait for
#    it, and to switch back).
# 3. With MOUNTPOINT: `mirrorfs demote REMOTE_STORE` there; once this node no
#    longer sees it as its primary, `mirrorfs promote STORE --mount MOUNTPOINT`.
#
# Environment: REMOTE, the command prefix that runs a command on the current
# primary (e.g. "ssh root@b"; default empty: the same host); MIRRORFS_BIN
# (default: mirrorfs) and REMOTE_MIRRORFS_BIN (default: MIRRORFS_BIN);
# SYNC_TIMEOUT (3600 s); SWITCH_TIMEOUT (60 s). Needs jq.
# Exit status: 0 done; 1 a step failed (stderr says which); 2 wrong usage;
# 3 the resync did not finish within SYNC_TIMEOUT (nothing was switched).
set -euo pipefail

mirrorfs=${MIRRORFS_BIN:-mirrorfs}
remote_mirrorfs=${REMOTE_MIRRORFS_BIN:-$mirrorfs}
read -ra remote <<<"${REMOTE:-}"
sync_timeout=${SYNC_TIMEOUT:-3600}
switch_timeout=${SWITCH_TIMEOUT:-60}

say() { echo "failback: $*"; }
die() { echo "failback: $*" >&2; exit 1; }
on_primary() { "${remote[@]}" "$remote_mirrorfs" "$@"; }
if [[ $# -lt 3 || $# -gt 4 ]]; then
  echo "usage: failback.sh STORE LISTEN_EP REMOTE_STORE [MOUNTPOINT]" >&2
  exit 2
fi
store=$1 listen=$2 remote_store=$3 mountpoint=${4:-}
command -v jq >/dev/null || die "jq is needed"

if status=$("$mirrorfs" status "$store" --json 2>/dev/null); then
  role=$(jq -r .role <<<"$status")
  [[ $role == secondary ]] || die "$store already runs, as $role"
  say "$store already serves as secondary"
else
  say "starting $store as secondary on $listen"
  "$mirrorfs" serve "$store" --listen "$listen" || die "mirrorfs serve failed"
  status=$("$mirrorfs" status "$store" --json)
fi
# The primary knows this node by the name it was given there (`--peer NAME=`
# or `peer add`), which may differ from this node's own (its hostname when
# `serve` ran without --name): look it up by this node's uuid.
uuid=$(jq -r .uuid <<<"$status")
name=$(on_primary status "$remote_store" --json |
  jq -r --arg u "$uuid" '[.peers[] | select(.uuid == $u)][0].name // empty') ||
  die "cannot read the status of $remote_store on the primary"
[[ -n $name ]] || name=$(jq -r .node <<<"$status")

say "resyncing $name from the current primary (${REMOTE:-this host}:$remote_store)"
rc=0
on_primary sync "$remote_store" --peer "$name" --wait --timeout "$sync_timeout" || rc=$?
if ((rc == 3)); then
  echo "failback: the resync of $name did not finish within ${sync_timeout} s; it goes on:" \
    "run failback.sh again to wait for it${mountpoint:+ and switch back}" >&2
  exit 3
fi
((rc == 0)) || die "the resync of $name failed (mirrorfs sync exit $rc)"
say "$name is in sync"
[[ -n $mountpoint ]] || exit 0

say "switching back: demoting $remote_store"
on_primary demote "$remote_store" || die "could not demote $remote_store"
primary_state() {
  "$mirrorfs" status "$store" --json |
    jq -r '[.peers[] | select(.role == "primary")][0].state // "none"'
}
for ((waited = 0; ; waited++)); do
  state=$(primary_state)
  [[ $state == connected || $state == syncing ]] || break
  ((waited < switch_timeout * 2)) ||
    die "the old primary still replicates to $name after ${switch_timeout} s"
  sleep 0.5
done
say "promoting $store at $mountpoint"
"$mirrorfs" promote "$store" --mount "$mountpoint" || die "mirrorfs promote failed"
