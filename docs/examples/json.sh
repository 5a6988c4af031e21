#!/usr/bin/env bash
# json.sh: scripting with --json. Every listing, `status`, `submit` and `wait` print JSON with
# stable field names; pipe it to python3 (or jq, when it is installed).
#
# Needs a running cluster (`zriver up -d`, or ZRIVER_HOME / ZRIVER_HOST).
set -euo pipefail

fail() { echo "json.sh: $*" >&2; exit 1; }
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# submit --json: {"batch_id": ..., "ids": [...]}
reply=$(zriver submit --json --name squares -- sh -c 'echo $(( $1 * $1 ))' _ 'span:{1..4}')
batch=$(field batch_id <<<"$reply")
ids=$(python3 -c 'import json, sys; print(*json.load(sys.stdin)["ids"])' <<<"$reply")
zriver wait --json $ids | python3 -c '
import json, sys
ended = json.load(sys.stdin)        # [{"id": ..., "state": ..., "exit_code": ...}, ...]
assert [t["state"] for t in ended] == ["completed"] * 4, ended
'
total=0
for id in $ids; do total=$(( total + $(zriver logs "$id") )); done
[ "$total" -eq 30 ] || fail "the squares of 1..4 added up to $total"

# tasks --json: one array of task objects; here: how long each task of the batch ran
zriver tasks --json --batch "$batch" | python3 -c '
import json, sys
tasks = json.load(sys.stdin)
assert len(tasks) == 4 and {t["batch_id"] for t in tasks} == {int(sys.argv[1])}, tasks
for t in sorted(tasks, key=lambda t: t["id"]):
    ran = t["finished_at"] - t["started_at"]
    print("task", t["id"], "on", t["node"] + ":", t["state"], f"in {ran:.2f} s")
' "$batch"

# status --json of one task: its history, a list of {"at", "state", "detail"}
first=${ids%% *}
states=$(zriver status --json "$first" | python3 -c '
import json, sys
print(" ".join(e["state"] for e in json.load(sys.stdin)["events"]))')
[ "$states" = "pending assigned running completed" ] || fail "history of $first: $states"

# nodes --json: free cores per online node
if command -v jq >/dev/null; then
  free=$(zriver nodes --json | jq '[.[] | select(.state == "online") | .cores - .cores_used] | add')
else
  free=$(zriver nodes --json | python3 -c '
import json, sys
print(sum(n["cores"] - n["cores_used"] for n in json.load(sys.stdin) if n["state"] == "online"))')
fi
[ "$free" -ge 1 ] || fail "no free core reported"
echo "free cores now: $free"
echo "json.sh: ok"
