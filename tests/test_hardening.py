"""Issue 5, hardening: restarts, reconnects, hostile input, security by default, load.

Each test here is named after the item of the issue it guards; this file adds what other tests did not cover:
 1. here; also test_e2e::test_submit_while_comfy_is_down_..., test_listener::test_reconnects_with_capped_backoff_...
 2. here (pending jobs too; a job posted during the first reconcile); test_e2e::test_comfy_restart_mid_run_...
 3. here (app.py killed -9 and restarted); test_e2e::test_monitor_restart_reattaches_... (in-process)
 4. here
 5. test_jobs::test_kill_9_mid_burst_leaves_a_consistent_database (WAL), test_jobs::test_data_dir_*; here: app.py
 6. test_protocol::test_fuzz_*, test_tracker::test_fuzz_handle_never_raises, test_listener::test_bad_frames_...;
    here: hypothesis frames through a real socket into the whole monitor
 7. test_e2e::test_bad_requests_..., ::test_view_proxy_..., ::test_validation_errors_...; here: the rest
 8. test_hub::test_bad_client_messages_are_ignored, ::test_huge_client_message_..., ::test_stuck_client_...;
    here: a flooding browser in its own process
 9-10. test_app::test_*credentials*, ::test_loopback_needs_no_credentials_..., test_hub::test_origin_*,
    test_e2e::test_cross_site_...; here: the real WebSocket handshake with credentials and Origin
 11. test_page::test_user_text_is_escaped_and_inert; test_hardening_browser.py (titles, errors, file names)
 12. bench/memory.py (10,000 jobs, RSS; smoke in test_bench_smoke); here: quick size, bookkeeping emptied
 13. bench/ws_churn.py (1,000 clients); here: its quick size
"""
from __future__ import annotations

import base64
import copy
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import gevent
import pytest
import requests
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import monitor.listener as listener_module
from fake_comfy import FakeComfy
from live import ROOT, LiveServer, recorded_prompt, wait_for
from monitor import reconciler
from monitor.config import Config
from monitor.demo import CHECK, Engine, RawFrame

HAPPY = "01b_happy_path_feature_flags"
TERMINAL = {"completed", "failed", "interrupted", "cancelled", "stalled"}


class OfflineStart(LiveServer):
    """A LiveServer that does not wait for ComfyUI: the app must come up without it."""

    def __init__(self, fake, data_dir: str, **config):
        self.fake, self.data_dir, self.overrides = fake, data_dir, config
        self.port, self.server, self.app = 0, None, None
        self.start_app(wait_connected=False)


def ws_url(server) -> str:
    return server.url.replace("http", "ws", 1) + "/api/run/ws"


def events_of(server, job_id: str) -> list[str]:
    return [e["kind"] for e in server.get("/api/admin/events?since=0").json()["events"]
            if (e.get("data") or {}).get("id") == job_id]


# ================================================================================================
# 1. ComfyUI unreachable at start

def test_1_comfy_unreachable_at_start_serves_then_connects_within_5s_and_reconciles(tmp_path, monkeypatch):
    real_uniform, ceilings = listener_module.random.uniform, []

    def record_and_hurry(low, high):   # the backoff's jitter range, without waiting it out
        ceilings.append(high)
        return 0.01
    monkeypatch.setattr(listener_module.random, "uniform", record_and_hurry)
    fake = FakeComfy(speed=10)      # takes a port...
    fake.stop(abrupt=True)          # ...and is down before the monitor starts
    # The product's own backoff (not the fast test settings): the cap must keep "back up" → "connected" ≤ 5 s.
    server = OfflineStart(fake, str(tmp_path / "data"),
                          reconnect_min=Config.reconnect_min, reconnect_max=Config.reconnect_max)
    try:
        assert server.get("/admin/queue").status_code == 200
        page = server.get("/admin/queue").text
        assert 'data-comfy-connected="false"' in page, "the page says ComfyUI is offline"
        assert server.get("/api/admin/queue").json()["jobs"] == []
        assert server.get("/api/admin/history").status_code == 200
        health = server.get("/healthz")
        assert health.status_code == 503
        assert health.json()["ok"] is False and health.json()["comfy"]["connected"] is False
        refused = server.post("/api/run", json={"prompt": recorded_prompt()})
        assert refused.status_code == 503 and "not connected" in refused.json()["error"]
        listener = server.monitor.listener
        wait_for(lambda: listener.attempts >= 8, timeout=30, what="retries up to the backoff cap")
        assert listener.last_error and not listener.connected
        # Exponential, capped at 15 s; a refused port is probed meanwhile, so "back" → connected stays fast.
        assert ceilings[:5] == [1.0, 2.0, 4.0, 8.0, 15.0] and max(ceilings) == 15.0, ceilings
        monkeypatch.setattr(listener_module.random, "uniform", real_uniform)   # real jitter from here

        fake.pause()
        fake.start()
        up = time.time()
        foreign = fake.add_foreign(HAPPY, client_id="comfy-ui-tab")  # queued before we connect
        wait_for(lambda: listener.connected, timeout=5.0, what="connected within 5 s of ComfyUI coming up")
        connected_after = time.time() - up
        adopted = wait_for(lambda: server.monitor.get_job(foreign.prompt_id), timeout=5,
                           what="the first reconcile to adopt the queued prompt")
        assert adopted["status"] == "queued" and adopted["source"] == "external"
        assert server.monitor.reconciled_at is not None
        assert server.get("/healthz").status_code == 200
        fake.resume()
        assert server.wait_status(foreign.prompt_id, TERMINAL, timeout=30)["status"] == "completed"
        print(f"connected {connected_after:.2f}s after ComfyUI came up")
    finally:
        server.stop_app()
        fake.stop()


