#!/usr/bin/env bash
# web-api.sh: the HTTP API with a token and curl: who am I, submit, read the output, the
# error codes, the OpenAPI document, and a revoked token refused at once.
#
# Needs a running cluster with its web port on (`zriver up -d`, or ZRIVER_HOME / ZRIVER_HOST),
# curl and python3 (to read JSON).
# needs: curl
set -euo pipefail

fail() { echo "web-api.sh: $*" >&2; exit 1; }
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# the dashboard's address: `zriver web --print` prints a sign-in link there
url=$(zriver web --print | grep -o 'https\?://[^ ]*' | sed 's#/login?.*##')
[ -n "$url" ] || fail "no dashboard address from zriver web --print"

# a token for scripts: shown once (the last line), revoked at the end
name=example-$$
token=$(zriver token create --name "$name" --expires 1h | tail -n 1)
trap 'zriver token revoke "$name" >/dev/null 2>&1 || true' EXIT
auth="Authorization: Bearer $token"

curl -fsS -H "$auth" "$url/api/v1/session"; echo     # {"name": ..., "role": "user", "csrf": null}

# POST /api/v1/tasks takes the body of the task.submit op: {"tasks": [spec, ...]} or {"sweep": ...}.
# A task runs as your account on the node (a user token of root's: as the node's task_user,
# `nobody`), so give it a working directory that account may enter.
body='{"tasks": [{"command": ["echo", "hello over HTTP"], "name": "web", "workdir": "/tmp"}]}'
reply=$(curl -fsS -H "$auth" -H 'Content-Type: application/json' -d "$body" "$url/api/v1/tasks")
id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["ids"][0])' <<<"$reply")
zriver wait "$id" >/dev/null
out=$(curl -fsS -H "$auth" "$url/api/v1/tasks/$id/logs" | field data)
[ "$out" = "hello over HTTP" ] || fail "task $id printed '$out'"
state=$(curl -fsS -H "$auth" "$url/api/v1/tasks/$id" | python3 -c '
import json, sys; print(json.load(sys.stdin)["task"]["state"])')
[ "$state" = "completed" ] || fail "task $id is $state"
echo "task $id, submitted over HTTP: $state, printed '$out'"

# a sweep: the host expands the span words
reply=$(curl -fsS -H "$auth" -d '{"sweep": {"spec": {"command": ["echo", "span:{1..3}"], "workdir": "/tmp"}}}' "$url/api/v1/tasks")
[ "$(field ids <<<"$reply")" != "[]" ] || fail "sweep reply $reply"

# errors are {"error": {"code", "message"}} with an HTTP status by code
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
[ "$(status "$url/api/v1/tasks")" = 401 ] || fail "no token was not 401"
[ "$(status -H "$auth" "$url/api/v1/tasks/999999999")" = 404 ] || fail "unknown task was not 404"
[ "$(status -H "$auth" -d 'not json' "$url/api/v1/tasks")" = 400 ] || fail "bad JSON was not 400"
curl -s -H "$auth" "$url/api/v1/tasks/999999999"; echo

# the OpenAPI document needs no sign-in
curl -fsS "$url/api/v1/openapi.json" | python3 -c '
import json, sys
paths = json.load(sys.stdin)["paths"]
assert "/api/v1/tasks" in paths and "/api/v1/events" in paths, sorted(paths)
print(len(paths), "paths in the OpenAPI document")'

# a revoked token is refused from its next request
zriver token revoke "$name" >/dev/null
[ "$(status -H "$auth" "$url/api/v1/session")" = 401 ] || fail "a revoked token still works"
echo "web-api.sh: ok"
