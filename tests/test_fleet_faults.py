"""Fleet faults through the real app and fake ComfyUIs on loopback: a host killed, cut off, answering garbage or
removed from the configuration never costs another host's job or its own record; /healthz per host; routing by
estimated wait; the cached /object_info refreshed on reconnect and after a failed validation."""
from __future__ import annotations

import json
import threading

import pytest
import websocket

from fake_comfy import FakeComfy
from hostile_comfy import LOGIN_PAGE, HostileComfy, nested
from live import LiveServer, recorded_prompt, wait_for
from monitor import reconciler
from monitor.service import Host
from test_fleet import fleet_server, host_of_post, object_info_for

SLOW = 0.25   # replay speed: the recorded run (1.5 s) takes about 6 s, ten sampler steps about 1.6 s apart


@pytest.fixture
def fakes():
    started: list[FakeComfy] = []

    def make(n: int, **kw) -> list[FakeComfy]:
        started.extend(FakeComfy(**kw) for _ in range(n))
        return started[-n:]
    yield make
    for fake in started:
        fake.stop()


class PageSocket:
    """A page's /api/run/ws, read in a thread: the progress states each job's panel would show."""

    def __init__(self, server: LiveServer):
        self.ws = websocket.create_connection(server.url.replace("http", "ws", 1) + "/api/run/ws", timeout=30)
        self.progress: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    msg = json.loads(data)
                    if msg.get("type") == "progress":
                        self.progress.append(msg)
        except Exception:
            return

    def steps(self, job_id: str, after: int = 0) -> list[int]:
        return [(m.get("step") or {}).get("value") for m in self.progress[after:]
                if m.get("prompt_id") == job_id and m.get("step")]

    def close(self):
        self.ws.close()


def connected(server, name: str) -> bool:
    return server.monitor.by_name[name].listener.connected


def cut_off(fake: FakeComfy) -> None:
    """The network to `fake` fails: every request (the WebSocket handshake too) answers 503 and its open sockets
    die. ComfyUI itself keeps running: what it runs meanwhile ends up in its /history."""
    class Unreachable(dict):
        def get(self, key, default=None):
            return lambda: fake.app.response_class("upstream unreachable", status=503)
    fake.hooks = Unreachable()
    for conn in list(fake._conns):
        conn.kill()


def reconnect(fake: FakeComfy) -> None:
    fake.hooks = {}


# --- a host killed and restarted; a host cut off --------------------------------------------------

def test_a_host_killed_and_restarted_while_another_runs_a_job_to_completion(fakes, tmp_path):
    a, = fakes(1, speed=SLOW)
    b, c = fakes(2)
    b.pause()
    server = fleet_server(tmp_path, {"a": a, "b": b, "c": c})
    page = PageSocket(server)
    try:
        on_a = server.submit(host="a")
        on_b = server.submit(host="b")
        server.wait_status(on_a["id"], "running")
        wait_for(lambda: page.steps(on_a["id"]), what="a's first step on the page")
        b.stop(abrupt=True)
        wait_for(lambda: not connected(server, "b"), what="b to be noticed gone")
        mark = len(page.progress)
        b.start()
        wait_for(lambda: connected(server, "b"), timeout=10, what="b to come back")
        # b's restart forgot its queued job: stalled, with the reason; a's job never noticed anything.
        lost = server.wait_status(on_b["id"], {"stalled", "cancelled", "completed"}, timeout=20)
        assert lost["status"] == "stalled" and lost["status_reason"] == reconciler.RESTART_REASON
        done = server.wait_status(on_a["id"], {"completed", "failed", "stalled", "interrupted"}, timeout=30)
        assert done["status"] == "completed" and done["host"] == "a" and done["status_reason"] is None
        steps = page.steps(on_a["id"], after=mark)
        assert len(set(steps)) >= 2 and steps == sorted(steps), f"a's steps while b was away: {steps}"
        assert server.get(f"/api/admin/jobs/{on_a['id']}").json()["status"] == "completed"
    finally:
        page.close()
        server.stop_app()