# ================================================================================================
# 2. ComfyUI restarted mid-run, with pending jobs

def test_2_comfy_restart_marks_running_and_pending_jobs_stalled_then_new_jobs_work(tmp_path):
    fake = FakeComfy(speed=0.5)
    server = LiveServer(fake, str(tmp_path / "data"))
    try:
        running = server.submit()
        server.wait_status(running["id"], "running")
        fake.pause()   # the next ones stay pending in ComfyUI's queue
        pending = [server.submit()["id"] for _ in range(2)]
        wait_for(lambda: [server.monitor.get_job(p)["queue_position"] for p in pending] == [1, 2],
                 what="both pending in ComfyUI's queue")
        fake.stop(abrupt=True)   # killed: running prompt, queue and history are gone
        wait_for(lambda: not server.monitor.listener.connected, what="the monitor to notice")
        fake.start()
        for job_id in [running["id"], *pending]:
            job = server.wait_status(job_id, TERMINAL, timeout=20)
            assert job["status"] == "stalled", (job_id, job["status"])
            assert job["status_reason"] == reconciler.RESTART_REASON
            assert events_of(server, job_id)[-1] == "job.stalled"
        assert server.get("/api/admin/queue").json()["jobs"] == [], "nothing left 'queued' forever"
        fake.resume()
        fake.speed = 10
        after = server.submit()
        assert server.wait_status(after["id"], TERMINAL, timeout=30)["status"] == "completed"
    finally:
        server.stop_app()
        fake.stop()


def test_2_a_job_posted_during_the_reconcile_after_a_reconnect_is_not_declared_lost(fake_comfy, live_server,
                                                                                    monkeypatch):
    """The first reconcile after a reconnect stalls what ComfyUI lost; a job whose POST lands after that
    reconcile fetched /queue is missing from its view without being lost."""
    fake_comfy.pause()
    real_fetch, posted = reconciler.fetch_queue, []

    def fetch_then_submit(comfy):
        view = real_fetch(comfy)
        if not posted:
            posted.append(live_server.submit()["id"])   # queued in ComfyUI after the view was taken
        return view
    monkeypatch.setattr(reconciler, "fetch_queue", fetch_then_submit)
    live_server.monitor._disconnects += 1   # as after a lost connection: this reconcile accounts for it
    live_server.monitor.reconcile()
    assert posted
    monkeypatch.setattr(reconciler, "fetch_queue", real_fetch)
    job = live_server.monitor.get_job(posted[0])
    assert job["status"] == "queued", job["status_reason"]
    fake_comfy.resume()
    assert live_server.wait_status(posted[0], TERMINAL)["status"] == "completed"


