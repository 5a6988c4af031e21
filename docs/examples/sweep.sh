#!/usr/bin/env bash
# sweep.sh: a parameter sweep (one task per combination, one batch), waiting for all of it,
# and stopping a whole sweep with `kill --batch`.
#
# Quote every span: unquoted, the shell expands {1..3} itself and zriver refuses the words.
# Needs a running cluster (`zriver up -d`, or ZRIVER_HOME / ZRIVER_HOST).
set -euo pipefail

fail() { echo "sweep.sh: $*" >&2; exit 1; }

# 3 seeds x 2 learning rates = 6 tasks; at most 2 of them run at once
ids=$(zriver submit --name sweep --max-parallel 2 -- \
      sh -c 'echo "seed=$1 lr=$2"' _ 'span:{1..3}' 'span:[0.1,0.01]')
set -- $ids
[ $# -eq 6 ] || fail "expected 6 task ids, got: $ids"
zriver wait "$@" >/dev/null            # non-zero if any task did not complete

# the first span varies slowest; task order is submission order
expected="seed=1 lr=0.1
seed=1 lr=0.01
seed=2 lr=0.1
seed=2 lr=0.01
seed=3 lr=0.1
seed=3 lr=0.01"
got=$(for id in "$@"; do zriver logs "$id"; done)
[ "$got" = "$expected" ] || fail "sweep output was: $got"

batch=$(zriver status "$1" | awk '$1 == "batch_id:" {print $2}')
zriver tasks --batch "$batch"
echo "batch $batch: 6 tasks completed"

# a sweep of long tasks, killed as one: running and still-pending tasks alike
ids=$(zriver submit --name long-sweep -- sleep 'span:{300..303}')
set -- $ids
batch=$(zriver status "$1" | awk '$1 == "batch_id:" {print $2}')
zriver kill --batch "$batch"
if zriver wait "$@" >/dev/null; then fail "a killed sweep waited as completed"; fi
states=$(zriver tasks --batch "$batch" | awk 'NR > 1 {print $3}' | sort -u)
[ "$states" = "killed" ] || fail "states after kill --batch: $states"
echo "batch $batch: killed"

# nothing left to kill: kill --batch says so and exits 1
if zriver kill --batch "$batch" 2>/dev/null; then fail "second kill --batch succeeded"; fi
echo "sweep.sh: ok"