def _cut_off_mid_run(server, fake, name: str) -> tuple[dict, str]:
    """A job runs on `fake`; the network to it fails mid-run and comes back after ComfyUI finished it. Returns
    the job's end and what it read as while the host was away."""
    job = server.submit(host=name) if len(server.monitor.hosts) > 1 else server.submit()
    server.wait_status(job["id"], "running")
    cut_off(fake)
    host = server.monitor.by_name[name] if len(server.monitor.hosts) > 1 else server.monitor.hosts[0]
    wait_for(lambda: not host.listener.connected, what="the host to be noticed gone")
    wait_for(lambda: job["id"] in fake.history, timeout=30, what="ComfyUI to finish the job meanwhile")
    gevent_sleep(1.5)   # three reconcile intervals with the host unreachable
    while_away = server.monitor.get_job(job["id"])["status"]
    reconnect(fake)
    return server.wait_status(job["id"], {"completed", "stalled", "failed"}, timeout=30), while_away


def gevent_sleep(seconds: float) -> None:
    import gevent
    gevent.sleep(seconds)


@pytest.mark.parametrize("hosts", [1, 2])
def test_nothing_lost_a_job_on_a_host_that_disappears_ends_as_with_one_host(fakes, tmp_path, hosts):
    fake, other = fakes(2, speed=SLOW)
    if hosts == 1:
        server = LiveServer(fake, str(tmp_path / "data"))
    else:
        server = fleet_server(tmp_path, {"a": other, "b": fake})
    try:
        end, while_away = _cut_off_mid_run(server, fake, "b")
        assert while_away == "running", "nothing is known while the host is away: not lost"
        assert end["status"] == "completed", end   # its host's /history decides
        assert end["status_reason"] is None and end["outputs"]
        # Gone for good from that host (restarted, history empty): only then stalled.
        job = server.submit(host="b") if hosts == 2 else server.submit()
        server.wait_status(job["id"], "running")
        fake.stop(abrupt=True)
        fake.start()
        lost = server.wait_status(job["id"], {"stalled", "completed"}, timeout=20)
        assert lost["status"] == "stalled" and lost["status_reason"] == reconciler.RESTART_REASON
    finally:
        server.stop_app()


# --- a host answering garbage ----------------------------------------------------------------------

@pytest.fixture
def hostile():
    h = HostileComfy()
    yield h
    h.stop()


def test_a_host_answering_garbage_never_disturbs_the_others(fakes, hostile, tmp_path):
    a, = fakes(1, speed=SLOW)
    for route in ("queue", "history", "object_info", "system_stats"):
        hostile.http(route, ctype="text/html", body=LOGIN_PAGE)
    server = fleet_server(tmp_path, {"a": a, "h": hostile})
    page = PageSocket(server)
    try:
        wait_for(lambda: server.monitor.by_name["h"].answer_error, what="h's garbage to be noticed")
        first = server.submit(host="a")
        server.wait_status(first["id"], "running")
        # h looks idle (its queue cannot be read) and a is busy: routing still must not pick h.
        routed = server.submit()
        assert routed["host"] == "a" and routed["routed"] == "least wait (a 1 job)"
        mark = len(page.progress)
        for action in ({"do": "text", "payload": "{not json"}, {"do": "text", "payload": json.dumps(nested(900))},
                       {"do": "fragments", "total": 200_000, "frag": 7},
                       {"do": "flood", "msg": '{"type":"progress","data":{"value":1,"max":2,"prompt_id":"x"}}',
                        "n": 3000},
                       {"do": "preview", "size": 4096, "prompt_id": first["id"]}):
            hostile.ws(**action)
        for job in (first, routed):
            done = server.wait_status(job["id"], {"completed", "failed", "stalled"}, timeout=40)
            assert done["status"] == "completed" and done["host"] == "a"
        assert len(set(page.steps(first["id"], after=mark))) >= 2, "a's progress kept flowing"
        hosts = {h["name"]: h for h in server.get("/api/admin/hosts").json()["hosts"]}
        # People get a short sentence; the detail stays with the host (and in the log, logged once).
        assert hosts["a"]["error"] is None and "unreadable" in hosts["h"]["error"]
        assert "text/html" in server.monitor.by_name["h"].answer_error
        assert server.get("/healthz").status_code == 200
        resp = server.post("/api/run", json={"prompt": recorded_prompt(), "host": "h"})
        assert resp.status_code in (201, 502), "a named host is asked; ComfyUI (or its garbage) answers"
        a.stop(abrupt=True)
        wait_for(lambda: not connected(server, "a"), what="a gone")
        resp = server.post("/api/run", json={"prompt": recorded_prompt()})
        assert resp.status_code == 400 and "h: its queue cannot be read" in resp.json()["error"]
    finally:
        page.close()
        server.stop_app()