# ================================================================================================
# 3. The monitor process killed (-9) and restarted on the same data dir

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """`python app.py` as a real process, as a supervisor would run it."""

    def __init__(self, comfy_url: str, data_dir: str, log_path: str):
        self.comfy_url, self.data_dir, self.log_path = comfy_url, data_dir, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "COMFYUI_"))}
        env["PYTHONUNBUFFERED"] = "1"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(self.port), "--comfy-url", self.comfy_url,
             "--data-dir", self.data_dir], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

        def healthy():
            assert self.proc.poll() is None, open(self.log_path).read()[-3000:]
            try:
                return requests.get(self.url + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_for(healthy, timeout=30, interval=0.1, what="app.py to serve and connect")
        return self

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        while self.proc.poll() is None:
            gevent.sleep(0.02)
        self.log.close()

    def get(self, path):
        return requests.get(self.url + path, timeout=10)

    def job(self, job_id):
        return self.get(f"/api/admin/jobs/{job_id}").json()

    def submit(self, prompt):
        resp = requests.post(self.url + "/api/run", json={"prompt": prompt}, timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if not self.log.closed:
            self.log.close()


def test_3_monitor_killed_and_restarted_reattaches_and_settles_from_history(tmp_path):
    fake = FakeComfy(scenarios=[HAPPY, "04_error_mid_run", "05_interrupt"], speed=0.2)
    data = str(tmp_path / "data")
    log = str(tmp_path / "app.log")
    procs = []

    def new_app():
        procs.append(AppProcess(fake.url, data, log).start())
        return procs[-1]

    try:
        # --- killed while a job runs: the new process re-attaches and shows its progress again ---
        first = new_app()
        a = first.submit(recorded_prompt())
        wait_for(lambda: (first.job(a)["progress"] or {}).get("step"), timeout=20, interval=0.05,
                 what="a sampler step")
        first.kill9()
        assert fake.running is not None and fake.running.job.prompt_id == a, "ComfyUI still runs it"
        second = new_app()
        seen, live_detail = [], False
        while True:
            job = second.job(a)
            seen.append(job["status"])
            p = job["progress"] or {}
            live_detail = live_detail or bool(p.get("step") or p.get("node_id"))
            if job["status"] in TERMINAL:
                break
            gevent.sleep(0.05)
        assert seen[0] == "running" and "stalled" not in seen, seen
        assert seen[-1] == "completed"
        assert live_detail, "progress from the new process's own socket (same client id)"

        # --- killed while jobs wait; they all finish while it is down ---
        fake.speed = 5
        fake.pause()
        b = second.submit(recorded_prompt("04_error_mid_run"))
        c = second.submit(recorded_prompt("05_interrupt"))
        d = second.submit(recorded_prompt())
        wait_for(lambda: [second.job(x)["queue_position"] for x in (b, c, d)] == [1, 2, 3],
                 what="three pending jobs")
        second.kill9()
        fake.resume()
        wait_for(lambda: fake.running is not None and fake.running.job.prompt_id == c, timeout=20,
                 what="the interruptible job to run")
        gevent.sleep(0.3)
        fake.interrupt(c)   # someone presses Cancel in ComfyUI's own UI while we are down
        wait_for(lambda: {b, c, d} <= set(fake.history), timeout=30, what="all three in ComfyUI's history")

        third = new_app()
        finals = {x: wait_for(lambda x=x: third.job(x)["status"] in TERMINAL and third.job(x), timeout=20,
                              what=f"{x} settled") for x in (b, c, d)}
        assert finals[b]["status"] == "failed"
        assert "deliberate failure at step 4/10" in finals[b]["error"]["message"]
        assert finals[b]["error"]["node_title"] == "Probe sampler"
        assert finals[c]["status"] == "interrupted"
        assert finals[d]["status"] == "completed" and finals[d]["outputs"]
        assert all(f["finished_at"] for f in finals.values())
        kinds = [e["kind"] for e in third.get("/api/admin/events?since=0").json()["events"]]
        assert "job.stalled" not in kinds
        assert third.job(a)["status"] == "completed"
    finally:
        for p in procs:
            p.stop()
        fake.stop()


# ================================================================================================
# 4. A long silent node is never stalled while ComfyUI lists it as running

class SilentNodeEngine(Engine):
    """Runs the recorded graph, but its first node says nothing for `silence_s` (a model loading)."""

    def __init__(self, silence_s: float):
        self.silence_s = silence_s
        self.in_silence = False

    def run(self, job, run):
        pid = job.prompt_id
        nodes = list(job.prompt)
        yield 0, {"type": "execution_start", "data": {"prompt_id": pid}}
        yield 0, {"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid}}
        for i, nid in enumerate(nodes):
            yield 0, {"type": "executing", "data": {"node": nid, "display_node": nid, "prompt_id": pid}}
            if i == 0:
                self.in_silence = True
                yield self.silence_s, CHECK
                self.in_silence = False
        yield 0, {"type": "execution_success", "data": {"prompt_id": pid}}


def test_4_long_silent_node_is_not_stalled_and_lost_jobs_are_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(listener_module, "IDLE_PING_S", 0.5)   # silence → pings, never a reconnect
    engine = SilentNodeEngine(silence_s=4.0)                   # = 8 reconcile intervals, 8 pings
    fake = FakeComfy(scenarios=[engine], speed=10)
    server = LiveServer(fake, str(tmp_path / "data"), reconcile_interval=0.5)
    try:
        job = server.submit()
        wait_for(lambda: engine.in_silence, what="the silent node")
        listener = server.monitor.listener
        frames, connects, checks = listener.frames, listener.connected_since, 0
        while engine.in_silence:
            assert listener.frames == frames, "it really is silent"
            assert listener.connected and listener.connected_since == connects, "no reconnect in the silence"
            assert server.monitor.get_job(job["id"])["status"] == "running"
            checks += 1
            gevent.sleep(0.1)
        assert checks > 15
        assert server.wait_status(job["id"], TERMINAL)["status"] == "completed"
        assert "job.stalled" not in events_of(server, job["id"])

        # Stalled only when ComfyUI no longer knows it: deleted from its queue behind our back.
        fake.pause()
        gone = server.submit()
        wait_for(lambda: server.monitor.get_job(gone["id"])["queue_position"] == 1, what="pending")
        requests.post(fake.url + "/queue", json={"delete": [gone["id"]]}, timeout=5)
        lost = server.wait_status(gone["id"], TERMINAL, timeout=10)
        assert lost["status"] == "stalled" and lost["status_reason"] == reconciler.LOST_REASON
        fake.resume()
    finally:
        server.stop_app()
        fake.stop()


# ================================================================================================
# 5. An unwritable or full data dir: a clear error at start, no traceback, no crash loop

def run_app(data_dir: str, preexec=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "COMFYUI_"))}
    return subprocess.run([sys.executable, "app.py", "--port", "0", "--comfy-url", "http://127.0.0.1:9",
                           "--data-dir", data_dir], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, preexec_fn=preexec)


def _full_disk():
    """In the child: every file write fails with EFBIG, as on a full disk (no privileges needed)."""
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


@pytest.mark.parametrize("case", ["under_a_file", "client_id_is_a_dir", "full_disk"])
def test_5_unwritable_or_full_data_dir_is_a_clear_error_at_start(tmp_path, case):
    preexec = None
    if case == "under_a_file":
        (tmp_path / "file").write_text("x")
        data = tmp_path / "file" / "data"
        named = str(tmp_path / "file" / "data")
    elif case == "client_id_is_a_dir":
        data = tmp_path / "data"
        (data / "client_id").mkdir(parents=True)
        named = str(data)
    else:
        data = tmp_path / "full"
        named = str(data)
        preexec = _full_disk
    t0 = time.time()
    proc = run_app(str(data), preexec)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.time() - t0 < 30, "exits at once: no retry loop"
    assert named in proc.stderr and "MONITOR_DATA_DIR" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


# ================================================================================================
# 6. Hostile ComfyUI frames through a real socket, into the whole monitor


MSG_TYPES = ["status", "execution_start", "execution_cached", "executing", "progress", "progress_state",
             "executed", "execution_success", "execution_error", "execution_interrupted", "feature_flags",
             "logs", "crystools.monitor", ""]
FIELDS = ["prompt_id", "node", "display_node", "value", "max", "nodes", "output", "exception_message",
          "exception_type", "node_id", "node_type", "traceback", "timestamp", "executed", "status", "sid"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)


def raw_text_frame(payload: bytes) -> RawFrame:
    """A server→client text frame (unmasked) with any bytes, e.g. invalid UTF-8."""
    n = len(payload)
    head = struct.pack("!BB", 0x81, n) if n < 126 else struct.pack("!BBH", 0x81, 126, n)
    return RawFrame(head + payload)


def frame_strategy(prompt_ids: list[str]):
    pid = st.sampled_from(prompt_ids) | st.text(max_size=10)
    field_value = json_values | pid
    data = st.dictionaries(st.sampled_from(FIELDS), field_value, max_size=6)
    message = st.builds(lambda t, d, p: json.dumps({"type": t, "data": {**d, "prompt_id": p}}),
                        st.sampled_from(MSG_TYPES), data, pid)
    wrong_shape = st.builds(lambda t, d: json.dumps({"type": t, "data": d}), json_values, json_values)
    text = st.one_of(st.text(max_size=40), json_values.map(json.dumps), message, wrong_shape)
    bad_utf8 = st.binary(min_size=1, max_size=40).filter(lambda b: not _is_utf8(b)).map(raw_text_frame)
    header = st.builds(lambda ev, n, rest: struct.pack(">II", ev, n) + rest,
                       st.sampled_from([0, 1, 2, 3, 4, 5, 77, 2 ** 32 - 1]), st.integers(0, 2 ** 32 - 1),
                       st.binary(max_size=48))
    type4 = st.builds(lambda meta, img: struct.pack(">II", 4, len(meta)) + meta + img,
                      st.one_of(json_values.map(lambda v: json.dumps(v).encode()),
                                st.builds(lambda p, n: json.dumps({"prompt_id": p, "node_id": n,
                                                                   "image_type": "image/jpeg"}).encode(),
                                          pid, json_values)),
                      st.binary(max_size=24))
    truncated = st.binary(max_size=7)
    return st.one_of(text, message, message, bad_utf8, header, type4, truncated, st.binary(max_size=64))


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_6_hostile_frames_through_the_socket_are_survived_and_logged_once_per_kind(tmp_path, caplog):
    fake = FakeComfy(speed=10)
    fake.pause()
    server = LiveServer(fake, str(tmp_path / "data"))
    try:
        known = server.submit()["id"]
        listener = server.monitor.listener
        since = listener.connected_since
        sent = {"frames": 0}

        @settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(frame_strategy([known, "never-seen-prompt-id"]), min_size=1, max_size=10))
        def push(frames):
            conn = fake._table[server.monitor.client_id]
            before = listener.frames
            for frame in frames:
                conn.send(frame)
            conn.send(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}}))
            wait_for(lambda: listener.frames >= before + len(frames) + 1, timeout=10,
                     what="every frame read")
            sent["frames"] += len(frames)
            assert listener.connected and listener.connected_since == since, "no reconnect"

        push()
        assert sent["frames"] > 100
        assert "failed" not in caplog.text or "handler" not in caplog.text, caplog.text[-3000:]
        assert not [r for r in caplog.records if r.exc_info], "no handler raised"
        kinds = listener.bad_frames
        print(f"{sent['frames']} hostile frames, bad kinds {dict(kinds)}, "
              f"{len(server.monitor.store.history(limit=500))} jobs settled")
        assert {"text.bad_utf8", "text.bad_json"} <= set(kinds), kinds
        assert any(k.startswith("binary.") for k in kinds), kinds
        for kind, count in kinds.items():
            assert caplog.text.count(f"malformed ComfyUI frame ({kind})") == 1, (kind, count)
        assert server.get("/healthz").status_code == 200
        # The monitor still does its job afterwards.
        fake.resume()
        after = server.submit()
        assert server.wait_status(after["id"], TERMINAL, timeout=30)["status"] == "completed"
    finally:
        server.stop_app()
        fake.stop()


