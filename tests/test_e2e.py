"""End to end: the app served by gevent, a fake ComfyUI replaying the recordings, a websocket-client as browser."""
from __future__ import annotations

import json
import os

import pytest
import requests
import websocket

from fake_comfy import FakeComfy
from live import LiveServer, recorded_prompt, wait_for

JPEG, PNG = b"\xff\xd8", b"\x89PNG"

# Every test here runs against SQLite and PostgreSQL (conftest's `backend`).
pytestmark = pytest.mark.usefixtures("backend")


class Browser:
    """A browser-like /api/run/ws client that records every frame in order."""

    def __init__(self, server: LiveServer, **headers):
        self.ws = websocket.create_connection(server.url.replace("http", "ws", 1) + "/api/run/ws",
                                              timeout=10, header=[f"{k}: {v}" for k, v in headers.items()])
        self.frames: list = []

    def read_until(self, predicate, timeout: float = 20.0):
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data()
            frame = json.loads(data) if opcode == websocket.ABNF.OPCODE_TEXT else bytes(data)
            self.frames.append(frame)
            if predicate(frame):
                return frame

    def messages(self, type_: str) -> list[dict]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == type_]

    def close(self):
        self.ws.close()


def is_event(kind, job_id=None):
    return lambda f: (isinstance(f, dict) and f.get("type") == "event" and f["kind"] == kind
                      and (job_id is None or f["data"].get("id") == job_id))


def test_a_run_streams_progress_previews_and_events(live_server):
    browser = Browser(live_server)
    hello = browser.read_until(lambda f: True)
    assert hello["type"] == "hello" and hello["comfy"]["connected"] is True
    job = live_server.submit()
    browser.read_until(is_event("job.completed", job["id"]))
    browser.read_until(lambda f: isinstance(f, dict) and f.get("type") == "progress"
                       and f.get("prompt_id") == job["id"] and f.get("status") == "completed", timeout=5)

    progress = [m for m in browser.messages("progress") if m.get("prompt_id") == job["id"]]
    percents = [m["percent"] for m in progress if m["percent"] is not None]
    assert percents == sorted(percents), "progress went backwards"
    assert percents[-1] == 100 and all(p < 100 for p in percents[:-1] if p is not None)
    assert any(m.get("step") and m["step"]["max"] == 10 for m in progress), "no sampler step reached the page"
    assert any(m.get("node_title") for m in progress)

    # Every binary frame is bare image bytes, right after its `preview` text frame.
    binaries = [i for i, f in enumerate(browser.frames) if isinstance(f, bytes)]
    assert binaries, "no preview reached the browser"
    for i in binaries:
        header = browser.frames[i - 1]
        assert header["type"] == "preview" and header["prompt_id"] == job["id"]
        assert browser.frames[i][:2] == JPEG or browser.frames[i][:4] == PNG
        assert header["mime"] in ("image/jpeg", "image/png")

    events = browser.messages("event")
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    kinds = [e["kind"] for e in events if e["data"].get("id") == job["id"]]
    assert kinds == ["job.queued", "job.started", "job.completed"]
    assert all(e["ts"].endswith("+00:00") for e in events)
    browser.close()

    record = live_server.get(f"/api/admin/jobs/{job['id']}").json()
    assert record["status"] == "completed" and record["source"] == "local"
    assert record["started_at"] and record["finished_at"] and record["duration_s"] is not None
    assert {o["title"] for o in record["outputs"]} >= {"Save image"} or record["outputs"]


