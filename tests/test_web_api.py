"""The HTTP API and its WebSockets (``zriver.web``) against a real in-process host (CURVE on),
with aiohttp's client: sessions, tokens, CSRF, roles, bad input, events, the terminal."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from docker_fixtures import *  # noqa: F401,F403  (fixtures)

from zriver.principal import ADMIN, USER, Principal

ROOT = Principal("test", ADMIN)
ALICE = Principal("alice", USER)
BOB = Principal("bob", USER)


def op(cluster, principal: Principal, name: str, body: dict) -> dict:
    """``host.call`` on the cluster's loop."""
    return cluster.run(lambda: cluster.host.call(principal, name, body))


def token(cluster, principal: Principal, **body) -> str:
    return op(cluster, principal, "token.create", {"role": principal.role, **body})["token"]


def web(cluster) -> str:
    return cluster.host.endpoints["web"]


def run(coro):
    return asyncio.run(coro)


async def fetch(session: aiohttp.ClientSession, method: str, url: str, **kw) -> tuple[int, dict]:
    async with session.request(method, url, **kw) as response:
        return response.status, await response.json(content_type=None)


def browser() -> aiohttp.ClientSession:
    """A client session that keeps cookies from an IP address (as a browser does)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def api(make_cluster):
    """A cluster with one runner, and bearer headers for ``root`` (admin), alice and bob."""
    cluster = make_cluster({"n1": {"cores": 2, "memory": "4G"}})
    cluster.tokens = {p.name: bearer(token(cluster, p)) for p in (ROOT, ALICE, BOB)}
    return cluster


# ---- the server's place in the host -----------------------------------------------------------
def test_hello_and_endpoints_say_where_the_web_is(api):
    hello = api.client().call("cluster.hello", {})
    assert hello["web"] == {"port": api.host.web.port}
    assert web(api) == f"http://127.0.0.1:{api.host.web.port}"


def test_openapi_describes_every_route_without_a_login(api):
    async def go():
        async with aiohttp.ClientSession() as s:
            return await fetch(s, "GET", web(api) + "/api/v1/openapi.json")

    status, doc = run(go())
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/api/v1/tasks", "/api/v1/tasks/{id}/{action}", "/api/v1/events",
                 "/api/v1/terminal/{task_id}", "/api/v1/envs/{name}/terminal",
                 "/api/v1/ops/{op}"):
        assert path in doc["paths"], path


# ---- authentication -------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/session", "/api/v1/nodes", "/api/v1/tasks",
                                  "/api/v1/tasks/1", "/api/v1/vps", "/api/v1/envs",
                                  "/api/v1/usage", "/metrics"])
def test_no_session_or_token_is_401(api, path):
    async def go():
        async with aiohttp.ClientSession() as s:
            return (await fetch(s, "GET", web(api) + path),
                    await fetch(s, "GET", web(api) + path, headers=bearer("zrt_nonsense")))

    for status, body in run(go()):
        assert status == 401 and body["error"]["code"] == "unauthenticated", body


def test_expired_and_revoked_tokens_are_refused(api):
    expired = token(api, ALICE, expires=0.001)
    revoked = token(api, ALICE, name="soon-gone")
    op(api, ALICE, "token.revoke", {"name": "soon-gone"})

    async def go():
        async with aiohttp.ClientSession() as s:
            return [await fetch(s, "GET", web(api) + "/api/v1/session", headers=bearer(t))
                    for t in (expired, revoked)]

    for status, body in run(go()):
        assert status == 401 and body["error"]["code"] == "unauthenticated"


def test_login_makes_a_strict_httponly_session_and_csrf_guards_changes(api):
    secret = api.tokens["alice"]["Authorization"][7:]

    async def go():
        async with browser() as s:
            async with s.post(web(api) + "/api/v1/login", json={"token": secret}) as r:
                cookie = r.headers["Set-Cookie"]
                login = await r.json()
            who = await fetch(s, "GET", web(api) + "/api/v1/session")
            spec = {"tasks": [{"command": ["true"]}]}
            no_csrf = await fetch(s, "POST", web(api) + "/api/v1/tasks", json=spec)
            wrong = await fetch(s, "POST", web(api) + "/api/v1/tasks", json=spec,
                                headers={"X-CSRF-Token": "nope"})
            right = await fetch(s, "POST", web(api) + "/api/v1/tasks", json=spec,
                                headers={"X-CSRF-Token": login["csrf"]})
            out = await fetch(s, "POST", web(api) + "/api/v1/logout",
                              headers={"X-CSRF-Token": login["csrf"]})
            after = await fetch(s, "GET", web(api) + "/api/v1/session")
            return cookie, login, who, no_csrf, wrong, right, out, after

    cookie, login, who, no_csrf, wrong, right, out, after = run(go())
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert login["name"] == who[1]["name"] == "alice" and who[1]["csrf"] == login["csrf"]
    for status, body in (no_csrf, wrong):
        assert status == 403 and body["error"]["code"] == "forbidden"
    assert right[0] == 200 and len(right[1]["ids"]) == 1
    assert out[0] == 200 and after[0] == 401
    tasks = op(api, ROOT, "task.list", {})["tasks"]
    assert [t["owner"] for t in tasks] == ["alice"], "only the request with CSRF submitted"


def test_a_websocket_from_another_site_may_not_use_the_session(api):
    secret = api.tokens["alice"]["Authorization"][7:]

    async def go():
        async with browser() as s:
            await fetch(s, "POST", web(api) + "/api/v1/login", json={"token": secret})
            own = await s.ws_connect(web(api) + "/api/v1/events", origin=web(api))
            await own.close()
            try:
                await s.ws_connect(web(api) + "/api/v1/events", origin="http://evil.example")
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            return None

    assert run(go()) == 403


def test_login_with_a_bad_token_is_401(api):
    async def go():
        async with aiohttp.ClientSession() as s:
            return await fetch(s, "POST", web(api) + "/api/v1/login", json={"token": "x"})

    status, body = run(go())
    assert status == 401 and body["error"]["code"] == "unauthenticated"


def test_a_one_time_link_signs_in_once(api):
    link = op(api, ROOT, "web.login_link", {})["url"]
    assert link.startswith(web(api) + "/login?code=")

    async def go():
        async with browser() as s:
            async with s.get(link, allow_redirects=False) as r:
                first = r.status, r.headers.get("Location"), r.headers.get("Set-Cookie", "")
            who = await fetch(s, "GET", web(api) + "/api/v1/session")
        async with aiohttp.ClientSession() as other:
            again = await fetch(other, "GET", link)
        return first, who, again

    first, who, again = run(go())
    assert first[0] == 302 and first[1] == "/" and "zriver_session=" in first[2]
    assert who == (200, {"name": "test", "role": "admin", "csrf": who[1]["csrf"]})
    assert again[0] == 401 and again[1]["error"]["code"] == "unauthenticated"


def test_a_link_session_ends_with_its_key(api):
    carol = api.client(key=api.key_for("carol", "user"))
    link = carol.call("web.login_link", {})["url"]

    async def go():
        async with browser() as s:
            async with s.get(link, allow_redirects=False) as r:
                assert r.status == 302
            before = await fetch(s, "GET", web(api) + "/api/v1/session")
            op(api, ROOT, "key.revoke", {"name": "carol"})
            after = await fetch(s, "GET", web(api) + "/api/v1/session")
            return before, after

    before, after = run(go())
    assert before[0] == 200 and before[1]["name"] == "carol" and before[1]["role"] == "user"
    assert after[0] == 401 and "revoked" in after[1]["error"]["message"]


# ---- tokens ---------------------------------------------------------------------------------
def test_token_roles_and_ownership(api):
    with pytest.raises(Exception, match="only an admin"):
        op(api, ALICE, "token.create", {"role": "admin"})
    names = {t["owner"] for t in op(api, ALICE, "token.list", {})["tokens"]}
    assert names == {"alice"}, "a user lists only their own tokens"
    assert {"alice", "bob", "test"} <= {t["owner"] for t in op(api, ROOT, "token.list", {})["tokens"]}
    bobs = [t["name"] for t in op(api, BOB, "token.list", {})["tokens"]]
    with pytest.raises(Exception, match="no token"):
        op(api, ALICE, "token.revoke", {"name": bobs[0]})
    rows = op(api, ROOT, "token.list", {})["tokens"]
    assert all("token_hash" not in t and "token" not in t for t in rows)
    stored = api.call_soon(lambda: api.host.store.conn.execute(
        "SELECT token_hash FROM web_tokens").fetchall())
    secret = api.tokens["bob"]["Authorization"][7:]
    assert secret not in json.dumps(stored), "only the hash is stored"


# ---- the JSON API ---------------------------------------------------------------------------
def test_every_read_endpoint_answers_the_op_replies(api):
    task_id = api.submit(["echo", "hello web"])
    api.wait(task_id)
    urls = {"nodes": "/api/v1/nodes", "tasks": "/api/v1/tasks?state=completed,failed&limit=10",
            "task": f"/api/v1/tasks/{task_id}", "logs": f"/api/v1/tasks/{task_id}/logs",
            "vps": "/api/v1/vps", "envs": "/api/v1/envs", "usage": "/api/v1/usage",
            "hatch": "/api/v1/ops/node.health"}

    async def go():
        async with aiohttp.ClientSession(headers=api.tokens["test"]) as s:
            return {k: await fetch(s, "POST" if k == "hatch" else "GET", web(api) + url)
                    for k, url in urls.items()}

    got = run(go())
    assert all(status == 200 for status, _ in got.values()), {k: v for k, v in got.items() if v[0] != 200}
    assert [n["name"] for n in got["nodes"][1]["nodes"]] == ["n1"]
    assert [t["id"] for t in got["tasks"][1]["tasks"]] == [task_id]
    assert got["task"][1]["task"]["state"] == "completed"
    assert got["logs"][1]["data"] == "hello web\n"
    assert "nodes" in got["hatch"][1]


def test_task_list_filters_and_pages(api):
    ids = api.submit_many([{"command": ["true"], "name": f"job-{i}"} for i in range(5)])
    api.wait(*ids)

    async def go():
        async with aiohttp.ClientSession(headers=api.tokens["test"]) as s:
            urls = ["/api/v1/tasks?limit=2", f"/api/v1/tasks?limit=2&before={ids[3]}",
                    "/api/v1/tasks?name=job-4", "/api/v1/tasks?node=n1&state=completed",
                    "/api/v1/tasks?node=n9", "/api/v1/counts?state=completed,pending"]
            return [(await fetch(s, "GET", web(api) + url))[1] for url in urls]

    first, second, named, on_n1, nowhere, counts = run(go())
    assert [t["id"] for t in first["tasks"]] == [ids[4], ids[3]]
    assert first["next"] == ids[3] and first["more"] == 3 and first["more_exact"]
    assert [t["id"] for t in second["tasks"]] == [ids[2], ids[1]]
    assert second["next"] == ids[1] and second["more"] == 1
    assert [t["id"] for t in named["tasks"]] == [ids[4]] and named["next"] is None
    assert sorted(t["id"] for t in on_n1["tasks"]) == sorted(ids) and nowhere["tasks"] == []
    assert counts["counts"] == {"completed": 5, "pending": 0} and counts["capped"] == []
    assert isinstance(counts["seq"], int)  # the last task event these counts include


def test_drain_and_undrain_are_for_admins(api):
    async def go():
        async with aiohttp.ClientSession() as s:
            user = await fetch(s, "POST", web(api) + "/api/v1/nodes/n1/drain",
                               headers=api.tokens["alice"])
            admin = await fetch(s, "POST", web(api) + "/api/v1/nodes/n1/drain",
                                headers=api.tokens["test"])
            nodes = await fetch(s, "GET", web(api) + "/api/v1/nodes", headers=api.tokens["test"])
            back = await fetch(s, "POST", web(api) + "/api/v1/nodes/n1/undrain",
                               headers=api.tokens["test"])
            return user, admin, nodes, back

    user, admin, nodes, back = run(go())
    assert user[0] == 403 and user[1]["error"]["code"] == "forbidden"
    assert admin[0] == 200 and nodes[1]["nodes"][0]["drained"] and back[0] == 200


def test_a_user_cannot_kill_or_read_anothers_task(api):
    async def go():
        async with aiohttp.ClientSession() as s:
            spec = {"tasks": [{"command": ["sleep", "60"]}]}
            _, sub = await fetch(s, "POST", web(api) + "/api/v1/tasks", json=spec,
                                 headers=api.tokens["alice"])
            task_id = sub["ids"][0]
            kill = await fetch(s, "POST", web(api) + f"/api/v1/tasks/{task_id}/kill",
                               headers=api.tokens["bob"])
            logs = await fetch(s, "GET", web(api) + f"/api/v1/tasks/{task_id}/logs",
                               headers=api.tokens["bob"])
            state = await fetch(s, "GET", web(api) + f"/api/v1/tasks/{task_id}",
                                headers=api.tokens["bob"])
            own = await fetch(s, "POST", web(api) + f"/api/v1/tasks/{task_id}/kill",
                              headers=api.tokens["alice"])
            return task_id, kill, logs, state, own

    task_id, kill, logs, state, own = run(go())
    for status, body in (kill, logs):
        assert status == 403 and body["error"]["code"] == "forbidden"
    assert state[1]["task"]["state"] in ("pending", "assigned", "running"), "bob's kill changed nothing"
    assert own[0] == 200
    assert api.wait(task_id)[0]["state"] == "killed"


@pytest.mark.parametrize("method, path, body, code, status", [
    ("POST", "/api/v1/tasks", {"tasks": [{"command": ["true"], "target": "n9"}]},
     None, None),
    ("POST", "/api/v1/tasks", {"tasks": [{"command": ["true"], "cores": 999}]},
     "impossible", 400),
    ("POST", "/api/v1/tasks", {"tasks": [{"command": ["true"], "memory": "4G"}]},
     "bad_request", 400),
    ("GET", "/api/v1/tasks?state=nope", None, "invalid_argument", 400),
    ("POST", "/api/v1/tasks", {"tasks": "nope"}, "bad_request", 400),
    ("GET", "/api/v1/tasks/98765", None, "not_found", 404),
    ("POST", "/api/v1/tasks/98765/kill", None, "not_found", 404),
    ("GET", "/api/v1/tasks/abc", None, "invalid_argument", 400),
    ("GET", "/api/v1/tasks?limit=ten", None, "invalid_argument", 400),
    ("POST", "/api/v1/vps/98765/stop", None, "not_found", 404),
    ("POST", "/api/v1/ops/no.such.op", None, "unknown_op", 400),
    ("POST", "/api/v1/ops/runner.register", None, "forbidden", 403),
    ("GET", "/api/v1/nowhere", None, "not_found", 404),
])
def test_bad_input_gets_its_stable_code_and_changes_nothing(api, method, path, body, code,
                                                            status):
    async def go():
        async with aiohttp.ClientSession(headers=api.tokens["alice"]) as s:
            return await fetch(s, method, web(api) + path, json=body)

    got_status, reply = run(go())
    if code is None:  # a bad target: the op's own code, whatever it is, but an error
        assert got_status >= 400 and reply["error"]["code"] in ("invalid_argument",
                                                                 "impossible", "not_found")
    else:
        assert (got_status, reply["error"]["code"]) == (status, code), reply
    assert reply["error"]["message"]
    assert op(api, ROOT, "task.list", {})["tasks"] == []


def test_malformed_json_and_oversized_bodies(api):
    async def go():
        async with aiohttp.ClientSession(headers=api.tokens["alice"]) as s:
            bad = await fetch(s, "POST", web(api) + "/api/v1/tasks", data=b"{not json",
                              headers={"Content-Type": "application/json"})
            array = await fetch(s, "POST", web(api) + "/api/v1/tasks", json=[1, 2])
            big = await fetch(s, "POST", web(api) + "/api/v1/tasks", data=b" " * (2 << 20),
                              headers={"Content-Type": "application/json"})
            return bad, array, big

    bad, array, big = run(go())
    assert bad[0] == array[0] == 400 and bad[1]["error"]["code"] == "bad_request"
    assert big[0] == 413 and big[1]["error"]["code"] == "too_large"
    assert op(api, ROOT, "task.list", {})["tasks"] == []


def test_metrics_answer_or_say_why_not(api):
    async def go():
        async with aiohttp.ClientSession(headers=api.tokens["test"]) as s:
            async with s.get(web(api) + "/metrics") as r:
                return r.status, await r.text()

    status, text = run(go())
    assert status in (200, 503), text
    if status == 503:
        assert "metrics" in json.loads(text)["error"]["message"]


def test_the_page_is_served_without_a_login(api):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.get(web(api) + "/") as r:
                return r.status, r.content_type

    assert run(go()) == (200, "text/html")


# ---- events ---------------------------------------------------------------------------------
async def next_task_event(ws, task_id: int, states: set[str], seen: list | None = None,
                          timeout: float = 20) -> dict:
    """The first event of ``task_id`` in one of ``states``; every task event before it is
    appended to ``seen``."""
    async with asyncio.timeout(timeout):
        async for message in ws:
            event = json.loads(message.data)
            if event["topic"].startswith("evt.task.") and seen is not None:
                seen.append(event)
            if event["topic"] == f"evt.task.{task_id}" and event["body"]["state"] in states:
                return event
    raise AssertionError("the events socket closed")


def test_events_deliver_a_tasks_state_change_to_its_owner_only(api):
    async def go():
        async with aiohttp.ClientSession() as s:
            mine = await s.ws_connect(web(api) + "/api/v1/events", headers=api.tokens["alice"])
            other = await s.ws_connect(web(api) + "/api/v1/events", headers=api.tokens["bob"])
            _, sub = await fetch(s, "POST", web(api) + "/api/v1/tasks",
                                 json={"tasks": [{"command": ["true"]}]},
                                 headers=api.tokens["alice"])
            task_id = sub["ids"][0]
            event = await next_task_event(mine, task_id, {"completed"})
            # alice's events came first: bob's socket would show them before his own
            _, own = await fetch(s, "POST", web(api) + "/api/v1/tasks",
                                 json={"tasks": [{"command": ["true"]}]},
                                 headers=api.tokens["bob"])
            seen: list = []
            await next_task_event(other, own["ids"][0], {"completed"}, seen)
            await mine.close()
            await other.close()
            return task_id, event, seen

    task_id, event, seen = run(go())
    assert event["op"] == "task.state" and event["body"]["owner"] == "alice"
    assert seen and {e["body"]["owner"] for e in seen} == {"bob"}


def test_events_to_a_user_never_carry_anothers_task(api):
    from zriver.web.events import visible

    assert visible(ALICE, "evt.task.3", {"owner": "alice"})
    assert not visible(ALICE, "evt.task.3", {"owner": "bob"})
    assert visible(ROOT, "evt.task.3", {"owner": "bob"})
    assert visible(ALICE, "evt.node.n1", {}) and visible(ALICE, "hb.n1", {})
    assert visible(ALICE, "evt.batch.3", {"owner": "alice"})  # a big submit's summary
    assert not visible(ALICE, "evt.batch.3", {"owner": "bob"})
    assert not visible(ALICE, "log.3", {})
    assert not visible(ROOT, "evt.something.new", {}), "unknown kinds: nobody until decided"


# ---- the terminal ---------------------------------------------------------------------------
@pytest.mark.docker
def test_the_terminal_runs_a_command_in_a_container_task(dcluster):
    cluster = dcluster()
    cluster.client(timeout=120).call("env.create", {"name": "bb", "image": "zriver-test-busybox",
                                                    "commit": True}, timeout=120)
    alice = token(cluster, ALICE)
    bob = token(cluster, BOB)
    task_id = op(cluster, ALICE, "task.submit", {"tasks": [{
        "command": ["sleep", "3600"], "backend": "docker", "container": "bb",
        "workdir": "/"}]})["ids"][0]
    cluster.wait_state(task_id, {"running"}, timeout=60)
    url = f"{web(cluster)}/api/v1/terminal/{task_id}"

    async def go():
        async with aiohttp.ClientSession() as s:
            refused = await s.ws_connect(url, headers=bearer(bob))
            await refused.receive()
            ws = await s.ws_connect(url + "?cols=100&rows=30", headers=bearer(alice))
            await ws.send_str(json.dumps({"resize": [120, 40]}))
            await ws.send_bytes(b"echo web-$((6*7)); stty size; exit\n")
            output = b""
            async with asyncio.timeout(30):
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        output += message.data
            return refused.close_code, output, ws.close_code

    refused, output, code = run(go())
    assert refused == 4403
    assert b"web-42" in output and b"40 120" in output, output
    assert code == 1000



@pytest.mark.docker
def test_the_env_terminal_runs_a_shell_in_the_env_on_the_host(dcluster):
    cluster = dcluster()
    op(cluster, ALICE, "env.create", {"name": "abb", "image": "zriver-test-busybox"})
    root, bob = token(cluster, ROOT), token(cluster, BOB)
    url = f"{web(cluster)}/api/v1/envs/abb/terminal"

    async def go():
        async with aiohttp.ClientSession() as s:
            refused = await s.ws_connect(url, headers=bearer(bob))
            await refused.receive()
            ws = await s.ws_connect(url + "?cols=100&rows=30", headers=bearer(root))
            await ws.send_str(json.dumps({"resize": [120, 40]}))
            await ws.send_bytes(b"echo env-$((6*7)); stty size; exit 3\n")
            output, reason = b"", None
            async with asyncio.timeout(30):
                while (message := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
                    output += message.data
                if message.type == aiohttp.WSMsgType.CLOSE:
                    reason = message.extra
            return refused.close_code, output, ws.close_code, reason

    refused, output, code, reason = run(go())
    assert refused == 4403
    assert b"env-42" in output and b"40 120" in output, output
    assert code == 1000 and reason == "exit 3"


# ---- zriver up, zriver web --------------------------------------------------------------------
def read_until(process, marker: str, timeout: float = 60) -> str:
    """The first line of ``process``'s stdout containing ``marker`` (fails at its EOF or after
    ``timeout`` seconds). A thread reads the lines: ``select`` on a buffered text pipe would
    miss lines already in Python's buffer."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in iter(
        process.stdout.readline, "")] + [lines.put(None)], daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        if marker in line:
            return line
    raise AssertionError(f"no line with {marker!r} from the process")