# ================================================================================================
# 7. HTTP: wrong types, missing parameters, oversized and malformed bodies, /api/view

REQUIRED_WORKFLOW = {
    "name": "Needs a width", "description": "test template with a required parameter",
    "parameters": {"width": {"type": "int", "min": 1, "max": 64}},
    "prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": 8, "batch_size": 1,
                                                             "color": 0}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}},
}


def test_7_http_hostile_input_gets_clear_4xx(fake_comfy, tmp_path):
    import shutil
    wf_dir = tmp_path / "workflows"
    shutil.copytree(os.path.join(ROOT, "workflows"), wf_dir)
    (wf_dir / "needs_width.json").write_text(json.dumps(REQUIRED_WORKFLOW))
    fake_comfy.pause()
    server = LiveServer(fake_comfy, str(tmp_path / "data"), workflows_dir=str(wf_dir))
    node = {"class_type": "EmptyImage", "inputs": {}}
    raw = {"Content-Type": "application/json"}
    deep = '{"prompt": {"1": {"class_type": "X", "inputs": {"a": ' + "[" * 200 + "]" * 200 + "}}}}"
    cases = [
        # /api/run: every field with a wrong type, or missing
        ("/api/run", {"json": {}}, 400, "prompt"),
        ("/api/run", {}, 400, "prompt"),
        ("/api/run", {"json": {"prompt": []}}, 400, "prompt"),
        ("/api/run", {"json": {"prompt": 7}}, 400, "prompt"),
        ("/api/run", {"json": {"prompt": None}}, 400, "prompt"),
        ("/api/run", {"json": {"prompt": {}}}, 400, "prompt"),
        ("/api/run", {"json": {"prompt": {"1": "node"}}}, 400, "class_type"),
        ("/api/run", {"json": {"prompt": {"1": {"class_type": 5, "inputs": {}}}}}, 400, "class_type"),
        ("/api/run", {"json": {"prompt": {"1": {"class_type": "X", "inputs": [1]}}}}, 400, "inputs"),
        ("/api/run", {"json": {"prompt": {"1": node}, "workflow_name": 12}}, 400, "workflow_name"),
        ("/api/run", {"json": {"prompt": {"1": node}, "workflow_name": ["a"]}}, 400, "workflow_name"),
        ("/api/run", {"json": {"prompt": {"1": node}, "params": [1]}}, 400, "params"),
        ("/api/run", {"json": {"prompt": {"1": node}, "params": "a=1"}}, 400, "params"),
        ("/api/run", {"json": "just a string"}, 400, "object"),
        ("/api/run", {"data": json.dumps({"prompt": {"1": node}}), "headers": {"Content-Type": "text/plain"}},
         400, "JSON"),
        ("/api/run", {"data": b"\xff\xfe{", "headers": raw}, 400, "JSON"),
        ("/api/run", {"data": "[" * 100_000, "headers": raw}, 400, "JSON"),     # RecursionError in json
        ("/api/run", {"data": deep, "headers": raw}, 400, "deeper"),
        ("/api/run", {"data": '{"prompt": {"1": {"class_type": "X", "inputs": {"a": NaN}}}}', "headers": raw},
         400, "JSON"),
        ("/api/run", {"data": '{"prompt": {"1": {"class_type": "X", "inputs": {"a": 1' + "0" * 5000 + '}}}}',
                      "headers": raw}, 400, "JSON"),
        # templates: wrong types, unknown and missing parameters, oversized bodies
        ("/api/run/example_invert/execute", {"json": {"params": []}}, 400, "params"),
        ("/api/run/example_invert/execute", {"json": {"params": "width=5"}}, 400, "params"),
        ("/api/run/example_invert/execute", {"json": {"params": {"width": True}}}, 400, "width"),
        ("/api/run/example_invert/execute", {"json": {"params": {"width": 1.5}}}, 400, "width"),
        ("/api/run/example_invert/execute", {"json": {"params": {"width": {"a": 1}}}}, 400, "width"),
        ("/api/run/example_invert/execute", {"json": {"params": {"width": 10 ** 30}}}, 400, "width"),
        ("/api/run/example_invert/execute", {"json": {"params": {"upscale_method": "magic"}}}, 400,
         "upscale_method"),
        ("/api/run/example_invert/execute", {"json": {"params": {"prefix": 5}}}, 400, "prefix"),
        ("/api/run/needs_width/execute", {"json": {}}, 400, "width: required"),
        ("/api/run/needs_width/execute", {"json": {"params": {"width": None}}}, 400, "width: required"),
        ("/api/run/..%2F..%2Fetc%2Fpasswd/execute", {"json": {}}, 404, ""),
        ("/api/run/example_invert/execute", {"data": b"{" + b" " * (3 * 1024 * 1024) + b"}", "headers": raw},
         413, ""),
    ]
    try:
        for path, kw, status, says in cases:
            resp = server.post(path, **kw)
            assert resp.status_code == status, (path, kw.get("json"), resp.status_code, resp.text[:300])
            error = resp.json().get("error")
            assert isinstance(error, str) and error and says in error, (path, error)
        for query, says in [("limit=0", "limit"), ("limit=501", "limit"), ("limit=-3", "limit"),
                            ("limit=1e3", "limit"), ("status=", None), ("status=QUEUED", "status")]:
            resp = server.get("/api/admin/history?" + query)
            if says is None:
                assert resp.status_code == 200
                continue
            assert resp.status_code == 400 and says in resp.json()["error"], query
        assert server.get("/api/admin/events?since=x").status_code == 400
        assert server.get("/api/admin/queue").json()["jobs"] == [], "nothing bad was queued"
        # a prefix that tries to climb out stays inside the job's own folder
        ok = server.post("/api/run/example_invert/execute", json={"params": {"prefix": "../../../etc/cron.d/x"}})
        assert ok.status_code == 201, ok.text
        prefix = next(n["inputs"]["filename_prefix"] for n in fake_comfy.posted[-1]["prompt"].values()
                      if "filename_prefix" in n["inputs"])
        assert prefix.startswith(ok.json()["job_folder"] + "/") and ".." not in prefix
    finally:
        server.stop_app()
        fake_comfy.resume()


