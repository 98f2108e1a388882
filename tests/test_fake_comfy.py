"""The fake ComfyUI (monitor/demo.py + tests/fake_comfy.py) checked against the 0.3.64 recordings,
through a real HTTP + WebSocket connection (requests, websocket-client)."""
from __future__ import annotations

import json
import struct
import time

import gevent
import pytest
import requests
import websocket

from fake_comfy import FakeComfy, ReplayEngine
from monitor.demo import TERMINAL, SimComfy, SyntheticEngine, start_demo_traffic
from recordings import frames, http, load, posted_prompts

FF = {"type": "feature_flags", "data": {"supports_preview_metadata": True, "supports_manager_v4_ui": True}}
S01B = "01b_happy_path_feature_flags"


class Client:
    """One WebSocket client; frames are ("text", dict) or ("bin", bytes)."""

    def __init__(self, base_url: str, client_id: str | None = None, flags: bool = True):
        url = base_url.replace("http", "ws", 1) + "/ws" + (f"?clientId={client_id}" if client_id else "")
        self.ws = websocket.create_connection(url, timeout=5)
        if flags:
            self.ws.send(json.dumps(FF))
        self.frames: list[tuple[str, object]] = []

    def recv(self, timeout: float = 5.0):
        self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data()
        frame = ("text", json.loads(data)) if opcode == websocket.ABNF.OPCODE_TEXT else ("bin", data)
        self.frames.append(frame)
        return frame

    def until(self, pred, timeout: float = 5.0):
        deadline = time.time() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.time()))
            if pred(frame):
                return frame

    def until_type(self, msg_type: str, **data):
        return self.until(lambda f: f[0] == "text" and f[1]["type"] == msg_type
                          and all(f[1]["data"].get(k) == v for k, v in data.items()))

    def drain(self, quiet: float = 0.3) -> None:
        try:
            while True:
                self.recv(quiet)
        except websocket.WebSocketTimeoutException:
            pass

    def close(self):
        self.ws.close()


def kind(frame) -> str:
    if frame[0] == "text":
        return frame[1]["type"]
    return f"BIN{struct.unpack('>I', frame[1][:4])[0]}"


def recorded_kinds(name: str, conn: str) -> list[str]:
    return [("BIN%d" % struct.unpack(">I", f.binary[:4])[0]) if f.binary else f.msg["type"]
            for f in frames(name, conn)]


def post(url: str, body: dict, **over) -> requests.Response:
    return requests.post(url + "/prompt", json=dict(body, **over), timeout=5)


def recorded_body(name: str = S01B, index: int = 0) -> dict:
    return json.loads(json.dumps(posted_prompts(name)[index]["request"]))


def is_end(frame) -> bool:
    return frame[0] == "text" and frame[1]["type"] == "executing" and frame[1]["data"].get("node") is None


@pytest.fixture
def fake():
    fc = FakeComfy(speed=0)
    yield fc
    fc.stop(abrupt=False)


# ---- replay of 01b ------------------------------------------------------------------------------------

def test_01b_submitter_gets_the_recorded_sequence(fake):
    sub = Client(fake.url, "me")
    obs = Client(fake.url, "watcher")
    sub.until_type("feature_flags")
    obs.until_type("feature_flags")
    answer = post(fake.url, recorded_body(), client_id="me").json()
    pid = answer["prompt_id"]
    sub.until(is_end)
    obs.drain()
    sub.drain()

    got = [kind(f) for f in sub.frames]
    assert got == recorded_kinds(S01B, "submitter")  # status and feature_flags included, same positions
    assert [kind(f) for f in obs.frames] == recorded_kinds(S01B, "observer")

    recorded_pid = posted_prompts(S01B)[0]["response"]["prompt_id"]
    rec_bins = [f.binary for f in frames(S01B, "submitter") if f.binary]
    got_bins = [f[1] for f in sub.frames if f[0] == "bin"]
    assert len(rec_bins) == len(got_bins) == 11
    for rec, got_frame in zip(rec_bins, got_bins):
        assert got_frame == rec.replace(recorded_pid.encode(), pid.encode())
    texts = [f[1] for f in sub.frames if f[0] == "text" and f[1]["type"] not in ("status", "feature_flags")]
    assert all(t["data"].get("prompt_id") == pid for t in texts)
    assert sub.frames[-1][1] == {"type": "executing", "data": {"node": None, "prompt_id": pid}}