def test_zriver_up_prints_a_one_time_link_and_zriver_web_makes_more(tmp_path):
    import re
    import subprocess
    import sys

    from procs import role_environment

    env = role_environment(tmp_path / "home")
    up = subprocess.Popen([sys.executable, "-m", "zriver", "up", "--port", "0", "--cores", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=tmp_path)
    try:
        line = read_until(up, "dashboard on")
        link = re.search(r"(http://\S+/login\?code=\S+)", line)[1]
        printed = subprocess.run([sys.executable, "-m", "zriver", "web", "--print"],
                                 capture_output=True, text=True, env=env, timeout=60)
        assert printed.returncode == 0, printed.stderr
        second = re.search(r"(http://\S+/login\?code=\S+)", printed.stdout)[1]

        async def sign_in(url: str) -> tuple[int, dict]:
            """The session a link makes (401 when the link is refused)."""
            async with browser() as s:
                async with s.get(url, allow_redirects=False) as r:
                    if r.status != 302:
                        return r.status, await r.json()
                return await fetch(s, "GET", url.split("/login")[0] + "/api/v1/session")

        status, who = run(sign_in(link))
        assert status == 200 and who["role"] == "admin", who
        assert run(sign_in(link))[0] == 401, "a link signs in once"
        assert run(sign_in(second))[1]["role"] == "admin"
    finally:
        up.terminate()
        up.wait(30)


def test_token_verbs_create_list_and_revoke(api):
    import subprocess
    import sys

    def zriver(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "zriver", *api.cli_flags(), *args],
                              capture_output=True, text=True, timeout=60)

    made = zriver("token", "create", "--name", "ci", "--expires", "30d", "--json")
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["token"]
    listed = zriver("token", "list")
    assert "ci" in listed.stdout and secret not in listed.stdout
    assert zriver("token", "revoke", "ci").returncode == 0

    async def go():
        async with aiohttp.ClientSession() as s:
            return await fetch(s, "GET", web(api) + "/api/v1/session", headers=bearer(secret))

    assert run(go())[0] == 401
    missing = zriver("token", "revoke", "nope")
    assert missing.returncode != 0 and "no token" in missing.stderr