def test_7_view_proxy_refuses_bad_names_and_non_media_types(fake_comfy, live_server):
    files = {"page.html": b"<script>alert(1)</script>", "data.json": b'{"a": 1}', "notes.txt": b"hello",
             "vector.svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
             "blob.bin": b"\x00\x01", "pic.png": recorded_png()}
    for name, data in files.items():
        fake_comfy.add_file("output", "", name, data)
    ok = live_server.get("/api/view", params={"filename": "pic.png", "type": "output"})
    assert ok.status_code == 200 and ok.content == files["pic.png"]
    assert ok.headers["Content-Type"] == "image/png" and ok.headers["X-Content-Type-Options"] == "nosniff"
    assert ok.headers["Content-Security-Policy"] == "sandbox"
    for name in ("page.html", "data.json", "notes.txt", "vector.svg", "blob.bin"):
        resp = live_server.get("/api/view", params={"filename": name, "type": "output"})
        assert resp.status_code == 415, (name, resp.status_code)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Type"].startswith("application/json")
        assert files[name] not in resp.content and "only images and videos" in resp.json()["error"]
    bad = [
        {"filename": "/etc/passwd"}, {"filename": "C:evil.png"}, {"filename": "c:\\x.png"},
        {"filename": "..\\..\\x.png"}, {"filename": "a\\b.png"}, {"filename": ".."}, {"filename": "."},
        {"filename": "x.png", "subfolder": "a\x00b"}, {"filename": "x.png", "subfolder": "C:/Windows"},
        {"filename": "x.png", "subfolder": "a\\..\\.."}, {"filename": "x.png", "subfolder": "./a"},
        {"filename": "x.png", "type": ""}, {"filename": "x.png", "type": "OUTPUT"},
        {"filename": "x.png", "type": "../output"}, {"filename": "x.png", "type": "models"},
        {"filename": "x.png", "preview": "webp;75&x=1"}, {"filename": "x.png", "preview": "gif;1"},
        {"filename": "x.png", "channel": "rgbx"}, {"filename": ""},
    ]
    def views():
        return sum(1 for _, path in fake_comfy.requests if path == "/view")
    views_before = views()
    for params in bad:
        resp = live_server.get("/api/view", params=params)
        assert resp.status_code == 400 and resp.json()["error"], params
    assert views() == views_before, "refused before anything reached ComfyUI"
    missing = live_server.get("/api/view", params={"filename": "nope.png"})
    assert missing.status_code == 404 and missing.json()["error"]