def test_queue_order_positions_and_restart_survival(fake_comfy, tmp_path):
    fake_comfy.pause()
    server = LiveServer(fake_comfy, str(tmp_path / "data"))
    try:
        ids = [server.submit()["id"] for _ in range(3)]
        wait_for(lambda: [j["queue_position"] for j in server.get("/api/admin/queue").json()["jobs"]] == [1, 2, 3],
                 what="queue positions from /queue")
        jobs = server.get("/api/admin/queue").json()["jobs"]
        assert [j["id"] for j in jobs] == ids
        assert all(j["status"] == "queued" for j in jobs)

        fake_comfy.resume()
        server.wait_status(ids[0], "running")
        order = server.get("/api/admin/queue").json()["jobs"]
        assert order[0]["id"] == ids[0] and order[0]["status"] == "running"
        for job_id in ids:
            server.wait_status(job_id, "completed", timeout=30)

        server.restart_app()
        for job_id in ids:
            again = server.get(f"/api/admin/jobs/{job_id}").json()
            assert again["status"] == "completed" and again["finished_at"]
        history = server.get("/api/admin/history?limit=10").json()["jobs"]
        assert [j["id"] for j in history][:3] == list(reversed(ids))
    finally:
        server.stop_app()


def test_cancel_running_job_ends_interrupted(tmp_path):
    fake = FakeComfy(scenarios=["05_interrupt"], speed=5)
    server = LiveServer(fake, str(tmp_path / "data"))
    try:
        job = server.submit(recorded_prompt("05_interrupt"))
        server.wait_status(job["id"], "running")
        wait_for(lambda: (server.monitor.get_job(job["id"])["progress"] or {}).get("step"), what="a step")
        resp = server.post(f"/api/admin/jobs/{job['id']}/cancel")
        assert resp.status_code == 200, resp.text
        done = server.wait_status(job["id"], {"interrupted", "completed", "failed"})
        assert done["status"] == "interrupted"
        assert ("POST", "/interrupt") in fake.requests
        # Once finished, a second cancel is a conflict, not a silent success.
        again = server.post(f"/api/admin/jobs/{job['id']}/cancel")
        assert again.status_code == 409 and "interrupted" in again.json()["error"]
    finally:
        server.stop_app()
        fake.stop()