def test_01b_legacy_socket_gets_type1_after_progress(fake):
    sub = Client(fake.url, "legacy", flags=False)
    post(fake.url, recorded_body(), client_id="legacy")
    sub.until(is_end)
    kinds = [kind(f) for f in sub.frames]
    assert "BIN4" not in kinds and kinds.count("BIN1") == 10
    for i, k in enumerate(kinds):
        if k == "BIN1":
            assert kinds[i - 1] == "progress"  # PROTOCOL.md §5.1: right after the step's progress
    images = [f.binary[8 + struct.unpack(">I", f.binary[4:8])[0]:]
              for f in frames(S01B, "submitter") if f.binary and f.binary[3] == 4]
    got = [f[1] for f in sub.frames if kind(f) == "BIN1"]
    assert got == [struct.pack(">II", 1, 1) + img for img in images]


def test_queue_and_history_shapes_match_the_recording():
    fc = FakeComfy(speed=2.0)  # slow enough to look mid-run
    try:
        sub = Client(fc.url, "me")
        pid = post(fc.url, recorded_body(), client_id="me").json()["prompt_id"]
        second = post(fc.url, recorded_body(), client_id="me").json()["prompt_id"]
        sub.until_type("progress", value=2)
        queue = requests.get(fc.url + "/queue").json()
        recorded_mid = http(S01B, "GET", "/queue")[1]["response"]
        assert set(queue) == set(recorded_mid) == {"queue_running", "queue_pending"}
        assert [e[1] for e in queue["queue_running"]] == [pid]
        assert [e[1] for e in queue["queue_pending"]] == [second]
        for entry in queue["queue_running"] + queue["queue_pending"]:
            assert len(entry) == 5
            assert entry[3] == {"extra_pnginfo": recorded_body()["extra_data"]["extra_pnginfo"], "client_id": "me"}
            assert sorted(entry[4]) == sorted(recorded_mid["queue_running"][0][4])
        assert queue["queue_running"][0][2] == recorded_mid["queue_running"][0][2]
        assert requests.get(fc.url + "/prompt").json() == {"exec_info": {"queue_remaining": 2}}
        assert requests.get(f"{fc.url}/history/{pid}").json() == {}
        fc.interrupt(second) or requests.post(fc.url + "/queue", json={"delete": [second]})
        sub.until(is_end, timeout=10)
        entry = requests.get(f"{fc.url}/history/{pid}").json()[pid]
        recorded_pid = posted_prompts(S01B)[0]["response"]["prompt_id"]
        recorded = http(S01B, "GET", f"/history/{recorded_pid}")[-1]["response"][recorded_pid]
        assert entry.keys() == recorded.keys()
        assert entry["outputs"] == recorded["outputs"] and entry["meta"] == recorded["meta"]
        assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in recorded["status"]["messages"]]
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        sent = {f[1]["type"]: f[1]["data"]["timestamp"] for f in sub.frames
                if f[0] == "text" and "timestamp" in f[1]["data"]}
        assert all(m[1]["timestamp"] == sent[m[0]] for m in entry["status"]["messages"])
        assert entry["prompt"][:2] == [0, pid]
        assert list(requests.get(fc.url + "/history?max_items=1").json()) == [pid]
        assert requests.get(fc.url + "/queue").json() == {"queue_running": [], "queue_pending": []}
    finally:
        fc.stop(abrupt=False)