def recorded_png() -> bytes:
    from monitor.demo import render_png
    return render_png("x", 16)


# ================================================================================================
# 8. One browser floods the WebSocket; the others keep receiving

FLOODER = r"""
import json, sys, time, websocket
url, seconds = sys.argv[1], float(sys.argv[2])
ws = websocket.create_connection(url, timeout=10)
ws.recv()   # hello
junk = ["not json", "[" * 3000, json.dumps({"type": "previews", "enabled": False}),
        json.dumps({"type": "previews", "enabled": True}), json.dumps({"type": "resume", "last_seq": 0}),
        json.dumps({"type": "resume", "last_seq": "x"}), json.dumps({"type": "nope", "pad": "x" * 4000}),
        "x" * 60000, json.dumps({"type": "previews", "enabled": True, "pad": "y" * 30000})]
sent, end, i = 0, time.time() + seconds, 0
while time.time() < end:
    m = junk[i % len(junk)]
    i += 1
    if i % 7 == 0:
        ws.send_binary(b"\x00" * (i % 5000))
    else:
        ws.send(m)
    sent += 1
ws.send("z" * 100_000)          # over the size limit: this session ends (1009)
try:
    while True:
        ws.recv()
except Exception as exc:
    print(f"sent {sent} closed {type(exc).__name__}", flush=True)
"""


