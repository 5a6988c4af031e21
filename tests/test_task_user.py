"""Which Unix account a native task runs as, with real processes (the runner here is root).

The choice (``zriver.runner.accounts``): the spec's ``user`` when set, else the owner's own
non-root account on the node, else the runner's ``task_user``; an account that does not exist
fails the task. The keeper switches without a process of its own (``zriver.runner.spawn``):
these tests read the task's ``/proc/<pid>/status`` to check that it holds the account in all
of its real, effective, saved and file-system ids, with no capability left, and that the
keeper has its own ids back afterwards.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from zriver.client.commands import REGISTRY
from zriver.client.registry import build_parser
from zriver.runner import accounts
from zriver.runner.accounts import Account, Accounts, choose
from zriver.runner.spawn import ThreadIds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")

NOBODY = pwd.getpwnam("nobody")
IDS = ("echo $(id -u) $(id -g) $(id -G); echo $USER $LOGNAME $HOME; "
       "grep -E '^(Uid|Gid|Groups|CapPrm|CapEff):' /proc/$$/status")


def run_ids(cluster, **spec) -> tuple[dict, list[str]]:
    """Run ``IDS`` as a task; its summary and its output's lines."""
    task_id = cluster.submit(["sh", "-c", IDS], workdir="/", **spec)
    [summary] = cluster.wait(task_id)
    return {**summary, **cluster.task(task_id)}, cluster.log(task_id).decode().splitlines()


def status_fields(lines: list[str]) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":", 1)[1].split() for line in lines if ":" in line}


def assert_runs_as(lines: list[str], uid: int, gid: int, name: str, home: str) -> None:
    ids, names = lines[0].split(), lines[1].split()
    assert (int(ids[0]), int(ids[1])) == (uid, gid), lines
    assert names == [name, name, home], lines
    proc = status_fields(lines[2:])
    assert proc["Uid"] == [str(uid)] * 4, proc  # real, effective, saved, file system
    assert proc["Gid"] == [str(gid)] * 4, proc
    if uid != 0:  # (root's tasks keep the keeper's own groups)
        assert sorted(map(int, proc["Groups"])) == sorted(os.getgrouplist(name, gid)), proc
        assert int(proc["CapPrm"][0], 16) == 0 and int(proc["CapEff"][0], 16) == 0, proc


def keeper_pid(cluster) -> int:
    return cluster.runners["n1"].backends["native"].keeper_pid


def keeper_threads(cluster) -> list[dict[str, list[str]]]:
    """``/proc`` status of each of the keeper's threads, its main thread first."""
    pid = keeper_pid(cluster)
    tids = sorted(os.listdir(f"/proc/{pid}/task"), key=lambda tid: int(tid) != pid)
    return [status_fields(Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines())
            for tid in tids]


