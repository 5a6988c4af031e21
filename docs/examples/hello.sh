#!/usr/bin/env bash
# hello.sh: one task, its output and its exit status.
#
# Needs a running cluster: `zriver up -d` on this machine (or ZRIVER_HOME / ZRIVER_HOST
# pointing at one). Run: bash docs/examples/hello.sh
set -euo pipefail

fail() { echo "hello.sh: $*" >&2; exit 1; }

# submit prints the new task's id; wait exits 0 only when the task completed
id=$(zriver submit --name hello -- echo "hello from zriver")
zriver wait "$id"
out=$(zriver logs "$id")
[ "$out" = "hello from zriver" ] || fail "task $id printed '$out'"
echo "task $id printed: $out"

# --follow prints the id, then the output live, and exits with the task's exit status
status=0
out=$(zriver submit --follow -- sh -c 'echo working; exit 3') || status=$?
[ "$status" -eq 3 ] || fail "expected exit status 3, got $status"
[ "$(tail -n 1 <<<"$out")" = "working" ] || fail "followed output was '$out'"

# stdout and stderr are kept apart
id=$(zriver submit -- sh -c 'echo to-stdout; echo to-stderr >&2')
zriver wait "$id"
[ "$(zriver logs "$id")" = "to-stdout" ] || fail "stdout of task $id"
[ "$(zriver logs --stderr "$id")" = "to-stderr" ] || fail "stderr of task $id"
echo "hello.sh: ok"