def test_cancel_pending_job_ends_cancelled(fake_comfy, live_server):
    fake_comfy.pause()
    job = live_server.submit()
    resp = live_server.post(f"/api/admin/jobs/{job['id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    assert ("POST", "/queue") in fake_comfy.requests
    queue = requests.get(fake_comfy.url + "/queue", timeout=5).json()
    assert job["id"] not in {e[1] for e in queue["queue_pending"] + queue["queue_running"]}
    fake_comfy.resume()


def test_external_job_is_adopted_and_settled_from_history(fake_comfy, live_server):
    foreign = fake_comfy.add_foreign("01b_happy_path_feature_flags", client_id="comfy-ui-tab")
    adopted = wait_for(lambda: live_server.monitor.get_job(foreign.prompt_id), what="adoption")
    assert adopted["source"] == "external"
    # Unknown figures stay unknown: nothing invents a queued time the server never told us.
    final = live_server.wait_status(foreign.prompt_id, "completed", timeout=30)
    assert final["outputs"], "outputs taken from /history"
    assert final["client_id"] == "comfy-ui-tab"


def test_comfy_restart_mid_run_marks_the_lost_job_stalled(tmp_path):
    fake = FakeComfy(speed=1)
    server = LiveServer(fake, str(tmp_path / "data"))
    try:
        job = server.submit()
        server.wait_status(job["id"], "running")
        fake.stop(abrupt=True)
        wait_for(lambda: not server.monitor.listener.connected, what="the monitor to notice")
        assert server.get("/healthz").status_code == 503
        fake.start()
        stalled = server.wait_status(job["id"], {"stalled", "completed"}, timeout=20)
        assert stalled["status"] == "stalled"
        assert "restarted" in stalled["status_reason"]
        # New jobs work after the reconnect (capped backoff: well within 5 s).
        wait_for(lambda: server.monitor.listener.connected, timeout=5, what="reconnect")
        fake.speed = 10
        second = server.submit()
        server.wait_status(second["id"], "completed", timeout=30)
    finally:
        server.stop_app()
        fake.stop()


def test_monitor_restart_reattaches_to_running_and_finished_jobs(tmp_path):
    fake = FakeComfy(speed=1)
    server = LiveServer(fake, str(tmp_path / "data"))
    try:
        job = server.submit()
        server.wait_status(job["id"], "running")
        server.stop_app()
        server.start_app()
        again = server.monitor.get_job(job["id"])
        assert again["status"] == "running", "re-attached, not stalled"
        final = server.wait_status(job["id"], {"completed", "stalled"}, timeout=30)
        assert final["status"] == "completed"
    finally:
        server.stop_app()
        fake.stop()


def test_workflow_execute_fills_template_and_writes_markers(fake_comfy, tmp_path):
    out = tmp_path / "comfy-output"
    out.mkdir()
    server = LiveServer(fake_comfy, str(tmp_path / "data"), comfyui_output_dir=str(out))
    try:
        listing = server.get("/api/run/workflows").json()["workflows"]
        assert any(w["id"] == "example_invert" for w in listing)
        resp = server.post("/api/run/example_invert/execute", json={"params": {"width": 96}})
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert job["workflow_id"] == "example_invert" and job["params"]["width"] == 96
        posted = fake_comfy.posted[-1]
        assert posted["prompt_id"] == job["id"] and posted["client_id"] == server.monitor.client_id
        prefixes = [n["inputs"]["filename_prefix"] for n in posted["prompt"].values()
                    if "filename_prefix" in n.get("inputs", {})]
        assert prefixes and all(p.startswith(job["job_folder"] + "/") for p in prefixes)
        marker = out / job["job_folder"] / ".incomplete"
        wait_for(lambda: marker.exists() or server.monitor.get_job(job["id"])["status"] == "completed",
                 what="the marker")
        server.wait_status(job["id"], "completed", timeout=30)
        assert not marker.exists(), "marker removed on success"
    finally:
        server.stop_app()


def test_view_proxy_serves_outputs_and_refuses_traversal(live_server):
    job = live_server.submit()
    done = live_server.wait_status(job["id"], "completed", timeout=30)
    image = next(i for o in done["outputs"] for i in o["images"])
    resp = live_server.get("/api/view", params={k: image[k] for k in ("filename", "subfolder", "type")})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("image/")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.content[:4] == PNG
    for bad in ({"filename": "../secret.png"}, {"filename": "a/b.png"}, {"filename": "x\x00.png"},
                {"filename": "x.png", "subfolder": "/etc"}, {"filename": "x.png", "subfolder": "a/../.."},
                {"filename": "x.png", "type": "models"}, {}):
        r = live_server.get("/api/view", params=bad)
        assert r.status_code == 400 and r.json()["error"], bad


def test_bad_requests_get_clear_json_errors(live_server):
    cases = [
        ("post", "/api/run", {"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ("post", "/api/run", {"json": {"prompt": "nope"}}, 400),
        ("post", "/api/run", {"json": {"prompt": {"1": {"inputs": {}}}}}, 400),
        ("post", "/api/run", {"json": [1, 2]}, 400),
        ("post", "/api/run/no_such_workflow/execute", {"json": {}}, 404),
        ("post", "/api/run/example_invert/execute", {"json": {"params": {"width": "wide"}}}, 400),
        ("post", "/api/run/example_invert/execute", {"json": {"params": {"nope": 1}}}, 400),
        ("get", "/api/admin/jobs/unknown-id", {}, 404),
        ("post", "/api/admin/jobs/unknown-id/cancel", {}, 404),
        ("get", "/api/admin/history?limit=abc", {}, 400),
        ("get", "/api/admin/history?status=weird", {}, 400),
        ("post", "/api/run", {"data": b"x" * (3 * 1024 * 1024), "headers": {"Content-Type": "application/json"}}, 413),
    ]
    for method, path, kw, status in cases:
        resp = getattr(live_server, method)(path, **kw)
        assert resp.status_code == status, (path, resp.status_code, resp.text[:200])
        assert isinstance(resp.json().get("error"), str) and resp.json()["error"], path


def test_cross_site_posts_and_handshakes_are_refused(live_server):
    resp = live_server.post("/api/run", json={"prompt": recorded_prompt()},
                            headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException):
        Browser(live_server, Origin="null")


def test_submit_while_comfy_is_down_is_refused_and_health_says_so(fake_comfy, live_server):
    fake_comfy.stop(abrupt=True)
    wait_for(lambda: not live_server.monitor.listener.connected, what="disconnect")
    health = live_server.get("/healthz")
    assert health.status_code == 503 and health.json()["comfy"]["connected"] is False
    resp = live_server.post("/api/run", json={"prompt": recorded_prompt()})
    assert resp.status_code == 503 and "not connected" in resp.json()["error"]
    fake_comfy.start()
    wait_for(lambda: live_server.monitor.listener.connected, timeout=10, what="reconnect within 5 s + margin")
    assert live_server.get("/healthz").status_code == 200


def test_cli_submits_and_waits_against_the_real_app(live_server):
    import subprocess
    import sys
    env = dict(os.environ, MONITOR_URL=live_server.url)
    proc = subprocess.run([sys.executable, "-m", "monitor", "submit", "example_invert", "width=80", "--wait"],
                          capture_output=True, text=True, timeout=60, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = live_server.get("/api/admin/history?limit=5").json()["jobs"]
    assert jobs[0]["workflow_id"] == "example_invert" and jobs[0]["params"]["width"] == 80


def test_validation_errors_come_back_as_400_naming_the_node_titles(fake_comfy, live_server):
    import recordings
    rejected = [h for h in recordings.http("04b_validation_errors", "POST", "/prompt")
                if h["status"] == 400 and isinstance(h["request"], dict) and "prompt" in h["request"]]
    assert len(rejected) >= 8
    for exchange in rejected:
        graph = exchange["request"]["prompt"]
        if not all(isinstance(n, dict) and isinstance(n.get("class_type"), str) for n in graph.values()):
            # Refused by our own check before it reaches ComfyUI, with the same kind of message.
            resp = live_server.post("/api/run", json={"prompt": graph})
            assert resp.status_code == 400 and "class_type" in resp.json()["error"]
            continue
        fake_comfy.answer_next_post(400, exchange["response"])
        resp = live_server.post("/api/run", json={"prompt": graph})
        assert resp.status_code == 400, exchange["why"]
        body = resp.json()
        for node_id in exchange["response"]["node_errors"]:
            title = graph[node_id]["_meta"]["title"]
            assert title in body["error"], (exchange["why"], body["error"])
            assert node_id in body["node_errors"]
        if not exchange["response"]["node_errors"]:
            assert exchange["response"]["error"]["message"] in body["error"]
        job = body["job"]
        assert job["status"] == "failed" and job["error"]["message"] == body["error"]


def test_prompt_without_client_id_streams_progress_and_previews_to_the_page(fake_comfy, live_server):
    """Scripts that post without a client id: ComfyUI broadcasts their progress and type-1 previews
    (07b); the monitor adopts the prompt and attributes those frames to it."""
    from fake_comfy import ReplayEngine
    browser = Browser(live_server)
    engine = ReplayEngine("07b_observer_no_client_id", prompt=0, speed=3)
    foreign = fake_comfy.add_foreign(engine, client_id=None)
    header = browser.read_until(lambda f: isinstance(f, dict) and f.get("type") == "preview")
    image = browser.read_until(lambda f: True)
    assert header["prompt_id"] == foreign.prompt_id
    assert isinstance(image, bytes) and image[:2] == JPEG
    browser.read_until(lambda f: isinstance(f, dict) and f.get("type") == "progress"
                       and f.get("prompt_id") == foreign.prompt_id and f.get("step"))
    final = live_server.wait_status(foreign.prompt_id, {"completed", "failed", "interrupted", "stalled"})
    assert final["status"] == "completed" and final["source"] == "external"
    browser.close()