@pytest.fixture
def account():
    """A throwaway system account (no home directory), removed afterwards. Name it before
    the cluster in a test's arguments: the cluster, and so the account's tasks, end first."""
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.fail("useradd/userdel are needed to test owner accounts (package passwd)")
    name = f"zrtest{random.randrange(10**6)}"
    subprocess.run(["useradd", "--no-create-home", "--system", name], check=True,
                   capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(name)
    finally:
        removed = subprocess.run(["userdel", name], capture_output=True, text=True, timeout=30)
    assert removed.returncode == 0, f"userdel {name}: {removed.stderr}"


@pytest.fixture
def open_dir():
    """A directory every account may write in (the tests' own tmp dirs are root's only)."""
    path = Path(tempfile.mkdtemp(prefix="zriver-task-user-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---- the choice (pure) -----------------------------------------------------------------------
def _lookup(name: str) -> Account | None:
    known = {"alice": Account("alice", 1000, 1000, (1000,), "/home/alice"),
             "root": Account("root", 0, 0, (0,), "/root"),
             "toor": Account("toor", 0, 0, (0,), "/root")}
    return known.get(name)


@pytest.mark.parametrize("user, owner, chosen", [
    ("bob", "alice", ("bob", accounts.USER)),          # an admin asked: whatever the owner
    ("root", "alice", ("root", accounts.USER)),        # root only when asked
    ("ghost", "", ("ghost", accounts.USER)),           # not looked up here: the spawn fails
    (None, "alice", ("alice", accounts.OWNER)),        # the owner's own account
    (None, "root", ("nobody", accounts.TASK_USER)),    # an owner named root: never root
    (None, "toor", ("nobody", accounts.TASK_USER)),    # nor any uid-0 alias
    (None, "nobody-here", ("nobody", accounts.TASK_USER)),
    (None, "", ("nobody", accounts.TASK_USER)),
])
def test_the_account_choice(user, owner, chosen) -> None:
    assert choose(user, owner, "nobody", _lookup) == chosen


def test_account_answers_are_remembered_for_the_ttl_found_or_not() -> None:
    now, asked = [0.0], []

    def read(name: str) -> Account | None:
        asked.append(name)
        return _lookup(name)

    cache = Accounts(ttl=5.0, read=read, clock=lambda: now[0])
    assert cache.get("alice").uid == 1000 and cache.get("ghost") is None
    assert cache.get("alice").uid == 1000 and cache.get("ghost") is None
    assert asked == ["alice", "ghost"]
    now[0] = 5.0
    cache.get("ghost")
    assert asked == ["alice", "ghost", "ghost"]


def test_submit_user_sets_the_spec_user() -> None:
    assert "submit" in REGISTRY
    parser = build_parser()
    assert parser.parse_args(["submit", "--user", "root", "--", "true"]).user == "root"
    assert parser.parse_args(["submit", "--", "true"]).user is None


def test_thread_ids_change_the_calling_thread_only() -> None:
    ids, seen = ThreadIds(), {}
    main, own = os.getpid(), (os.getuid(), os.getgid(), tuple(os.getgroups()))

    def switch() -> None:
        tid = threading.get_native_id()
        ids.set_real(NOBODY.pw_uid, NOBODY.pw_gid, (NOBODY.pw_gid,))
        try:
            for name, task in (("self", tid), ("main", main)):
                status = Path(f"/proc/{main}/task/{task}/status").read_text().splitlines()
                seen[name] = status_fields(status)
        finally:
            ids.set_real(*own)
        seen["after"] = os.getresuid(), os.getresgid()

    thread = threading.Thread(target=switch)
    thread.start()
    thread.join()
    assert ids.per_thread, "no per-thread id calls on this machine"
    nobody = str(NOBODY.pw_uid)
    assert seen["self"]["Uid"] == [nobody, "0", "0", "0"], seen  # real only; still root
    assert seen["self"]["Groups"] == [str(NOBODY.pw_gid)], seen
    assert seen["main"]["Uid"] == ["0"] * 4, seen  # the other thread never changed
    assert seen["after"] == ((0, 0, 0), (0, 0, 0)) and os.getresuid() == (0, 0, 0)


# ---- real tasks ------------------------------------------------------------------------------
def test_a_task_with_no_account_of_its_owner_runs_as_the_task_user(cluster) -> None:
    task, lines = run_ids(cluster, user=None, owner="nobody-here")
    assert task["state"] == "completed", task
    assert_runs_as(lines, NOBODY.pw_uid, NOBODY.pw_gid, "nobody", NOBODY.pw_dir)
    # The keeper took its own ids back at once (its main thread never changed them).
    threads = keeper_threads(cluster)
    assert len(threads) == 2, threads
    for proc in threads:
        assert proc["Uid"] == ["0"] * 4 and proc["Gid"] == ["0"] * 4, proc
        assert proc["Groups"] == [str(g) for g in os.getgroups()], proc


def test_an_owner_named_root_gets_the_task_user_and_user_root_gets_root(cluster) -> None:
    task, lines = run_ids(cluster, user=None, owner="root")
    assert task["state"] == "completed", task
    assert int(lines[0].split()[0]) == NOBODY.pw_uid
    task, lines = run_ids(cluster, user="root", owner="nobody-here")
    assert task["state"] == "completed", task
    assert_runs_as(lines, 0, 0, "root", pwd.getpwnam("root").pw_dir)


def test_an_owner_with_an_account_on_the_node_runs_as_it(account, cluster) -> None:
    task, lines = run_ids(cluster, user=None, owner=account.pw_name)
    assert task["state"] == "completed", task
    assert_runs_as(lines, account.pw_uid, account.pw_gid, account.pw_name, account.pw_dir)


def test_a_task_cannot_signal_the_keeper_while_it_spawns_as_the_same_account(
        account, make_cluster, open_dir) -> None:
    """While the keeper's spawning thread has the account's real uid, ``kill(pid)`` and
    ``kill(-1)`` by that account still meet the main thread's ids and are refused."""
    # (no chained starts: the burst must not wait behind the killer)
    cluster = make_cluster({"n1": {"cores": 2, "memory": "4G"}}, host={"prefetch": False})
    keeper, stop = keeper_pid(cluster), open_dir / "stop"
    script = (f"while [ ! -e {stop} ]; do kill -KILL {keeper} 2>/dev/null && echo hit; "
              f"kill -KILL -1 2>/dev/null; done; echo done")
    killer = cluster.submit(["sh", "-c", script], workdir=str(open_dir), user=None,
                            owner=account.pw_name)
    cluster.wait_state(killer, {"running"})
    burst = cluster.submit_many([{"command": ["true"], "workdir": "/", "user": None,
                                  "owner": account.pw_name} for _ in range(200)])
    cluster.wait(*burst)  # (some of them may die of the kill -1: they are the account's)
    stop.touch()
    [summary] = cluster.wait(killer)
    assert summary["state"] == "completed", cluster.task(killer)
    assert cluster.log(killer) == b"done\n"
    assert keeper_pid(cluster) == keeper and Path(f"/proc/{keeper}").exists()
    assert cluster.runners["n1"].backends["native"].running() == []


def test_what_a_task_writes_and_its_logs_belong_to_its_account(account, cluster,
                                                               open_dir) -> None:
    task_id = cluster.submit(["sh", "-c", "echo out; echo err >&2; echo data > made"],
                             workdir=str(open_dir), user=None, owner=account.pw_name)
    [summary] = cluster.wait(task_id)
    assert summary["state"] == "completed", cluster.task(task_id)
    stdout, stderr = cluster.runners["n1"].log_paths(task_id)
    for path in (stdout, stderr, open_dir / "made"):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (account.pw_uid, account.pw_gid), path
    assert cluster.log(task_id) == b"out\n" and cluster.log(task_id, "stderr") == b"err\n"


def test_the_task_env_wins_over_the_account_environment(cluster) -> None:
    task_id = cluster.submit(["sh", "-c", "echo $USER $HOME"], workdir="/", user=None,
                             env={"HOME": "/srv/x"})
    cluster.wait(task_id)
    assert cluster.log(task_id) == b"nobody /srv/x\n"


def test_an_account_that_does_not_exist_fails_the_task_clearly(cluster) -> None:
    task, lines = run_ids(cluster, user="ghost")
    assert (task["state"], task["exit_code"]) == ("failed", 126), task
    assert "no account 'ghost'" in task["detail"] and "--user" in task["detail"], task
    assert lines == []


def test_submit_user_ghost_fails_clearly_on_the_command_line(cluster) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zriver", *cluster.cli_flags(), "submit", "--wait",
         "--user", "ghost", "--workdir", "/", "--", "true"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 126, result.stderr
    task = cluster.task(int(result.stdout.split()[0]))
    assert task["detail"] == "no account 'ghost' on node n1 (asked for with --user); not started"


def test_a_task_user_that_does_not_exist_fails_the_task_never_root(make_cluster) -> None:
    cluster = make_cluster({"n1": {"cores": 2, "task_user": "zriver-no-such-account"}})
    task, lines = run_ids(cluster, user=None, owner="nobody-here")
    assert (task["state"], task["exit_code"]) == ("failed", 126), task
    assert "'zriver-no-such-account'" in task["detail"] and "task_user" in task["detail"]
    assert lines == []


def test_a_workdir_the_account_cannot_enter_is_refused(cluster, tmp_path) -> None:
    # tmp_path is root's only (0700): nobody cannot enter it.
    task_id = cluster.submit(["true"], workdir=str(tmp_path), user=None)
    [summary] = cluster.wait(task_id)
    task = cluster.task(task_id)
    assert (summary["state"], summary["exit_code"]) == ("failed", 126), task
    assert "not accessible to account nobody" in task["detail"], task


def test_registration_reports_the_account_settings(make_cluster) -> None:
    cluster = make_cluster({"n1": {"cores": 2, "task_user": "daemon",
                                   "allowed_mounts": ["/data"]}})
    info = cluster.runners["n1"].info
    assert (info["task_user"], info["can_switch_accounts"], info["allowed_mounts"]) == (
        "daemon", True, ["/data"])
    task, lines = run_ids(cluster, user=None, owner="nobody-here")
    assert task["state"] == "completed", task
    assert int(lines[0].split()[0]) == pwd.getpwnam("daemon").pw_uid