def test_core_history_equals_the_recorded_one():
    """The core builds the same entry as ComfyUI did (outputs, meta, status) from the replayed frames."""
    engine = ReplayEngine(S01B, speed=0)
    fc = FakeComfy(default=engine)
    engine.recorded_history = None  # force the core-built entry
    try:
        sub = Client(fc.url, "me")
        pid = post(fc.url, recorded_body(), client_id="me").json()["prompt_id"]
        sub.until(is_end)
        entry = requests.get(f"{fc.url}/history/{pid}").json()[pid]
        recorded_pid = posted_prompts(S01B)[0]["response"]["prompt_id"]
        recorded = http(S01B, "GET", f"/history/{recorded_pid}")[-1]["response"][recorded_pid]
        assert entry["outputs"] == recorded["outputs"] and entry["meta"] == recorded["meta"]
        strip = lambda ms: [[k, {x: y for x, y in d.items() if x not in ("timestamp", "prompt_id")}] for k, d in ms]
        assert strip(entry["status"]["messages"]) == strip(recorded["status"]["messages"])
    finally:
        fc.stop(abrupt=False)


# ---- interrupt, queue, no client id ---------------------------------------------------------------------

def test_interrupt_flow_of_05():
    fc = FakeComfy(scenarios=[ReplayEngine("05_interrupt", prompt=0, speed=0),
                              ReplayEngine("05_interrupt", prompt=1, speed=0)])
    try:
        sub = Client(fc.url, "me")
        first = post(fc.url, recorded_body("05_interrupt", 0), client_id="me").json()["prompt_id"]
        second = post(fc.url, recorded_body("05_interrupt", 1), client_id="me").json()["prompt_id"]
        sub.until_type("progress", value=5)
        assert requests.post(fc.url + "/interrupt", json={"prompt_id": second}).content == b""
        sub.drain(0.3)
        assert "execution_interrupted" not in [kind(f) for f in sub.frames]
        r = requests.post(fc.url + "/interrupt", json={"prompt_id": first})
        assert r.status_code == 200 and r.content == b""
        msg = sub.until_type("execution_interrupted")[1]["data"]
        assert {k: msg[k] for k in ("prompt_id", "node_id", "node_type", "executed")} == \
            {"prompt_id": first, "node_id": "3", "node_type": "MonitorProbeSampler", "executed": []}
        assert [kind(f) for f in sub.frames[-1:]] == ["execution_interrupted"]
        assert kind(sub.recv()) == "status"
        assert sub.recv()[1] == {"type": "executing", "data": {"node": None, "prompt_id": first}}
        sub.until(lambda f: is_end(f) and f[1]["data"]["prompt_id"] == second)
        hist = requests.get(f"{fc.url}/history/{first}").json()[first]["status"]
        assert hist["status_str"] == "error" and hist["completed"] is False
        assert hist["messages"][-1][0] == "execution_interrupted"
        assert requests.get(f"{fc.url}/history/{second}").json()[second]["status"]["status_str"] == "success"
    finally:
        fc.stop(abrupt=False)


def test_interrupt_mid_replay_of_a_happy_path():
    fc = FakeComfy(speed=5.0)
    try:
        sub = Client(fc.url, "me")
        pid = post(fc.url, recorded_body(), client_id="me").json()["prompt_id"]
        sub.until_type("progress", value=2)
        requests.post(fc.url + "/interrupt", data=b"")
        sub.until_type("execution_interrupted", prompt_id=pid, node_id="3")
        sub.until(is_end)
        assert "execution_success" not in [kind(f) for f in sub.frames]
        status = requests.get(f"{fc.url}/history/{pid}").json()[pid]["status"]
        assert status["messages"][-1][0] == "execution_interrupted"
    finally:
        fc.stop(abrupt=False)


def test_queue_delete_and_clear_broadcast_status():
    fc = FakeComfy(speed=0, paused=True)
    try:
        obs = Client(fc.url, "obs", flags=False)
        ids = [post(fc.url, recorded_body(), client_id="x").json()["prompt_id"] for _ in range(3)]
        pending = requests.get(fc.url + "/queue").json()["queue_pending"]
        assert sorted(e[0] for e in pending) == [0, 1, 2] and all(len(e) == 5 for e in pending)
        assert requests.post(fc.url + "/queue", json={"delete": [ids[1]]}).content == b""
        requests.post(fc.url + "/queue", json={"clear": True})
        obs.drain(0.3)
        remaining = [f[1]["data"]["status"]["exec_info"]["queue_remaining"] for f in obs.frames]
        assert remaining == [0, 1, 2, 3, 2, 0]
        assert requests.get(fc.url + "/queue").json() == {"queue_running": [], "queue_pending": []}
        assert requests.get(fc.url + "/history").json() == {}
    finally:
        fc.stop(abrupt=False)


