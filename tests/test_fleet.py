"""One monitor over several ComfyUI hosts: per-host submit, routing, cancel, isolation of a failing host, the
hosts endpoint, host on every record. Real sockets: each host is its own FakeComfy on a loopback port."""
from __future__ import annotations

import os
import sqlite3

import pytest

from fake_comfy import FakeComfy
from live import LiveServer, recorded_prompt, wait_for
from monitor import create_app
from monitor.config import Config
from monitor.jobs import MIGRATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fakes():
    started: list[FakeComfy] = []

    def make(n: int, **kw) -> list[FakeComfy]:
        for _ in range(n):
            started.append(FakeComfy(**kw))
        return started[-n:]
    yield make
    for fake in started:
        fake.stop()


def fleet_server(tmp_path, named: dict[str, FakeComfy], **config) -> LiveServer:
    url = ",".join(f"{name}={fake.url}" for name, fake in named.items())
    server = LiveServer(next(iter(named.values())), str(tmp_path / "data"), comfyui_url=url, **config)
    wait_for(lambda: all(h.listener.connected for h in server.monitor.hosts), what="every host to connect")
    return server


def host_of_post(fake: FakeComfy, job_id: str) -> bool:
    return any((body or {}).get("prompt_id") == job_id for body in fake.posted)


def test_a_job_submitted_to_each_host_runs_there(fakes, tmp_path):
    a, b = fakes(2)
    server = fleet_server(tmp_path, {"a": a, "b": b})
    try:
        on_a = server.submit(host="a")
        on_b = server.submit(host="b")
        assert (on_a["host"], on_b["host"]) == ("a", "b")
        assert host_of_post(a, on_a["id"]) and not host_of_post(b, on_a["id"])
        assert host_of_post(b, on_b["id"]) and not host_of_post(a, on_b["id"])
        # Each host has its own fixed client id: its prompts' messages come back on its own socket.
        ids = {h.name: h.client_id for h in server.monitor.hosts}
        assert ids["a"] != ids["b"]
        assert {p["client_id"] for p in a.posted} == {ids["a"]} and {p["client_id"] for p in b.posted} == {ids["b"]}
        for job in (on_a, on_b):
            done = server.wait_status(job["id"], "completed", timeout=30)
            assert done["host"] == job["host"] and done["progress"] is None
            found = server.get(f"/api/admin/jobs/{job['id']}").json()
            assert found["host"] == job["host"] and found["status"] == "completed"
        # The workflow endpoint takes a host too.
        resp = server.post("/api/run/example_invert/execute", json={"params": {"width": 96}, "host": "b"})
        assert resp.status_code == 201, resp.text
        assert resp.json()["host"] == "b" and host_of_post(b, resp.json()["id"])
        # Restarted, the hosts keep their client ids (the first host's is the single-host file).
        server.restart_app()
        wait_for(lambda: all(h.listener.connected for h in server.monitor.hosts), what="reconnect")
        assert {h.name: h.client_id for h in server.monitor.hosts} == ids
        with open(os.path.join(server.data_dir, "client_id")) as fh:
            assert fh.read().strip() == ids["a"]
        with open(os.path.join(server.data_dir, "client_id.b")) as fh:
            assert fh.read().strip() == ids["b"]
    finally:
        server.stop_app()


def test_unknown_or_disconnected_host_is_refused_clearly(fakes, tmp_path):
    a, b = fakes(2)
    server = fleet_server(tmp_path, {"a": a, "b": b})
    try:
        resp = server.post("/api/run", json={"prompt": recorded_prompt(), "host": "nope"})
        assert resp.status_code == 400 and "unknown host 'nope'" in resp.json()["error"]
        assert "a, b" in resp.json()["error"]
        resp = server.post("/api/run", json={"prompt": recorded_prompt(), "host": 3})
        assert resp.status_code == 400 and "host must be a string" in resp.json()["error"]
        b.stop()
        wait_for(lambda: not server.monitor.by_name["b"].listener.connected, what="b to be gone")
        resp = server.post("/api/run", json={"prompt": recorded_prompt(), "host": "b"})
        assert resp.status_code == 503 and "'b' is not connected" in resp.json()["error"]
        assert not b.posted
        # Routing skips the disconnected host.
        job = server.submit()
        assert job["host"] == "a" and job["routed"] == "least wait (a 0 s)"
    finally:
        server.stop_app()


