#!/usr/bin/env bash
# pipeline.sh: dependencies between tasks with --after (start once these completed) and
# --after-any (start once these ended, whatever their state).
#
# The tasks share this directory: a task runs in the directory you submitted from (on a
# real cluster it must exist on the node: a shared home directory gives you that).
# Needs a running cluster (`zriver up -d`, or ZRIVER_HOME / ZRIVER_HOST).
set -euo pipefail

fail() { echo "pipeline.sh: $*" >&2; exit 1; }
work=$(mktemp -d "$PWD/pipeline.XXXXXX")
cd "$work"

# prepare -> two steps that both need it -> a merge that needs both
prepare=$(zriver submit --name prepare -- sh -c 'seq 1 100 > numbers.txt')
evens=$(zriver submit --name evens --after "$prepare" -- sh -c 'awk "\$1 % 2 == 0" numbers.txt > evens.txt')
odds=$(zriver submit --name odds --after "$prepare" -- sh -c 'awk "\$1 % 2 == 1" numbers.txt > odds.txt')
merge=$(zriver submit --name merge --after "$evens,$odds" -- sh -c 'cat evens.txt odds.txt | awk "{s += \$1} END {print s}"')
zriver wait "$merge" >/dev/null
[ "$(zriver logs "$merge")" = "5050" ] || fail "merge printed $(zriver logs "$merge")"
echo "merge (task $merge) printed 5050"

# a failed step: what waits on it with --after fails without running;
# --after-any runs anyway (a clean-up step)
broken=$(zriver submit --name broken -- sh -c 'exit 1')
never=$(zriver submit --name never --after "$broken" -- sh -c 'echo ran > never.txt')
cleanup=$(zriver submit --name cleanup --after-any "$broken" -- sh -c 'echo cleaned')
zriver wait "$cleanup" >/dev/null
[ "$(zriver logs "$cleanup")" = "cleaned" ] || fail "clean-up did not run"
if zriver wait "$never" >/dev/null; then fail "task $never ran after a failed dependency"; fi
why=$(zriver status "$never" | sed -n 's/^detail: *//p')
[ "$why" = "dependency $broken ended failed" ] || fail "task $never: '$why'"
[ ! -e never.txt ] || fail "task $never ran"
echo "task $never: $why"
echo "pipeline.sh: ok"