def test_no_client_id_broadcasts_progress_to_everyone_07b():
    scenario = "07b_observer_no_client_id"
    fc = FakeComfy(scenarios=[ReplayEngine(scenario, prompt=0, speed=0), ReplayEngine(scenario, prompt=1, speed=0)])
    try:
        legacy = Client(fc.url, "obs", flags=False)
        ff = Client(fc.url, "obsff")
        ff.until_type("feature_flags")
        legacy.recv()  # greeting
        body = recorded_body(scenario, 0)
        assert "client_id" not in body
        first = post(fc.url, body).json()["prompt_id"]
        for c in (legacy, ff):
            c.until(lambda f: f[0] == "text" and f[1]["type"] == "status"
                    and f[1]["data"]["status"]["exec_info"]["queue_remaining"] == 0)
        assert [kind(f) for f in legacy.frames] == recorded_kinds(scenario, "observer")[:len(legacy.frames)]
        for c in (legacy, ff):
            kinds = {kind(f) for f in c.frames}
            assert {"progress", "progress_state", "BIN1", "BIN3"} <= kinds
            assert not kinds & {"BIN4", "execution_start", "executing", "executed", "execution_success"}
        second = post(fc.url, recorded_body(scenario, 1)).json()["prompt_id"]
        legacy.until_type("progress", value=3)
        requests.post(fc.url + "/interrupt", json={})
        for c in (legacy, ff):
            c.until_type("execution_interrupted", prompt_id=second)
        assert requests.get(f"{fc.url}/history/{first}").json()[first]["status"]["status_str"] == "success"
    finally:
        fc.stop(abrupt=False)


def test_foreign_prompt_is_replayed_only_to_its_client(fake):
    me = Client(fake.url, "me")
    ui = Client(fake.url, "browser-ui")
    job = fake.add_foreign(client_id="browser-ui")
    ui.until(is_end)
    me.drain(0.3)
    assert {kind(f) for f in me.frames} <= {"status", "feature_flags", "BIN3"}
    assert ui.frames[-1][1]["data"]["prompt_id"] == job.prompt_id
    assert requests.get(f"{fake.url}/history/{job.prompt_id}").json()[job.prompt_id]["prompt"][3] == \
        {"client_id": "browser-ui"}


# ---- sockets -------------------------------------------------------------------------------------------

def test_greeting_flags_and_sid(fake):
    anon = Client(fake.url, None, flags=False)
    greeting = anon.recv()[1]
    assert greeting["type"] == "status" and len(greeting["data"]["sid"]) == 32
    late = Client(fake.url, "late", flags=False)
    late.recv()
    late.ws.send(json.dumps({"type": "hello"}))
    late.ws.send(json.dumps(FF))  # not the first frame: ignored (as conn late_flags in 00)
    ff = Client(fake.url, "ff")
    ff.recv()
    assert ff.recv()[1] == {"type": "feature_flags", "data": {"supports_preview_metadata": True,
                                                               "max_upload_size": 104857600}}
    late.drain(0.2)
    assert len(late.frames) == 1
    assert requests.get(fake.url + "/features").json() == ff.frames[1][1]["data"]


def test_duplicate_client_id_orphans_both(fake):
    first = Client(fake.url, "dup", flags=False)
    second = Client(fake.url, "dup", flags=False)
    post(fake.url, recorded_body(), client_id="dup")
    second.until(is_end)
    first.drain(0.2)
    assert len(first.frames) == 1  # only its greeting
    first.close()
    gevent.sleep(0.1)
    post(fake.url, recorded_body(), client_id="dup")
    n = len(second.frames)
    second.drain(0.5)
    assert len(second.frames) == n  # the registration went away with the first socket


