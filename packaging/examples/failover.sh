#!/usr/bin/env bash
# failover.sh — run on the secondary that takes over when the primary is down.
#
#   failover.sh STORE MOUNTPOINT [HEALTH_CHECK_CMD]
#
# 1. This node must be a running secondary with a consistent copy.
# 2. The old primary must be down: HEALTH_CHECK_CMD (run with bash, under a
#    timeout) must fail CHECKS times in a row, CHECK_INTERVAL seconds apart.
#    Default check: a TCP connect to the primary's endpoint, as this node
#    learned it (bash /dev/tcp). Use a better one where you have it (ping the
#    host's management address, ask the cluster manager, ...).
# 3. `mirrorfs promote STORE --mount MOUNTPOINT`.
#
# Environment: STORE, MOUNTPOINT, HEALTH_CHECK (instead of the arguments),
# MIRRORFS_BIN (default: mirrorfs), CHECKS (3), CHECK_INTERVAL (1 s),
# CHECK_TIMEOUT (2 s). Needs jq. Exit status: 0 promoted; 1 not promoted
# (the reason is on stderr); 2 wrong usage.
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
primary=$(jq -r '[.peers[] | select(.role == "primary")][0] // {}' <<<"$status")
name=$(jq -r '.name // "the primary"' <<<"$primary")
state=$(jq -r '.state // "unknown"' <<<"$primary")
say "$store is a consistent secondary; primary $name is $state here"
[[ $state != connected && $state != syncing ]] ||
  die "primary $name still replicates to this node"

if [[ -z $health ]]; then
  endpoint=$(jq -r '.endpoint // ""' <<<"$primary")
  [[ $endpoint =~ ^tcp://([^:]+|\[[^]]+\]):([0-9]+)$ ]] ||
    die "primary endpoint '$endpoint' unknown; give HEALTH_CHECK_CMD"
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