def test_routing_picks_the_host_with_the_least_work_ahead(fakes, tmp_path):
    a, b, c = fakes(3)
    for fake in (a, b, c):
        fake.pause()
    server = fleet_server(tmp_path, {"a": a, "b": b, "c": c})
    try:
        for _ in range(2):
            server.submit(host="a")
        server.submit(host="b")
        first = server.submit()
        assert first["host"] == "c" and host_of_post(c, first["id"])
        assert first["routed"] == "least wait (a 2 jobs, b 1 job, c 0 jobs)"
        second = server.submit()   # b 1, c 1: a tie, broken by name
        assert second["host"] == "b" and second["routed"] == "least wait (a 2 jobs, b 1 job, c 1 job)"
        assert server.get(f"/api/admin/jobs/{second['id']}").json()["routed"] == second["routed"]
        # Queue positions count per host.
        jobs = server.get("/api/admin/queue").json()["jobs"]
        by_host: dict[str, list] = {}
        for job in jobs:
            by_host.setdefault(job["host"], []).append(job["queue_position"])
        assert by_host == {"a": [1, 2], "b": [1, 2], "c": [1]}
        assert server.get(f"/api/admin/jobs/{first['id']}").json()["queue_position"] == 1
        hosts = {h["name"]: h for h in server.get("/api/admin/hosts").json()["hosts"]}
        assert {n: h["queue"] for n, h in hosts.items()} == {
            "a": {"running": 0, "pending": 2}, "b": {"running": 0, "pending": 2}, "c": {"running": 0, "pending": 1}}
    finally:
        server.stop_app()