# --- /healthz ------------------------------------------------------------------------------------------

def test_healthz_answers_200_while_any_host_is_connected_and_names_each(fakes, tmp_path):
    a, b, c = fakes(3)
    server = fleet_server(tmp_path, {"a": a, "b": b, "c": c})
    try:
        health = server.get("/healthz")
        assert health.status_code == 200 and health.json()["ok"] is True
        assert health.json()["hosts"] == [{"name": n, "connected": True, "relay": False, "error": None} for n in "abc"]
        b.stop(abrupt=True)
        c.stop(abrupt=True)
        wait_for(lambda: not connected(server, "b") and not connected(server, "c"), what="b and c gone")
        health = server.get("/healthz")
        assert health.status_code == 200 and health.json()["comfy"]["connected"] is True
        by_name = {h["name"]: h for h in health.json()["hosts"]}
        assert by_name["a"] == {"name": "a", "connected": True, "relay": False, "error": None}
        assert by_name["b"]["connected"] is False and by_name["b"]["error"]
        a.stop(abrupt=True)
        wait_for(lambda: not connected(server, "a"), what="a gone")
        health = server.get("/healthz")
        assert health.status_code == 503 and health.json()["ok"] is False
        assert [h["connected"] for h in health.json()["hosts"]] == [False, False, False]
        b.start()
        wait_for(lambda: connected(server, "b"), timeout=10, what="b back")
        assert server.get("/healthz").status_code == 200
    finally:
        server.stop_app()


def test_healthz_with_one_host_answers_as_before(live_server):
    body = live_server.get("/healthz").json()
    assert set(body) == {"ok", "db", "comfy"}
    assert set(body["comfy"]) == {"connected", "since", "last_message_at", "listener_age_s", "reconciled_at", "relay"}


def test_healthz_tells_an_anonymous_caller_only_ok(fakes, tmp_path):
    a, b = fakes(2)
    server = fleet_server(tmp_path, {"a": a, "b": b}, token="s3cret-token-for-tests")
    try:
        assert server.get("/healthz").json() == {"ok": True}
        body = server.get("/healthz", headers={"Authorization": "Bearer s3cret-token-for-tests"}).json()
        assert [h["name"] for h in body["hosts"]] == ["a", "b"]
    finally:
        server.stop_app()


# --- a host removed from the configuration ---------------------------------------------------------------

