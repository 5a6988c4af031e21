#!/usr/bin/env bash
# The project's single test command: `bash tests/run.sh [pytest args...]`.
#
# On a fresh Debian/Ubuntu machine it
#   1. installs the system packages the tests need (apt-get, only when something is missing),
#   2. starts a Docker daemon when none answers (no systemd needed),
#   3. installs the project with its test and build extras (editable),
#   4. runs pytest with the given arguments and exits with its status.
# pytest's "no tests collected" (exit 5) is reported as a failure: a run that tested nothing
# must never look green. CI runs exactly this script (through .ci/run).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(docker.io busybox-static openssh-server numactl binutils tmux iproute2 procps chromium zsh fish curl)
# PyInstaller (tests/test_binary.py builds the single binary) needs a shared libpython: Debian's
# own python3 has it in a package of its own (libpython3.X), other interpreters carry it.
if [ "$(command -v python3 || true)" = /usr/bin/python3 ]; then
    PACKAGES+=("libpython$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')")
fi
DOCKER_WAIT_SECONDS="${ZRIVER_DOCKER_WAIT_SECONDS:-60}"

say() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# Run a command as root: directly when we are root, through non-interactive sudo otherwise.
# Returns 1 (without running anything) when neither is possible.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n env DEBIAN_FRONTEND=noninteractive "$@"
    else
        return 1
    fi
}

can_be_root() { as_root true 2>/dev/null; }

# --- 1. system packages --------------------------------------------------------------------
install_packages() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        say "not a Debian-based system (no dpkg-query): install these yourself if tests fail: ${PACKAGES[*]}"
        return 0
    fi
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if ! can_be_root; then
        say "missing system packages: ${missing[*]}"
        say "not root and no password-less sudo: run 'apt-get install -y ${missing[*]}' as root; tests that need them will fail"
        return 0
    fi
    say "installing missing system packages: ${missing[*]}"
    as_root apt-get update -q
    # openssh-server's postinst would start the service: a policy-rc.d answering 101 keeps
    # every service from starting (the tests copy sshd and its libraries into an image; nothing
    # runs here, and this machine's /etc/ssh host keys are never copied).
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
        own_policy=1
    fi
    local rc=0
    as_root apt-get install -y -q "${missing[@]}" || rc=$?
    if [ "$own_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
    return "$rc"
}

# --- 2. Docker daemon ----------------------------------------------------------------------
docker_answers() {
    command -v docker >/dev/null 2>&1 && timeout 20 docker version >/dev/null 2>&1
}

start_docker() {
    if docker_answers; then
        return 0
    fi
    local dockerd
    dockerd="$(command -v dockerd || true)"
    if [ -z "$dockerd" ] && [ -x /usr/sbin/dockerd ]; then
        dockerd=/usr/sbin/dockerd
    fi
    if [ -z "$dockerd" ]; then
        say "WARNING: no dockerd on this machine; the Docker tests will fail"
        return 0
    fi
    local answer
    answer="$(timeout 20 docker version 2>&1 || true)"
    if [[ "$answer" == *"permission denied"* ]]; then
        say "WARNING: the Docker daemon runs but this user may not use it (add the user to the 'docker' group); the Docker tests will fail"
        return 0
    fi
    if pgrep -x dockerd >/dev/null 2>&1; then
        say "dockerd is running but does not answer yet; waiting"
    elif can_be_root; then
        say "starting dockerd (log: /var/log/dockerd.log)"
        # setsid: its own session, so it outlives this script and its process group. The log
        # redirection happens inside the root shell (this script may be running through sudo).
        as_root setsid sh -c 'exec "$0" >/var/log/dockerd.log 2>&1' "$dockerd" </dev/null >/dev/null 2>&1 &
    else
        say "WARNING: the Docker daemon does not answer and this user cannot start it; the Docker tests will fail"
        return 0
    fi
    local deadline=$((SECONDS + DOCKER_WAIT_SECONDS))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if docker_answers; then
            say "docker answers"
            return 0
        fi
        sleep 1
    done
    say "WARNING: the Docker daemon did not answer within ${DOCKER_WAIT_SECONDS}s (see /var/log/dockerd.log); the Docker tests will fail"
    if [ -r /var/log/dockerd.log ]; then
        tail -n 20 /var/log/dockerd.log >&2 || true
    fi
    return 0
}

install_packages
start_docker

# --- 3. the project ------------------------------------------------------------------------
python3 -m pip install -q --disable-pip-version-check -e '.[test,build]'

# --- 4. the tests --------------------------------------------------------------------------
# What tests leave for people to look at (the dashboard's screenshots) goes under one folder.
export ZRIVER_ARTIFACTS="${ZRIVER_ARTIFACTS:-$PWD/artifacts}"
status=0
# --durations: the slowest tests are named at the end, to keep the suite well under 20 minutes.
python3 -m pytest --durations=25 "$@" || status=$?
if [ "$status" -eq 5 ]; then
    say "FAILED: pytest collected no tests (exit 5); a run that tests nothing is a failure"
    exit 1
fi
exit "$status"