def test_reconnect_mid_run_gets_executing_without_prompt_id():
    fc = FakeComfy(speed=2.0)
    try:
        sub = Client(fc.url, "me")
        post(fc.url, recorded_body(), client_id="me")
        sub.until_type("progress", value=1)
        sub.close()
        again = Client(fc.url, "me")
        assert kind(again.recv()) == "status"
        assert again.recv()[1] == {"type": "executing", "data": {"node": "3"}}
    finally:
        fc.stop(abrupt=False)


def test_abrupt_stop_and_restart_lose_everything():
    fc = FakeComfy(speed=2.0)
    try:
        port = fc.port
        sub = Client(fc.url, "me")
        pid = post(fc.url, recorded_body(), client_id="me").json()["prompt_id"]
        post(fc.url, recorded_body(), client_id="me")
        sub.until_type("progress", value=1)
        fc.stop(abrupt=True)
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:  # a close frame would come back as opcode 8 instead
                opcode, _ = sub.ws.recv_data(control_frame=True)
                assert opcode != websocket.ABNF.OPCODE_CLOSE
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/queue", timeout=2)
        assert fc.start() == f"http://127.0.0.1:{port}"
        again = Client(fc.url, "me")
        assert again.recv()[1]["data"]["status"]["exec_info"]["queue_remaining"] == 0
        assert requests.get(fc.url + "/queue").json() == {"queue_running": [], "queue_pending": []}
        assert requests.get(fc.url + "/history").json() == {}
        assert requests.get(f"{fc.url}/history/{pid}").json() == {}
        assert post(fc.url, recorded_body(), client_id="me").json()["number"] == 0
    finally:
        fc.stop(abrupt=False)


# ---- HTTP validation and /view ---------------------------------------------------------------------------

def test_post_prompt_errors_and_numbering():
    with SimComfy() as sim:
        r = requests.post(sim.url + "/prompt", data=b"this is not json")
        assert r.status_code == 500 and r.headers["Content-Type"].startswith("text/plain")
        r = requests.post(sim.url + "/prompt", json={"client_id": "x"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "no_prompt"
        r = post(sim.url, {"prompt": {"2": {"class_type": "NoSuchNode", "inputs": {}}}})
        assert r.status_code == 400
        assert r.json() == {"error": {"type": "invalid_prompt", "message": "Cannot execute because node "
                                      "NoSuchNode does not exist.", "details": "Node ID '#2'", "extra_info": {}},
                            "node_errors": {}}
        r = post(sim.url, {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}})
        assert r.json()["error"]["type"] == "prompt_no_outputs"
        r = post(sim.url, recorded_body(), prompt_id="my-own-id")
        assert r.json() == {"prompt_id": "my-own-id", "number": 3, "node_errors": {}}
        assert sim.posted[-1]["prompt_id"] == "my-own-id" and ("POST", "/prompt") in sim.requests


def test_view_validation_and_outputs(fake):
    sub = Client(fake.url, "me")
    post(fake.url, recorded_body(), client_id="me")
    sub.until(is_end)
    view = fake.url + "/view"
    r = requests.get(view, params={"filename": "happy_ff_00001_.png", "subfolder": "monitor_probe",
                                   "type": "output"})
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.headers["Content-Disposition"] == 'filename="happy_ff_00001_.png"'
    r = requests.get(view, params={"filename": "ComfyUI_temp_ncpxn_00001_.png", "subfolder": "", "type": "temp",
                                   "preview": "jpeg;80"})
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
    assert requests.get(view, params={"filename": "does_not_exist.png", "type": "output"}).status_code == 404
    assert requests.get(view, params={"filename": "../secret.png", "type": "output"}).status_code == 400
    assert requests.get(view, params={"filename": "x.png", "subfolder": "../..",
                                      "type": "output"}).status_code == 403
    stats = requests.get(fake.url + "/system_stats").json()
    recorded = http("00_connect_handshake", "GET", "/system_stats")[0]["response"]
    assert stats.keys() == recorded.keys() and stats["system"].keys() == recorded["system"].keys()
    assert stats["devices"][0].keys() == recorded["devices"][0].keys()


# ---- synthetic engine ----------------------------------------------------------------------------------

GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
    "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                               "latent_image": ["3", 0], "seed": 7, "steps": 5}},
    "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
    "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "demo/cat"}},
}