def test_web_port_minus_one_serves_no_web(make_cluster):
    cluster = make_cluster({}, {"web_port": -1})
    assert cluster.host.web is None and "web" not in cluster.host.endpoints
    assert "web" not in cluster.client().call("cluster.hello", {})
    with pytest.raises(Exception, match="no web dashboard"):
        op(cluster, ROOT, "web.login_link", {})


def test_stopping_the_web_closes_its_websockets(api):
    async def go():
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(web(api) + "/api/v1/events", headers=api.tokens["alice"])
            stopping = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                api.host.web.stop(), api.loop))
            message = await ws.receive()
            await stopping
            return message.type, ws.close_code

    kind, code = run(go())
    assert kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and code == 1001


def test_zriver_host_prints_the_dashboard_url(tmp_path):
    import subprocess
    import sys

    from procs import role_environment, write_config

    config = write_config(tmp_path / "host.toml", {
        "data_dir": str(tmp_path / "host"), "router_port": 0, "xsub_port": 0, "xpub_port": 0,
        "stream_port": 0, "relay_port": -1, "web_port": 0})
    host = subprocess.Popen([sys.executable, "-m", "zriver", "host", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=role_environment(tmp_path / "home"), cwd=tmp_path)
    try:
        line = read_until(host, "dashboard and HTTP API on")
        url = line.split(" on ", 1)[1].split()[0]
        endpoints = json.loads((tmp_path / "host" / "endpoints.json").read_text())
        assert url == endpoints["web"]
    finally:
        host.terminate()
        host.wait(30)


@pytest.mark.parametrize("url, endpoint, expected", [
    ("http://127.0.0.1:8624/login?code=x", "tcp://lab1:8620", "http://lab1:8624/login?code=x"),
    ("http://127.0.0.1:8624/login?code=x", "tcp://127.0.0.1:8620",
     "http://127.0.0.1:8624/login?code=x"),
    ("http://10.0.0.2:8624/login?code=x", "tcp://lab1:8620", "http://10.0.0.2:8624/login?code=x"),
])
def test_zriver_web_gives_a_link_at_the_address_the_client_reached(url, endpoint, expected):
    from zriver.client.verbs_tokens import reachable

    assert reachable(url, endpoint) == expected