def test_8_a_flooding_browser_does_not_starve_the_others(tmp_path):
    from test_e2e import Browser, is_event
    fake = FakeComfy(speed=1)     # a run of about 1.5 s, 10 sampler steps
    server = LiveServer(fake, str(tmp_path / "data"))
    flooder = None
    try:
        watchers = [Browser(server) for _ in range(2)]
        for w in watchers:
            w.read_until(lambda f: True)   # hello
        wait_for(lambda: server.monitor.hub.client_count() == 2, what="two watchers")
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, ws_url(server), "4"], stdout=subprocess.PIPE,
                                   text=True)
        wait_for(lambda: server.monitor.hub.counters["messages_ignored"] > 200, timeout=30, what="the flood")
        job = server.submit()
        for w in watchers:
            t0 = time.time()
            w.read_until(is_event("job.completed", job["id"]), timeout=30)
            progress = [(m.get("step") or {}).get("value") for m in w.messages("progress")
                        if m.get("prompt_id") == job["id"]]
            assert len([s for s in progress if s]) >= 5, f"steps seen while flooded: {progress}"
            assert time.time() - t0 < 30
        final = server.monitor.get_job(job["id"])
        assert final["status"] == "completed"
        out, _ = flooder.communicate(timeout=30)
        assert "closed" in out, out
        wait_for(lambda: server.monitor.hub.client_count() == 2, what="only the flooder dropped")
        # and the watchers are still live
        server.monitor.hub.publish({"type": "comfy", "connected": True, "probe": 1})
        for w in watchers:
            w.read_until(lambda f: isinstance(f, dict) and f.get("probe") == 1, timeout=10)
            w.close()
        print(out.strip(), server.monitor.hub.counters)
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
        server.stop_app()
        fake.stop()


# ================================================================================================
# 9-10. Credentials and Origin on the real WebSocket handshake (and POSTs) when listening beyond loopback

def _handshake(server, **options):
    return websocket.create_connection(ws_url(server), timeout=10, **options)


