#!/usr/bin/env bash
# failover.sh — run on the secondary that takes over when the primary is down.
#
#   failover.sh STORE MOUNTPOINT [HEALTH_CHECK_CMD]
#
# 1. This node must be a running secondary with a consistent copy, that a
#    primary has replicated to since this node started (status --json lists
#    it in peers[], role "primary"), and that primary must not be connected
#    here now.
#    A secondary that was restarted and has not met its primary since
#    (peers[] is empty until the primary connects) cannot tell whether the
#    primary wrote while it was down: a promoted copy goes on without
#    those writes, and the old primary's return cannot bring them back
#    without an operator (split brain). The script refuses; set
#    ALLOW_UNSEEN_PRIMARY=1 once you know this copy is current (the primary
#    was down before this node was, or you accept the loss). The primary is
#    then the one peer this store remembers (`mirrorfs peer list`); with
#    several, give HEALTH_CHECK_CMD.
# 2. The old primary must be down: HEALTH_CHECK_CMD (run with bash, under a
#    timeout) must fail CHECKS times in a row, CHECK_INTERVAL seconds apart.
#    Default check: a TCP connect to the primary's endpoint, as this node
#    learned it (bash /dev/tcp). Use a better one where you have it (ping the
#    host's management address, ask the cluster manager, ...).
# 3. `mirrorfs promote STORE --mount MOUNTPOINT`.
#
# Environment: STORE, MOUNTPOINT, HEALTH_CHECK (instead of the arguments),
# MIRRORFS_BIN (default: mirrorfs), CHECKS (3), CHECK_INTERVAL (1 s),
# CHECK_TIMEOUT (2 s), ALLOW_UNSEEN_PRIMARY (see 1). Needs jq. Exit status:
# 0 promoted; 1 not promoted (the reason is on stderr); 2 wrong usage.
set -euo pipefail

mirrorfs=${MIRRORFS_BIN:-mirrorfs}
store=${1:-${STORE:-}}
mountpoint=${2:-${MOUNTPOINT:-}}
health=${3:-${HEALTH_CHECK:-}}
checks=${CHECKS:-3}
interval=${CHECK_INTERVAL:-1}
check_timeout=${CHECK_TIMEOUT:-2}

say() { echo "failover: $*"; }
die() { echo "failover: $*; not promoting" >&2; exit 1; }
if [[ -z $store || -z $mountpoint ]]; then
  echo "usage: failover.sh STORE MOUNTPOINT [HEALTH_CHECK_CMD]" >&2
  exit 2
fi
command -v jq >/dev/null || die "jq is needed"

status=$("$mirrorfs" status "$store" --json) || die "no running node for $store"
role=$(jq -r .role <<<"$status")
[[ $role == secondary ]] || die "$store is $role, not a secondary"
[[ $(jq -r .consistent <<<"$status") == true ]] ||
  die "this copy is inconsistent (a resync into it is unfinished)"
# peers[].role: the primary this node has met since it started.
primary=$(jq -c '[.peers[] | select(.role == "primary")][0] // empty' <<<"$status")
if [[ -n $primary ]]; then
  name=$(jq -r .name <<<"$primary")
  state=$(jq -r .state <<<"$primary")
  say "$store is a consistent secondary; its primary $name is $state here"
  [[ $state != connected && $state != syncing ]] ||
    die "primary $name still replicates to this node"
else
  [[ ${ALLOW_UNSEEN_PRIMARY:-0} == 1 ]] ||
    die "no primary has replicated to $store since this node started, so it cannot
tell whether it missed writes of the primary while it was away (a promoted copy
goes on without them); once you know this copy is current, run again with
ALLOW_UNSEEN_PRIMARY=1"
  # The primary as the store remembers it, if it remembers just one peer.
  remembered=$("$mirrorfs" peer list "$store" --json) ||
    die "mirrorfs peer list $store failed"
  if [[ $(jq length <<<"$remembered") == 1 ]]; then
    primary=$(jq -c '.[0]' <<<"$remembered")
    name=$(jq -r .name <<<"$primary")
  else
    primary='{}'
    name="the old primary"
  fi
  say "$store is a consistent secondary; no primary has replicated to it since it started (ALLOW_UNSEEN_PRIMARY=1)"
fi

if [[ -z $health ]]; then
  endpoint=$(jq -r '.endpoint // ""' <<<"$primary")
  [[ -n $endpoint ]] ||
    die "the primary's endpoint is unknown here ($store remembers no single peer); give HEALTH_CHECK_CMD"
  [[ $endpoint =~ ^tcp://([^:]+|\[[^]]+\]):([0-9]+)$ ]] ||
    die "cannot check primary endpoint '$endpoint' with a TCP connect; give HEALTH_CHECK_CMD"
  host=${BASH_REMATCH[1]} port=${BASH_REMATCH[2]}
  host=${host#[} host=${host%]}
  [[ $host != '*' && $host != 0.0.0.0 ]] ||
    die "primary endpoint $endpoint is a wildcard; give HEALTH_CHECK_CMD"
  health="exec 3<>/dev/tcp/$host/$port"
fi

for ((i = 1; i <= checks; i++)); do
  if timeout "$check_timeout" bash -c "$health" >/dev/null 2>&1; then
    die "health check '$health' succeeded: primary $name is up"
  fi
  say "health check $i/$checks failed: '$health'"
  ((i == checks)) || sleep "$interval"
done

say "primary $name is down; promoting $store at $mountpoint"
"$mirrorfs" promote "$store" --mount "$mountpoint" || die "mirrorfs promote failed"
