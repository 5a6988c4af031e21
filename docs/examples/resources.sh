#!/usr/bin/env bash
# resources.sh: cores, memory and placement, and what happens to a request no node can meet.
#
# Needs a running cluster with a node of at least 2 cores (`zriver up -d`, or ZRIVER_HOME /
# ZRIVER_HOST).
set -euo pipefail

fail() { echo "resources.sh: $*" >&2; exit 1; }

zriver nodes
node=$(zriver nodes | awk 'NR == 2 {print $1}')

# 2 cores, pinned: the task sees its core ids in ZRIVER_CORES and may run only on them
id=$(zriver submit --cores 2 --memory 256M --target "$node" -- \
     sh -c 'echo "$ZRIVER_NODE $ZRIVER_CORES"; grep Cpus_allowed_list /proc/self/status')
zriver wait "$id" >/dev/null
read -r ran_on cores < <(zriver logs "$id" | head -n 1)
[ "$ran_on" = "$node" ] || fail "task $id ran on $ran_on, not $node"
[ "$(tr ',' '\n' <<<"$cores" | wc -l)" -eq 2 ] || fail "task $id got cores '$cores'"
echo "task $id: node $ran_on, cores $cores"

# NODE:ZONE places a task in one NUMA zone of a node
id=$(zriver submit --target "$node:0" -- true)
zriver wait "$id" >/dev/null
[ "$(zriver status "$id" | awk '$1 == "numa_zone:" {print $2}')" = "0" ] || fail "zone of $id"

# the memory limit is enforced: past it the task ends killed_oom (a cgroup), or fails
# (where the node can only set an address-space limit; `zriver health` says which)
id=$(zriver submit --memory 64M -- python3 -c 'x = bytearray(300 << 20)')
zriver wait "$id" >/dev/null && fail "task $id used 300M under a 64M limit"
state=$(zriver status "$id" | awk '$1 == "state:" {print $2}')
case "$state" in killed_oom|failed) echo "task $id over its memory: $state" ;;
                 *) fail "task $id over its memory ended $state" ;; esac

# impossible requests are refused at submit with the reason, and nothing is queued
before=$(zriver tasks --limit 1 | awk 'NR == 2 {print $1}')
status=0
err=$(zriver submit --cores 4000 -- true 2>&1) || status=$?
[ "$status" -eq 1 ] || fail "an impossible request exited $status"
grep -q "no node can ever run this task: it asks for 4000 cores" <<<"$err" || fail "said: $err"
echo "refused: $err"
err=$(zriver submit --target no-such-node -- true 2>&1) && fail "unknown node accepted"
grep -q "unknown node 'no-such-node'" <<<"$err" || fail "said: $err"
echo "refused: $err"
[ "$(zriver tasks --limit 1 | awk 'NR == 2 {print $1}')" = "$before" ] || fail "a refused task was stored"
echo "resources.sh: ok"