def test_9_10_websocket_handshake_needs_credentials_and_same_origin(fake_comfy, tmp_path):
    server = LiveServer(fake_comfy, str(tmp_path / "data"), host="0.0.0.0", password="s3cret", token="tok-123")
    basic = "Basic " + base64.b64encode(b"admin:s3cret").decode()
    try:
        for header in ([], ["Authorization: Basic " + base64.b64encode(b"admin:wrong").decode()],
                       ["Authorization: Bearer nope"], ["Authorization: Basic !!!"]):
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                _handshake(server, header=header)
            assert refused.value.status_code == 401, header
        for header in ([f"Authorization: {basic}"], ["Authorization: Bearer tok-123"]):
            ws = _handshake(server, header=header)   # 101, and the session starts with hello
            assert json.loads(ws.recv())["type"] == "hello"
            ws.close()
        for origin in ("null", "http://evil.example", f"http://127.0.0.1:{server.port + 1}"):
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                _handshake(server, header=[f"Authorization: {basic}"], origin=origin)
            assert refused.value.status_code == 403, origin
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            _handshake(server, header=[f"Authorization: {basic}", "Sec-Fetch-Site: cross-site"],
                       suppress_origin=True)
        assert refused.value.status_code == 403
        wait_for(lambda: server.monitor.hub.client_count() == 0, what="no session from a refused handshake")
        # State-changing POSTs: the same rules, credentials first.
        auth = {"Authorization": basic}
        assert server.post("/api/admin/jobs/x/cancel").status_code == 401
        for headers in ({"Origin": "null"}, {"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            resp = server.post("/api/admin/jobs/x/cancel", headers={**auth, **headers})
            assert resp.status_code == 403, headers
        same = server.post("/api/admin/jobs/x/cancel", headers={**auth, "Origin": server.url})
        assert same.status_code == 404, "same-origin with credentials reaches the handler"
    finally:
        server.stop_app()


def test_9_credentials_are_compared_in_constant_time(monkeypatch):
    from monitor.web import security
    calls = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    cfg = Config(host="0.0.0.0", password="pw", token="tk")
    assert not security.credentials_ok(cfg, {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"root:x").decode()})
    assert len(calls) == 2, "user and password both compared, whichever is wrong"
    assert security.credentials_ok(cfg, {"HTTP_AUTHORIZATION": "Bearer tk"}) and len(calls) == 3


# ================================================================================================
# 12. Many jobs at full speed (quick size; 10,000 in bench/memory.py): right final states, and the tracker
#     and the monitor's bookkeeping keep only what is active

def test_12_many_jobs_end_right_and_nothing_is_kept_for_finished_ones(tmp_path, monkeypatch):
    from monitor import service
    from monitor.demo import SyntheticEngine
    monkeypatch.setattr(service, "LINGER_S", 0.3)   # finished prompts leave the tracker after this
    fake = FakeComfy(default=SyntheticEngine(time_scale=0.0, default_steps=3))
    server = LiveServer(fake, str(tmp_path / "data"), reconcile_interval=0.3)
    graph = copy.deepcopy(FILE_GRAPH_SMALL)
    expected = {}
    try:
        for i in range(60):
            g = copy.deepcopy(graph)
            g["3"]["inputs"]["seed"] = i          # no caching between jobs
            fail = i % 5 == 4
            g["3"]["inputs"]["fail_at_step"] = 2 if fail else 0
            if i % 10 == 9:                       # some are cancelled while they wait
                fake.pause()
                job = server.submit(g)
                assert server.post(f"/api/admin/jobs/{job['id']}/cancel").status_code == 200
                fake.resume()
                expected[job["id"]] = "cancelled"
                continue
            expected[server.submit(g)["id"]] = "failed" if fail else "completed"
        finals = {}
        for job_id in expected:
            finals[job_id] = server.wait_status(job_id, TERMINAL, timeout=60)["status"]
        assert finals == expected
        mon = server.monitor
        wait_for(lambda: not mon.tracker._prompts and not mon._finished, timeout=10,
                 what="the tracker to forget finished prompts")
        assert mon.store.active() == [] and mon.tracker.active() == []
        assert not mon._missing and not mon._posting and not mon._cancel_requested
        assert len(mon.hub._sent) <= 512
    finally:
        server.stop_app()
        fake.stop()


FILE_GRAPH_SMALL = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "3": {"class_type": "MonitorProbeSampler", "inputs": {"image": ["1", 0], "steps": 3, "delay_ms": 0,
                                                          "seed": 1, "fail_at_step": 0}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "soak/x"}},
}


# ================================================================================================
# 13. WebSocket churn (quick size; 1,000 clients in bench/ws_churn.py)

def test_13_websocket_churn_leaves_no_sessions_greenlets_or_outboxes():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ws_churn.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "leaks: none" in proc.stdout, proc.stdout
    assert "close frames unanswered 0, then TCP left open by the server 0" in proc.stdout, proc.stdout