@pytest.fixture
def sim():
    s = SimComfy(SyntheticEngine(seed=1, time_scale=0.02))
    s.start()
    yield s
    s.stop(abrupt=False)


def test_synthetic_run_and_cached_rerun(sim):
    sub = Client(sim.url, "me")
    pid = post(sim.url, {"prompt": GRAPH}, client_id="me").json()["prompt_id"]
    sub.until(is_end)
    kinds = [kind(f) for f in sub.frames]
    assert kinds.count("progress") == 5 and kinds.count("BIN4") == 5 and "execution_success" in kinds
    previews = [f[1] for f in sub.frames if kind(f) == "BIN4"]
    meta_len = struct.unpack(">I", previews[0][4:8])[0]
    assert json.loads(previews[0][8:8 + meta_len])["prompt_id"] == pid
    assert previews[0][8 + meta_len:8 + meta_len + 2] == b"\xff\xd8"
    executed = [f[1]["data"] for f in sub.frames if kind(f) == "executed"]
    image = executed[0]["output"]["images"][0]
    assert image == {"filename": "cat_00001_.png", "subfolder": "demo", "type": "output"}
    r = requests.get(sim.url + "/view", params=image)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    hist = requests.get(f"{sim.url}/history/{pid}").json()[pid]
    assert hist["outputs"] == {"6": executed[0]["output"]} and hist["status"]["completed"] is True

    sub.frames.clear()
    post(sim.url, {"prompt": GRAPH}, client_id="me")
    sub.until(is_end)
    cached = next(f[1]["data"] for f in sub.frames if kind(f) == "execution_cached")
    assert sorted(cached["nodes"]) == sorted(GRAPH)
    kinds = [kind(f) for f in sub.frames]
    assert "progress" not in kinds and "BIN4" not in kinds
    assert [f[1]["data"]["node"] for f in sub.frames if kind(f) == "executing"] == [None]
    assert kinds.count("executed") == 1


def test_synthetic_failure_and_legacy_previews(sim):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}},
             "3": {"class_type": "MonitorProbeSampler", "inputs": {"image": ["1", 0], "steps": 6, "delay_ms": 5,
                                                                  "seed": 3, "fail_at_step": 4}},
             "9": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    sub = Client(sim.url, "legacy", flags=False)
    pid = post(sim.url, {"prompt": graph}, client_id="legacy").json()["prompt_id"]
    sub.until(is_end)
    kinds = [kind(f) for f in sub.frames]
    assert kinds.count("BIN1") == 3 and "BIN4" not in kinds
    error = next(f[1]["data"] for f in sub.frames if kind(f) == "execution_error")
    recorded = next(f.msg["data"] for f in frames("04_error_mid_run", "submitter")
                    if f.msg and f.msg["type"] == "execution_error")
    assert error.keys() == recorded.keys() and error["node_id"] == "3" and error["executed"] == ["1"]
    assert requests.get(f"{sim.url}/history/{pid}").json()[pid]["status"]["status_str"] == "error"


def test_newer_jobs_api():
    s = SimComfy(SyntheticEngine(time_scale=0.02), newer=True, paused=True)
    s.start()
    try:
        a = post(s.url, {"prompt": GRAPH}).json()["prompt_id"]
        b = post(s.url, {"prompt": GRAPH}).json()["prompt_id"]
        jobs = requests.get(s.url + "/api/jobs", params={"status": "pending"}).json()
        assert {j["id"] for j in jobs["jobs"]} == {a, b} and jobs["pagination"]["total"] == 2
        assert requests.post(f"{s.url}/api/jobs/{b}/cancel").json()["cancelled"] is True
        s.resume()
        deadline = time.time() + 5
        while a not in s.history and time.time() < deadline:
            gevent.sleep(0.05)
        done = requests.get(f"{s.url}/api/jobs/{a}").json()
        assert done["status"] == "completed" and done["outputs_count"] == 1
        assert requests.get(s.url + "/api/jobs", params={"status": "bogus"}).status_code == 400
        assert requests.get(f"{s.url}/api/jobs/{b}").status_code == 404
    finally:
        s.stop(abrupt=False)