def test_jobs_of_a_host_removed_from_the_configuration_are_kept_and_marked(fakes, tmp_path):
    a, = fakes(1)
    b, = fakes(1, speed=0.05)   # its job runs for half a minute
    a.pause()
    server = fleet_server(tmp_path, {"a": a, "b": b})
    try:
        running = server.submit(host="b")
        queued = server.submit(host="b")
        on_a = server.submit(host="a")
        server.wait_status(running["id"], "running")
        before = {j: server.monitor.store.get(j) for j in (running["id"], queued["id"])}
        server.overrides["comfyui_url"] = f"a={a.url}"
        server.restart_app()
        wait_for(lambda: server.monitor.hosts[0].reconciled_at, what="a reconcile pass")
        gevent_sleep(1.5)   # more passes: nothing may touch b's records
        for job_id, old in before.items():
            assert server.monitor.store.get(job_id) == old, "the record is neither lost nor rewritten"
        listed = {j["id"]: j for j in server.get("/api/admin/queue").json()["jobs"]}
        for job_id, old in before.items():
            shown = listed[job_id]
            assert (shown["status"], shown["host"]) == (old["status"], "b")
            assert shown["host_configured"] is False and shown["progress"] is None
            assert shown["queue_position"] is None
            detail = server.get(f"/api/admin/jobs/{job_id}").json()
            assert detail["host_configured"] is False and detail["status"] == old["status"]
            resp = server.post(f"/api/admin/jobs/{job_id}/cancel")
            assert resp.status_code == 409 and "no longer configured" in resp.json()["error"]
            assert resp.json()["job"]["host_configured"] is False
        assert listed[on_a["id"]]["queue_position"] == 1 and "host_configured" not in listed[on_a["id"]]
        assert "host_configured" not in server.get(f"/api/admin/jobs/{on_a['id']}").json()
        assert server.monitor.current_job() is None, "a running job nobody watches is not the current job"
        assert not any(s["prompt_id"] in before for s in server.monitor.hello()["jobs"])
    finally:
        server.stop_app()


# --- routing by estimated wait -----------------------------------------------------------------------------

def test_routing_compares_estimated_waits_when_every_host_has_one(fakes, tmp_path, monkeypatch):
    a, b, c = fakes(3)
    for fake in (a, b, c):
        fake.pause()
    server = fleet_server(tmp_path, {"a": a, "b": b, "c": c})
    try:
        server.submit(host="b")
        server.submit(host="b")
        waits = {"a": 95.4, "b": 12.0, "c": 40.0}
        monkeypatch.setattr(Host, "estimated_wait_s", lambda self: waits[self.name])
        job = server.submit()
        assert job["host"] == "b" and host_of_post(b, job["id"]), "least seconds, not least jobs"
        assert job["routed"] == "least wait (a 95 s, b 12 s, c 40 s)"
        waits["c"] = None   # one host cannot estimate: counts for all, never seconds against counts
        job = server.submit()
        assert job["host"] == "a" and job["routed"] == "least wait (a 0 jobs, b 3 jobs, c 0 jobs)"
    finally:
        server.stop_app()


# --- the object_info cache -----------------------------------------------------------------------------------

def test_object_info_is_refreshed_on_reconnect_and_after_a_failed_validation(fakes, tmp_path):
    a, b = fakes(2)
    graph = recorded_prompt()
    infos = {"a": object_info_for(graph), "b": object_info_for(graph, drop="MonitorProbeSampler")}
    for fake, name in ((a, "a"), (b, "b")):
        fake.hooks[("GET", "/object_info")] = lambda fake=fake, name=name: fake.app.response_class(
            json.dumps(infos[name]), mimetype="application/json")
    server = fleet_server(tmp_path, {"a": a, "b": b})
    host_b = server.monitor.by_name["b"]
    try:
        wait_for(lambda: host_b.object_info is not None, what="b's object_info")
        assert "MonitorProbeSampler" not in host_b.object_info
        # b gets the node; it is learnt when b's connection comes back.
        infos["b"] = object_info_for(graph)
        for conn in list(b._conns):
            conn.kill()
        wait_for(lambda: "MonitorProbeSampler" in (host_b.object_info or {}), timeout=10,
                 what="b's object_info refreshed on reconnect")
        # A model removed from b: a submission it refuses makes the monitor ask again.
        infos["b"] = object_info_for(graph, upscale_methods=("bilinear",))
        b.answer_next_post(400, {"error": {"type": "prompt_outputs_failed_validation", "message": "invalid"},
                                 "node_errors": {}})
        resp = server.post("/api/run", json={"prompt": graph, "host": "b"})
        assert resp.status_code == 400
        wait_for(lambda: host_b.object_info["ImageScale"]["input"]["required"]["upscale_method"][0] == ["bilinear"],
                 what="b's object_info refreshed after the failed validation")
        job = server.submit(graph)
        assert job["host"] == "a" and job["routed"] == "least wait (a 0 s)"
    finally:
        server.stop_app()