def test_cancel_goes_to_the_jobs_own_host(fakes, tmp_path):
    a, b = fakes(2)
    a.pause()
    b.pause()
    server = fleet_server(tmp_path, {"a": a, "b": b})
    try:
        on_a = server.submit(host="a")
        on_b = server.submit(host="b")
        wait_for(lambda: b.queue_remaining() == 1 and a.queue_remaining() == 1, what="both queued")
        a.requests.clear()
        resp = server.post(f"/api/admin/jobs/{on_b['id']}/cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "cancelled" and resp.json()["host"] == "b"
        assert ("POST", "/queue") in b.requests and ("POST", "/queue") not in a.requests
        assert b.queue_remaining() == 0 and a.queue_remaining() == 1
        assert server.monitor.get_job(on_a["id"])["status"] == "queued"
    finally:
        server.stop_app()


def test_one_host_killed_and_restarted_does_not_disturb_the_other(fakes, tmp_path):
    a, b = fakes(2, speed=1)
    server = fleet_server(tmp_path, {"a": a, "b": b})
    try:
        on_a = server.submit(host="a")
        on_b = server.submit(host="b")
        server.wait_status(on_a["id"], "running")
        server.wait_status(on_b["id"], "running")
        b.stop(abrupt=True)
        wait_for(lambda: not server.monitor.by_name["b"].listener.connected, what="b to be noticed gone")
        # While b is away nothing is known about its job: it is not declared lost.
        assert server.monitor.get_job(on_b["id"])["status"] == "running"
        assert server.get("/healthz").status_code == 200, "a is still connected"
        b.start()
        stalled = server.wait_status(on_b["id"], {"stalled", "completed"}, timeout=20)
        assert stalled["status"] == "stalled" and "restarted" in stalled["status_reason"]
        done = server.wait_status(on_a["id"], {"completed", "stalled", "failed"}, timeout=30)
        assert done["status"] == "completed"
        lost = [e for e in server.monitor.events.since(0) if e["kind"] == "comfy.disconnected"]
        assert lost and all((e["data"] or {}).get("host") == "b" for e in lost), lost
        assert all(e["message"].startswith("[b] Lost the ComfyUI connection") for e in lost)
        started = [e for e in server.monitor.events.since(0) if e["kind"] == "job.started"]
        assert {(e["data"]["id"], e["data"]["host"]) for e in started} == {(on_a["id"], "a"), (on_b["id"], "b")}
        assert all(e["message"].startswith(f"[{e['data']['host']}] Job ") for e in started)
        # b works again afterwards.
        wait_for(lambda: server.monitor.by_name["b"].listener.connected, timeout=10, what="b to reconnect")
        b.speed = 10
        again = server.submit(host="b")
        assert server.wait_status(again["id"], {"completed", "stalled"}, timeout=30)["status"] == "completed"
    finally:
        server.stop_app()


def test_a_host_answering_garbage_does_not_disturb_the_other(fakes, tmp_path):
    a, b = fakes(2)
    server = fleet_server(tmp_path, {"a": a, "b": b})
    try:
        b.hooks[("GET", "/queue")] = lambda: b.app.response_class("<html>login</html>", mimetype="text/html")
        wait_for(lambda: server.monitor.by_name["b"].answer_error, what="b's garbage to be noticed")
        hosts = {h["name"]: h for h in server.get("/api/admin/hosts").json()["hosts"]}
        assert hosts["a"]["error"] is None and "/queue" in hosts["b"]["error"]
        job = server.submit(host="a")
        assert server.wait_status(job["id"], {"completed", "stalled", "failed"}, timeout=30)["status"] == "completed"
        del b.hooks[("GET", "/queue")]
        wait_for(lambda: server.monitor.by_name["b"].answer_error is None, what="b's error to clear")
    finally:
        server.stop_app()


REMOTE_STATS = {"system": {"os": "posix", "ram_total": 64_000_000_000, "ram_free": 48_000_000_000},
                "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                             "vram_total": 24_000_000_000, "vram_free": 20_000_000_000}]}


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hosts_endpoint(fakes, tmp_path, monkeypatch):
    # Every host runs on this machine (tests reach loopback only); b and far are taken for remote ones.
    from monitor.config import ComfyHost
    monkeypatch.setattr(ComfyHost, "is_loopback", property(lambda self: self.name == "a"))
    a, = fakes(1)
    b, = fakes(1, system_stats=REMOTE_STATS)
    url = f"a={a.url},b=http://user:secret@127.0.0.1:{b.port},far=http://127.0.0.1:{_closed_port()}"
    server = LiveServer(a, str(tmp_path / "data"), comfyui_url=url, comfy_timeout=1.0)
    try:
        wait_for(lambda: server.monitor.by_name["b"].listener.connected, what="b to connect")
        def sampled():   # every host's first sample (this machine's too: a loaded machine takes its time)
            h = {h["name"]: h for h in server.get("/api/admin/hosts").json()["hosts"]}
            return h if h["b"]["telemetry"] and h["far"]["telemetry"] and \
                ((h["a"]["telemetry"] or {}).get("cpu") or {}).get("count") else None
        hosts = wait_for(sampled, what="every host's first sample")
        answer = server.get("/api/admin/hosts").json()
        assert [h["name"] for h in answer["hosts"]] == ["a", "b", "far"]
        assert hosts["b"]["url"] == f"http://127.0.0.1:{b.port}", "credentials removed"
        assert "secret" not in str(answer)
        assert hosts["a"]["connected"] and hosts["a"]["since"] and hosts["a"]["error"] is None
        assert hosts["a"]["queue"] == {"running": 0, "pending": 0}
        assert isinstance(hosts["a"]["features"], dict)
        assert hosts["a"]["telemetry"]["cpu"]["count"], "this machine's sampler"
        # A remote host: what its /system_stats says, and null with a reason for what it does not say.
        remote = hosts["b"]["telemetry"]
        assert remote["ram"]["total"] == 64_000_000_000 and remote["ram"]["used"] == 16_000_000_000
        (gpu,) = remote["gpu"]["devices"]
        assert gpu["name"] == "NVIDIA GeForce RTX 4090" and gpu["memory_total"] == 24_000_000_000
        assert gpu["load_percent"] is None and gpu["reason"]
        assert remote["cpu"]["percent"] is None and "not reported" in remote["cpu"]["reason"]
        assert remote["disk"]["total"] is None and remote["disk"]["reason"]
        far = hosts["far"]
        assert far["connected"] is False and far["since"] is None and far["error"]
        assert far["telemetry"]["ram"]["total"] is None and far["telemetry"]["ram"]["reason"].startswith("ComfyUI unreachable since ")
        state = server.monitor.comfy_state()
        assert state["connected"] and [h["name"] for h in state["hosts"]] == ["a", "b", "far"]
    finally:
        server.stop_app()


def test_one_host_looks_as_before(fake_comfy, live_server):
    assert "hosts" not in live_server.monitor.comfy_state()
    job = live_server.submit()
    assert job["host"] == f"127.0.0.1:{fake_comfy.port}" and job["routed"] is None
    hosts = live_server.get("/api/admin/hosts").json()["hosts"]
    assert [h["name"] for h in hosts] == [f"127.0.0.1:{fake_comfy.port}"]
    queued = [e for e in live_server.monitor.events.since(0) if e["kind"] == "job.queued"]
    assert queued[0]["message"] == f"Job {job['id'][:8]} queued" and queued[0]["data"] == {"id": job["id"]}


def test_existing_jobs_get_the_first_configured_host(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "monitor.sqlite3")
    for migration in MIGRATIONS[:3]:   # the schema before the fleet
        for statement in migration:
            conn.execute(statement)
    conn.execute("PRAGMA user_version=3")
    conn.execute("INSERT INTO jobs (id, status, queued_at) VALUES ('old', 'completed', '2026-01-01T00:00:00+00:00')")
    conn.commit()
    conn.close()
    app = create_app(Config(data_dir=str(data), comfyui_url="gpu1=http://127.0.0.1:9,gpu2=http://127.0.0.1:10",
                            testing=True), start=False)
    try:
        assert app.extensions["monitor"].get_job("old")["host"] == "gpu1"
        client = app.test_client()
        assert client.get("/api/admin/jobs/old").get_json()["host"] == "gpu1"
    finally:
        app.extensions["monitor"].close()



def object_info_for(graph: dict, drop: str | None = None, upscale_methods=("nearest-exact", "bilinear")) -> dict:
    """An /object_info with every node type of `graph` (but `drop`), each input a plain INT, except
    ImageScale's upscale_method, a list input (COMBO) offering `upscale_methods`."""
    info = {}
    for node in graph.values():
        inputs = {name: ["INT", {}] for name in node.get("inputs", {})}
        if node["class_type"] == "ImageScale":
            inputs["upscale_method"] = [list(upscale_methods), {}]
        info[node["class_type"]] = {"input": {"required": inputs}}
    info.pop(drop, None)
    return info


def test_routing_skips_hosts_that_lack_a_node_or_a_model(fakes, tmp_path):
    import json
    a, b, c = fakes(3)
    graph = recorded_prompt()
    infos = {a: object_info_for(graph, drop="MonitorProbeSampler"),
             b: object_info_for(graph, upscale_methods=("bilinear",)), c: object_info_for(graph)}
    for fake, info in infos.items():
        fake.pause()
        fake.hooks[("GET", "/object_info")] = lambda fake=fake, info=info: fake.app.response_class(
            json.dumps(info), mimetype="application/json")
    server = fleet_server(tmp_path, {"a": a, "b": b, "c": c})
    try:
        wait_for(lambda: all(h.object_info for h in server.monitor.hosts), what="every host's object_info")
        job = server.submit(graph)
        assert job["host"] == "c" and job["routed"] == "least wait (c 0 s)"
        c.stop()
        wait_for(lambda: not server.monitor.by_name["c"].listener.connected, what="c to be gone")
        resp = server.post("/api/run", json={"prompt": graph})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == (
            "no connected host can run this graph: a: no node type 'MonitorProbeSampler' for node "
            "\"Probe sampler\" (#3) | b: no upscale_method 'nearest-exact' for node \"Upscale Image\" (#6)")
        assert not a.posted and not b.posted
        # A named host is not second-guessed: ComfyUI validates.
        assert server.post("/api/run", json={"prompt": graph, "host": "b"}).status_code in (201, 400)
        assert b.posted
    finally:
        server.stop_app()


def test_view_proxies_the_named_hosts_files(fakes, tmp_path):
    a, b = fakes(2)
    png = b"\x89PNG\r\n\x1a\n" + b"b" * 32
    b.add_file("output", "", "on_b.png", png)
    server = fleet_server(tmp_path, {"a": a, "b": b})
    try:
        params = {"filename": "on_b.png", "type": "output"}
        assert server.get("/api/view", params=params).status_code == 404, "not on the first host"
        resp = server.get("/api/view", params={**params, "host": "b"})
        assert resp.status_code == 200 and resp.content == png
        assert server.get("/api/view", params={**params, "host": "zz"}).status_code == 400
    finally:
        server.stop_app()