def test_demo_traffic_posts_external_jobs(sim):
    g = start_demo_traffic(sim.url, every_s=0.05, seed=2)
    try:
        deadline = time.time() + 5
        while not sim.history and time.time() < deadline:
            gevent.sleep(0.05)
    finally:
        g.kill()
    entry = next(iter(sim.history.values()))
    assert entry["prompt"][3]["client_id"].startswith("demo-")


def _replayable():
    out = []
    for name in ("01_happy_path_legacy", S01B, "02_fully_cached", "03_partially_cached", "04_error_mid_run",
                 "05_interrupt", "06_queue_three_delete_one", "06b_cancel_all", "07_observer_only",
                 "07b_observer_no_client_id", "09_submitter_reconnect_mid_run"):
        for index, _ in enumerate(posted_prompts(name)):
            try:
                out.append((name, index, ReplayEngine(name, prompt=index, speed=0)))
            except ValueError:  # deleted, cleared or killed before it ran: nothing to replay
                pass
    return out


@pytest.mark.parametrize("name,index,engine", _replayable(), ids=lambda v: str(v)[:30])
def test_every_recorded_run_replays_in_order(name, index, engine):
    """What the recorded socket got for that prompt (status aside) is what a live socket gets."""
    opened = next(l for l in load(name) if l["kind"] == "ws_open" and l["conn"] == engine.conn)
    fc = FakeComfy(default=engine)
    try:
        client = Client(fc.url, "me", flags=opened["sends_feature_flags"])
        body = recorded_body(name, index)
        if "client_id" in body:
            body["client_id"] = "me"
        post(fc.url, body)
        terminal = [i["type"] for _, i in engine.items if isinstance(i, dict) and i["type"] in TERMINAL]
        if engine.recorded_history:
            terminal.append(engine.recorded_history["status"]["messages"][-1][0])
        if terminal[-1] == "execution_interrupted":
            gevent.spawn_later(0.3, fc.interrupt)
        last = "executing" if "client_id" in body else terminal[-1]
        if last == "execution_success":  # not sent to anyone without a client id: wait for the final status
            last = "status"
        client.until(lambda f: kind(f) == last and (last != "executing" or f[1]["data"]["node"] is None)
                     and (last != "status" or f[1]["data"]["status"]["exec_info"]["queue_remaining"] == 0
                          and len(client.frames) > 3), timeout=10)
        got = [kind(f) for f in client.frames if kind(f) not in ("status", "feature_flags")]
        want = _recorded_window(name, engine)
        if "client_id" in body:
            want.append("executing")
        assert got == want
    finally:
        fc.stop(abrupt=False)


def _recorded_window(name: str, engine: ReplayEngine) -> list[str]:
    """Kinds of the frames the recorded socket got from the prompt's first mention to its last,
    minus what the core generates (status, flags, reconnect hint, final executing)."""
    lines = [l for l in load(name) if l.get("conn") == engine.conn and l["kind"] in ("ws_text", "ws_binary")]
    hits = [i for i, l in enumerate(lines) if engine._mentions(l)]
    out = []
    for line in lines[hits[0]:hits[-1] + 1]:
        if line["kind"] == "ws_binary":
            out.append(f"BIN{line['event_type']}")
            continue
        msg_type, data = line["msg"]["type"], line["msg"]["data"]
        if msg_type in ("status", "feature_flags") or (msg_type == "executing" and data.get("node") is None) \
                or (msg_type == "executing" and "prompt_id" not in data):
            continue
        out.append(msg_type)
    return out
