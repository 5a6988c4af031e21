"""Docker environments end to end: create (image, rootfs tarball, Dockerfile), shell through a
real terminal, commit, list, rm, pruning, and syncing versions to runners (shared directory or
download, outdated, once per runner, pinned across a commit, corrupt archives refused)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading

import pexpect
import pytest

from docker_fixtures import *  # noqa: F401,F403  (fixtures)
from docker_fixtures import eventually, submit_docker

from zriver.errors import Conflict, NotFound

pytestmark = pytest.mark.docker

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm"}


def zriver(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "zriver", *cluster.cli_flags(), *args],
                            capture_output=True, text=True, env=ENV, timeout=timeout)
    assert result.returncode == 0, f"zriver {args}: {result.stdout}{result.stderr}"
    return result


def create(cluster, name: str = "bb", image: str = "zriver-test-busybox") -> str:
    reply = cluster.client(timeout=120).call("env.create", {"name": name, "image": image},
                                            timeout=120)
    return reply["version"]["version"]


def in_env(cluster, name: str, command: str) -> None:
    """Change the env container (a non-interactive `zriver env shell NAME -- ...`)."""
    zriver(cluster, "env", "shell", name, "--", "sh", "-c", command)


def commit(cluster, name: str = "bb") -> str:
    return cluster.client(timeout=120).call("env.commit", {"name": name},
                                            timeout=120)["version"]


def run(cluster, command: str, **spec) -> tuple[str, bytes]:
    task_id = submit_docker(cluster, ["sh", "-c", command], **spec)
    [summary] = cluster.wait(task_id)
    return summary["state"], cluster.log(task_id) or cluster.task(task_id)["detail"].encode()


def loaded(cluster, node: str = "n1") -> list[tuple[str, str, str]]:
    return list(cluster.runners[node].backends["docker"].envsync.loaded)


def test_create_shell_commit_run_list_rm_through_the_cli(dcluster, docker_client):
    cluster = dcluster()
    out = zriver(cluster, "env", "create", "bb", "--image", "zriver-test-busybox").stdout
    assert out.startswith("env bb created from image zriver-test-busybox")
    shell = pexpect.spawn(sys.executable, ["-m", "zriver", *cluster.cli_flags(), "env",
                                           "shell", "bb"], env=ENV, timeout=60,
                          dimensions=(40, 120))
    try:
        shell.expect(r"[#$] ")
        shell.sendline("echo hi > /marker; stty size")
        shell.expect("40 120")  # a real terminal, with the client's size
        shell.setwinsize(50, 100)
        shell.sendline("stty size")
        shell.expect("50 100")  # resizes reach it
        shell.sendline("exit")
        shell.expect(pexpect.EOF)
    finally:
        shell.close()
    assert shell.exitstatus == 0
    out = zriver(cluster, "env", "commit", "bb", "-m", "marker").stdout
    version = out.split()[3]
    state, output = run(cluster, "cat /marker")
    assert (state, output) == ("completed", b"hi\n")
    listing = json.loads(zriver(cluster, "env", "list", "--json").stdout)
    [env] = listing["envs"]
    assert [v["version"] for v in env["versions"]][0] == version
    assert len(env["versions"]) == 2 and env["versions"][0]["message"] == "marker"
    assert env["container_state"] == "running"
    client = cluster.client()
    sub = client.subscribe(["hb.n1"])
    try:  # heartbeats tell which node has which version
        eventually(lambda: version in (client.call("env.list")["envs"][0]["nodes"]
                                       .get("n1", {}).get("versions", [])), 10, "n1 has it", sub)
    finally:
        sub.close(linger=0)
    table = zriver(cluster, "env", "list").stdout
    assert f"{version} (newest)" in table and "n1" in table
    zriver(cluster, "env", "rm", "bb")
    assert docker_client.api.containers(all=True, filters={"id": env["container"]}) == []
    with pytest.raises(NotFound):
        submit_docker(cluster, ["true"])


def test_env_from_rootfs_tarball_and_from_dockerfile(dcluster, tmp_path, docker_client):
    cluster = dcluster()
    rootfs = tmp_path / "rootfs.tar"
    source = docker_client.api.create_container("zriver-test-busybox", ["true"])["Id"]
    try:
        with open(rootfs, "wb") as handle:
            for chunk in docker_client.api.export(source):
                handle.write(chunk)
    finally:
        docker_client.api.remove_container(source, force=True)
    with tarfile.open(rootfs) as tar:
        assert "bin/busybox" in tar.getnames()
    zriver(cluster, "env", "create", "fromtar", "--from-tar", str(rootfs))
    assert run(cluster, "echo tarball env", container="fromtar") == ("completed",
                                                                      b"tarball env\n")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "hello.txt").write_text("from the context\n")
    (context / "Dockerfile").write_text("FROM zriver-test-busybox\nCOPY hello.txt /hello.txt\n"
                                        "RUN echo built > /built\n")
    zriver(cluster, "env", "build", "built", "-f", str(context / "Dockerfile"))
    assert run(cluster, "cat /hello.txt /built", container="built") == (
        "completed", b"from the context\nbuilt\n")
    # an image whose entrypoint does not exist cannot start: the task says why
    (context / "Dockerfile.bad").write_text('FROM zriver-test-busybox\n'
                                            'ENTRYPOINT ["/missing-entrypoint"]\n')
    zriver(cluster, "env", "build", "bad", "-f", str(context / "Dockerfile.bad"),
           "--context", str(context))
    task_id = submit_docker(cluster, ["true"], container="bad")
    assert cluster.wait(task_id)[0]["exit_code"] == 127
    assert "command not found in env bad" in cluster.task(task_id)["detail"]
    assert "/missing-entrypoint" in cluster.task(task_id)["detail"]
    broken = subprocess.run([sys.executable, "-m", "zriver", *cluster.cli_flags(), "env",
                             "build", "broken", "-f", str(context / "Dockerfile.broken")],
                            capture_output=True, text=True, env=ENV, timeout=60)
    assert broken.returncode == 1 and "is not a file" in broken.stderr
    (context / "Dockerfile.broken").write_text("FROM zriver-test-busybox\nRUN exit 3\n")
    broken = subprocess.run([sys.executable, "-m", "zriver", *cluster.cli_flags(), "env",
                             "build", "broken", "-f", str(context / "Dockerfile.broken")],
                            capture_output=True, text=True, env=ENV, timeout=60)
    assert broken.returncode == 1 and "did not build" in broken.stderr


@pytest.mark.parametrize("shared", [True, False], ids=["shared_dir", "download"])
def test_versions_sync_when_missing_and_when_outdated(dcluster, tmp_path, shared):
    options = {"shared_dir": str(tmp_path / "shared")} if shared else {}
    cluster = dcluster({"n1": {"cores": 2, **options}}, host=options)
    first = create(cluster)
    assert run(cluster, "echo one") == ("completed", b"one\n")
    source = "shared_dir" if shared else "host"
    assert loaded(cluster) == [("bb", first, source)]
    in_env(cluster, "bb", "echo two > /v")
    second = commit(cluster)
    assert run(cluster, "cat /v") == ("completed", b"two\n")  # outdated -> synced
    assert run(cluster, "cat /v") == ("completed", b"two\n")  # present -> nothing to do
    assert loaded(cluster) == [("bb", first, source), ("bb", second, source)]
    archive = (tmp_path / "shared" / "envs" if shared else cluster.root / "host" / "envs")
    assert sorted(p.name for p in (archive / "bb").iterdir()) == sorted(
        [f"{first}.tar", f"{second}.tar"])
    assert not list((cluster.root / "n1").rglob("*.part"))  # downloads are not kept


def test_two_runners_load_a_version_once_each(dcluster):
    cluster = dcluster({"n1": {"cores": 2}, "n2": {"cores": 2}})
    version = create(cluster)
    ids = [submit_docker(cluster, ["true"]) for _ in range(8)]
    summaries = cluster.wait(*ids)
    assert {s["state"] for s in summaries} == {"completed"}
    nodes = {cluster.task(i)["node"] for i in ids}
    assert nodes == {"n1", "n2"}
    assert loaded(cluster, "n1") == [("bb", version, "host")]
    assert loaded(cluster, "n2") == [("bb", version, "host")]


def test_tasks_waiting_for_a_sync_show_it_and_share_one_load(dcluster):
    cluster = dcluster({"n1": {"cores": 2}})
    version = create(cluster)
    envsync = cluster.runners["n1"].backends["docker"].envsync
    release, loading = threading.Event(), threading.Event()
    real_load = envsync._load

    def slow_load(*args):  # freeze the sync in its loading phase
        loading.set()
        assert release.wait(30)
        return real_load(*args)

    envsync._load = slow_load
    ids = [submit_docker(cluster, ["echo", "ok"]) for _ in range(2)]
    assert loading.wait(30)
    client = cluster.client()
    phase = f"syncing env bb {version} on n1: loading"
    sub = client.subscribe(["hb.n1"])
    try:
        eventually(lambda: all(cluster.task(i)["detail"] == phase for i in ids), 10,
                   "both tasks show the sync", sub)
        eventually(lambda: client.call("env.list")["envs"][0]["nodes"].get("n1", {})
                   .get("syncing") == {"version": version, "phase": "loading"}, 10,
                   "env list shows the sync", sub)
        assert "n1 (syncing: loading)" in zriver(cluster, "env", "list").stdout
        assert all(cluster.task(i)["state"] == "assigned" for i in ids)
    finally:
        sub.close(linger=0)
        release.set()
    assert [s["state"] for s in cluster.wait(*ids)] == ["completed", "completed"]
    assert loaded(cluster) == [("bb", version, "host")]


def test_a_sweep_keeps_its_version_across_a_commit(dcluster):
    cluster = dcluster({"n1": {"cores": 1}})
    create(cluster)
    in_env(cluster, "bb", "echo old > /v")
    old = commit(cluster)
    go = cluster.root / "n1" / "local_temp" / "go"
    wait_go = "while [ ! -e /local_temp/go ]; do sleep 0.05; done; cat /v"
    ids = cluster.submit_many([{"command": ["sh", "-c", wait_go if i == 0 else "cat /v"],
                                "backend": "docker", "container": "bb"} for i in range(3)])
    cluster.wait_state(ids[0], {"running"})
    in_env(cluster, "bb", "echo new > /v")
    new = commit(cluster)
    later = submit_docker(cluster, ["cat", "/v"])
    go.touch()
    assert {s["state"] for s in cluster.wait(*ids, later)} == {"completed"}
    assert [cluster.log(i) for i in ids] == [b"old\n"] * 3
    assert cluster.log(later) == b"new\n"
    assert [v for _, v, _ in loaded(cluster)][-2:] == [old, new]


@pytest.mark.parametrize("shared", [True, False], ids=["shared_dir", "download"])
def test_a_corrupt_or_half_written_archive_is_refused(dcluster, tmp_path, docker_client,
                                                      shared):
    options = {"shared_dir": str(tmp_path / "shared")} if shared else {}
    cluster = dcluster({"n1": {"cores": 2, **options}}, host=options)
    version = create(cluster)
    archive = (tmp_path / "shared" if shared else cluster.root / "host") / "envs" / "bb" / \
        f"{version}.tar"
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # half-written
    state, detail = run(cluster, "true")
    assert state == "failed" and b"corrupt or incomplete" in detail and b"refusing" in detail
    archive.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # one bit flipped
    state, detail = run(cluster, "true")
    assert state == "failed" and b"corrupt or incomplete" in detail
    prefix = cluster.runners["n1"].settings.image_prefix
    assert docker_client.api.images(name=f"{prefix}/bb") == []  # never loaded
    assert loaded(cluster) == []
    assert not list((cluster.root / "n1").rglob("*.part"))  # a bad download is deleted
    archive.write_bytes(data)
    assert run(cluster, "echo fine") == ("completed", b"fine\n")


def test_an_interrupted_download_resumes(dcluster):
    cluster = dcluster()
    version = create(cluster)
    data = (cluster.root / "host" / "envs" / "bb" / f"{version}.tar").read_bytes()
    part = cluster.root / "n1" / "envs" / "bb" / f"{version}.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2 + 3])
    backend = cluster.runners["n1"].backends["docker"]
    offsets = []
    real_call = backend.envsync._call_host

    def recording(op, body):
        if op == "env.fetch":
            offsets.append(body["offset"])
        return real_call(op, body)

    backend.envsync._call_host = recording
    assert run(cluster, "echo resumed") == ("completed", b"resumed\n")
    assert offsets[0] == len(data) // 2 + 3


def test_pruning_and_rm_spare_versions_that_tasks_need(dcluster):
    cluster = dcluster({"n1": {"cores": 1}}, host={"env_keep_versions": 1})
    first = create(cluster)
    store = cluster.root / "host" / "envs" / "bb"
    go = cluster.root / "n1" / "local_temp" / "go"
    blocker = submit_docker(cluster, ["sh", "-c", "while [ ! -e /local_temp/go ]; "
                                                  "do sleep 0.05; done"])
    cluster.wait_state(blocker, {"running"})
    waiting = submit_docker(cluster, ["true"])  # pending on the busy node, needs `first`
    client = cluster.client()
    second = commit(cluster)
    third = commit(cluster)
    assert sorted(p.stem for p in store.glob("*.tar")) == sorted([first, third])  # 2nd pruned
    with pytest.raises(Conflict, match="needed by unfinished tasks"):
        client.call("env.rm", {"name": "bb", "version": first})
    with pytest.raises(Conflict):
        client.call("env.rm", {"name": "bb"})
    go.touch()
    assert {s["state"] for s in cluster.wait(blocker, waiting)} == {"completed"}
    fourth = commit(cluster)
    assert sorted(p.stem for p in store.glob("*.tar")) == [fourth]
    versions = [v["version"] for v in client.call("env.list")["envs"][0]["versions"]]
    assert versions == [fourth] and second not in versions
    client.call("env.rm", {"name": "bb", "version": fourth})
    assert not list(store.glob("*.tar"))
    client.call("env.rm", {"name": "bb"})
    assert client.call("env.list")["envs"] == []
