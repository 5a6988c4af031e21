"""The runnable examples of ``docs/examples/``: every ``*.sh`` there runs, as a user would run
it, against one cluster started the way a user starts one (``zriver up -d`` as a process, in a
HOME and ``ZRIVER_HOME`` of its own, every port ephemeral), with a ``zriver`` for this checkout
first on PATH; each must exit 0 (the scripts check their own results). A new example is picked
up by its file name. Every example must also be referenced from a doc page.

An example whose header has a line ``# needs: docker`` gets the local busybox image (made
with ``docker import``) in ``ZRIVER_EXAMPLE_IMAGE``, and is skipped where no Docker daemon
answers. ``# needs: PROGRAM`` (``curl``...) skips it where that program is not on PATH.
Both fail under ``CI=true`` instead (tests/run.sh installs them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from docker_images import docker_available, ensure_busybox_image
from procs import end_keepers, missing, pid_alive, role_environment
from zriver import dirlock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.sh"))
SCRIPT_TIMEOUT = 60.0
"""Seconds one example may take (each is meant to finish in under 30 on a busy machine)."""
CLI_TIMEOUT = 90.0
"""Seconds ``zriver up -d`` / ``zriver down`` may take (``up -d`` waits up to 60 s itself)."""


def needs(script: Path) -> set[str]:
    """What the ``# needs: a, b`` lines of ``script``'s header ask for."""
    wanted: set[str] = set()
    for line in script.read_text().splitlines():
        if line.startswith("# needs:"):
            wanted |= {word.strip() for word in line.split(":", 1)[1].split(",") if word.strip()}
    return wanted


class UserCluster:
    """``zriver up -d`` in a HOME of its own, and the environment a user's shell would have
    there: ``zriver`` (this checkout) on PATH, ``ZRIVER_HOME`` naming the cluster."""

    def __init__(self, base: Path) -> None:
        self.home = base / "home"
        self.zriver_home = self.home / ".zriver"
        self.zriver_home.mkdir(parents=True)
        self.prefix = f"zex{os.getpid()}{secrets.token_hex(3)}"  # this run's Docker images
        (self.zriver_home / "host.toml").write_text(
            f'env_image_prefix = "{self.prefix}-host"\n')
        (self.zriver_home / "runner.toml").write_text(f'image_prefix = "{self.prefix}-node"\n')
        bin_dir = base / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "zriver"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m zriver "$@"\n')
        wrapper.chmod(0o755)
        self.env = {**role_environment(self.zriver_home), "HOME": str(self.home),
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.pid = 0

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["zriver", *args], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT)

    def up(self) -> None:
        ran = self.cli("up", "-d", "--port", "0", "--cores", "2", "--memory", "2G")
        holder = dirlock.held(self.zriver_home, "host")
        self.pid = (holder or {}).get("pid") or 0
        assert ran.returncode == 0, ran.stdout + ran.stderr

    def run(self, script: Path, workdir: Path, extra: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script)], env={**self.env, **extra}, cwd=workdir,
                              capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)

    def down(self) -> None:
        """``zriver down``; then SIGKILL what is left: the up, the keeper and its tasks."""
        if dirlock.held(self.zriver_home, "host") is not None:
            self.cli("down")
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, 9)
        end_keepers([self.zriver_home / "runner"])
        if docker_available():
            remove_docker_leftovers(self.prefix, self.zriver_home)


def remove_docker_leftovers(prefix: str, data_dir: Path) -> None:
    """Remove the containers of this cluster's node and the images tagged with ``prefix``."""
    import docker

    runner_ids = {path.read_text().strip() for path in data_dir.rglob("runner-id")}
    client = docker.from_env(timeout=120)
    try:
        for item in client.api.containers(all=True):
            if (item.get("Labels") or {}).get("zriver.runner") in runner_ids:
                client.api.remove_container(item["Id"], force=True)
        for image in client.api.images():
            for tag in image.get("RepoTags") or []:
                if tag.startswith(prefix):
                    client.api.remove_image(tag, force=True)
    finally:
        client.close()


@pytest.fixture(scope="module")
def user_cluster(tmp_path_factory):
    cluster = UserCluster(tmp_path_factory.mktemp("examples"))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def example_image() -> str:
    """The image a ``# needs: docker`` example gets; skip (fail under CI) without Docker."""
    if not docker_available():
        missing("no Docker daemon answers (tests/run.sh installs and starts one)")
    return ensure_busybox_image()


def test_there_are_examples():
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_runs_and_checks_itself(script, user_cluster, request, tmp_path):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), f"{script.name}: no bash shebang"
    assert "\nset -euo pipefail\n" in text, f"{script.name}: no `set -euo pipefail`"
    extra = {}
    for wanted in sorted(needs(script)):
        if wanted == "docker":
            extra["ZRIVER_EXAMPLE_IMAGE"] = request.getfixturevalue("example_image")
        elif shutil.which(wanted) is None:
            missing(f"{script.name} needs {wanted}, which is not on PATH")
    ran = user_cluster.run(script, tmp_path, extra)
    assert ran.returncode == 0, (f"{script.name} exited {ran.returncode}\n--- stdout\n"
                                 f"{ran.stdout}\n--- stderr\n{ran.stderr}")
    assert f"{script.name}: ok" in ran.stdout, ran.stdout


def test_every_example_is_referenced_from_a_doc_page():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    missing = [s.name for s in SCRIPTS if f"examples/{s.name}" not in text]
    assert not missing, f"examples no doc page mentions (as examples/NAME.sh): {missing}"
