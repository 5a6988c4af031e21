#!/usr/bin/env bash
# docker-env.sh: an environment made from a Docker image, and tasks that run in it.
#
# ZRIVER_EXAMPLE_IMAGE names an image in the host's Docker (default: busybox, which Docker
# pulls when it is missing and a registry is reachable). Without a registry, import one:
#   tar -C ROOTFS -c . | docker import -c 'ENV PATH=/bin' - my-image
#   ZRIVER_EXAMPLE_IMAGE=my-image bash docs/examples/docker-env.sh
# The image needs `sh`, `echo` and `cat`. The environment is removed again at the end.
# Needs a running cluster whose host and node have Docker (`zriver up -d`, or ZRIVER_HOME).
# needs: docker
set -euo pipefail

fail() { echo "docker-env.sh: $*" >&2; exit 1; }
image=${ZRIVER_EXAMPLE_IMAGE:-busybox}
env=example-$$
trap 'zriver env rm "$env" >/dev/null 2>&1 || true' EXIT

# the env's first version is published at once; nodes fetch it when a task needs it
zriver env create "$env" --image "$image"
version=$(zriver env list | awk -v env="$env" '$1 == env && /newest/ {print $2}')
[ -n "$version" ] || fail "no version of $env in: $(zriver env list)"

# a container task: the output, --env and the exit status work as for native tasks
id=$(zriver submit --container "$env" --env GREETING=hi -- \
     sh -c 'echo "$GREETING from task $ZRIVER_TASK_ID"; cat /etc/passwd > /dev/null')
zriver wait "$id" >/dev/null
[ "$(zriver logs "$id")" = "hi from task $id" ] || fail "task $id printed $(zriver logs "$id")"
# the version is fixed at submit: a later commit never changes what this task ran in
[ "$(zriver status "$id" | awk '$1 == "env_version:" {print $2}')" = "$version" ] \
  || fail "task $id did not run in version $version"
[ "$(zriver status "$id" | awk '$1 == "backend:" {print $2}')" = "docker" ] || fail "backend"
echo "task $id ran in $env version $version"

status=0
zriver submit --container "$env" --wait -- sh -c 'exit 4' >/dev/null || status=$?
[ "$status" -eq 4 ] || fail "expected exit status 4 from the container, got $status"
echo "docker-env.sh: ok"
