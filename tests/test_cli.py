"""`python -m monitor ...` run for real against a small stand-in of the app's HTTP API (same endpoints and shapes)."""
import base64
import json
import os
import socket
import subprocess
import sys

import pytest
from flask import Flask, jsonify, request
from gevent.pywsgi import WSGIServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_ID = "0f1e2d3c-aaaa-4bbb-8ccc-123456789abc"
QUEUED_ID = "7d2c8e41-5b6a-4f1e-9c3d-2a1b0c9d8e7f"
DONE_ID = "c3b2a190-1111-4222-8333-444455556666"


def job(job_id=JOB_ID, status="queued", **fields):
    record = {"id": job_id, "source": "local", "workflow_id": "example_invert",
              "workflow_name": "Invert a blank canvas", "status": status, "status_reason": None,
              "queued_at": "2026-11-28T15:20:52.123456+00:00", "started_at": None, "finished_at": None,
              "duration_s": None, "params": {"width": 64}, "seeds": [], "input_image": None,
              "output_dir": None, "job_folder": f"monitor/example_invert/{job_id[:8]}", "outputs": [],
              "error": None, "prompt_excerpt": None, "node_total": 5, "node_done": 0, "number": 12.0,
              "client_id": "monitor-1", "progress": None, "queue_position": None}
    record.update(fields)
    return record


RUNNING = job(status="running", started_at="2026-11-28T15:20:53+00:00",
              progress={"prompt_id": JOB_ID, "status": "running", "node_id": "3", "node_title": "Upscale Image",
                        "percent": 50.0, "indeterminate": False, "step": {"value": 10, "max": 20}})
QUEUED = job(QUEUED_ID, queue_position=2, workflow_id=None, workflow_name="my_graph", source="external")
DONE = job(DONE_ID, status="completed", duration_s=3.25, finished_at="2026-11-28T15:10:00+00:00")
WORKFLOWS = [{"id": "example_invert", "name": "Invert a blank canvas", "description": "No model weights needed.",
              "parameters": {"width": {"type": "int", "required": False, "default": 512, "min": 1, "max": 4096},
                             "upscale_method": {"type": "choice", "required": False, "default": "area",
                                                "choices": ["area", "bilinear"]},
                             "size": {"type": "int", "required": True}}}]


class FakeApp:
    """Records every request; `polls` scripts what GET /api/admin/jobs/<id> answers, one entry per call."""

    def __init__(self):
        self.requests = []
        self.polls = []
        self.fleet = False   # True: the queue answer of a monitor over two hosts
        self.app = Flask(__name__)
        self.app.before_request(self._record)
        add = self.app.add_url_rule
        add("/api/run/workflows", view_func=self.workflows)
        add("/api/run/<wid>/execute", view_func=self.execute, methods=["POST"])
        add("/api/run", view_func=self.run_raw, methods=["POST"])
        add("/api/admin/queue", view_func=self.queue)
        add("/api/admin/history", view_func=self.history)
        add("/api/admin/jobs/<job_id>", view_func=self.get_job)
        add("/api/admin/jobs/<job_id>/cancel", view_func=self.cancel, methods=["POST"])
        add("/api/admin/jobs/<job_id>/requeue", view_func=self.requeue, methods=["POST"])
        add("/api/admin/hosts", view_func=self.hosts)

    def _record(self):
        self.requests.append({"method": request.method, "path": request.path, "args": dict(request.args),
                              "auth": request.headers.get("Authorization"),
                              "json": request.get_json(silent=True)})
        if request.headers.get("Authorization") == "Bearer wrong":
            return jsonify(error="authentication required"), 401

    def workflows(self):
        return jsonify(workflows=WORKFLOWS)

    def queue(self):
        if self.fleet:
            return jsonify(hosts=["gpu1", "gpu2"], jobs=[dict(RUNNING, host="gpu1"), dict(QUEUED, host="gpu2")])
        return jsonify(jobs=[RUNNING, QUEUED])

    def hosts(self):
        return jsonify(hosts=[
            {"name": "gpu1", "url": "http://10.0.0.5:8188", "connected": True, "since": "2026-11-28T15:00:00+00:00",
             "queue": {"running": 1, "pending": 0}, "features": {}, "telemetry": None, "error": None},
            {"name": "gpu2", "url": "https://gpu2.example:443", "connected": False, "since": None,
             "queue": {"running": 0, "pending": 1}, "features": {}, "telemetry": None,
             "error": "ConnectionRefusedError: [Errno 111] Connection refused"}])

    def history(self):
        return jsonify(jobs=[DONE])

    def execute(self, wid):
        params = request.get_json()["params"]
        if wid != "example_invert":
            return jsonify(error=f"unknown workflow {wid!r}"), 404
        if params.get("width") == "big":
            return jsonify(error="width: expected an integer, got 'big'"), 400
        if params.get("width") == "0":
            # The app's answer to a ComfyUI 400: node titles already folded into the message.
            return jsonify(error="Prompt outputs failed validation — Blank canvas (#1): width",
                           node_errors={"1": {"class_type": "EmptyImage", "dependent_outputs": ["4"], "errors": [
                               {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1",
                                "details": "width"}]}},
                           job=job(status="failed")), 400
        if params.get("width") == "1":
            return jsonify(error={"type": "invalid_prompt", "message": "Cannot execute", "details": "Node ID '#2'"}), 400
        return jsonify(job(params=params, seeds=[123], host=request.get_json().get("host") or "gpu1",
                           routed=None if request.get_json().get("host") else "least wait (gpu1 0 jobs)")), 201

    def run_raw(self):
        return jsonify(job(workflow_id=None, workflow_name=request.get_json()["workflow_name"],
                           host=request.get_json().get("host") or "gpu1")), 201

    def get_job(self, job_id):
        return jsonify(self.polls.pop(0) if len(self.polls) > 1 else self.polls[0])

    def requeue(self, job_id):
        if job_id == JOB_ID:
            return jsonify(error=f"job {job_id} is still running; requeue it once it has finished"), 409
        if job_id != DONE_ID:
            return jsonify(error=f"no job {job_id}"), 404
        return jsonify(job(id="a1b2c3d4-0000-4000-8000-00000000beef", requeued_from=job_id,
                           host=(request.get_json(silent=True) or {}).get("host") or "gpu1")), 201

    def cancel(self, job_id):
        if job_id != JOB_ID:
            return jsonify(error=f"no job {job_id}"), 404
        return jsonify(job(status="cancelled"))


@pytest.fixture(scope="module")
def server():
    fake = FakeApp()
    http = WSGIServer(("127.0.0.1", 0), fake.app, log=None)
    http.start()
    fake.url = f"http://127.0.0.1:{http.server_port}"
    yield fake
    http.stop()


@pytest.fixture
def app(server):
    server.requests.clear()
    server.polls.clear()
    server.fleet = False
    return server


def cli(*args, url=None, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    if url:
        clean["MONITOR_URL"] = url
    clean.update(env)
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=60)


def test_submit_template_sends_params_as_strings(app):
    out = cli("submit", "example_invert", "width=64", "upscale_method=area", "note=a=b", url=app.url,
              MONITOR_TOKEN="s3cret")
    assert out.returncode == 0, out.stderr
    (req,) = app.requests
    assert (req["method"], req["path"]) == ("POST", "/api/run/example_invert/execute")
    assert req["json"] == {"params": {"width": "64", "upscale_method": "area", "note": "a=b"}}
    assert req["auth"] == "Bearer s3cret"
    assert f"submitted {JOB_ID}" in out.stdout and "status=queued" in out.stdout and "seeds=123" in out.stdout


def test_password_means_basic_auth_as_admin(app):
    out = cli("jobs", url=app.url, MONITOR_PASSWORD="pw:1")
    assert out.returncode == 0, out.stderr
    assert app.requests[0]["auth"] == "Basic " + base64.b64encode(b"admin:pw:1").decode()


def test_rejected_credentials(app):
    out = cli("jobs", url=app.url, MONITOR_TOKEN="wrong")
    assert out.returncode == 1
    assert out.stderr.strip() == "error: authentication required (set MONITOR_TOKEN or MONITOR_PASSWORD)"


def test_submit_json_prompt_file(app, tmp_path):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    raw = tmp_path / "my_graph.json"
    raw.write_text(json.dumps(graph))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"prompt": graph, "client_id": "x"}))
    assert cli("submit", str(raw), url=app.url).returncode == 0
    out = cli("submit", str(wrapped), "--json", url=app.url)
    assert out.returncode == 0, out.stderr
    assert [r["path"] for r in app.requests] == ["/api/run", "/api/run"]
    assert app.requests[0]["json"] == {"prompt": graph, "workflow_name": "my_graph"}
    assert app.requests[1]["json"] == {"prompt": graph, "workflow_name": "wrapped"}
    assert json.loads(out.stdout)["workflow_name"] == "wrapped"


def test_submit_file_with_params_or_unreadable(app, tmp_path):
    raw = tmp_path / "g.json"
    raw.write_text("{not json")
    out = cli("submit", str(raw), url=app.url)
    assert out.returncode == 2 and "cannot read" in out.stderr
    out = cli("submit", str(raw), "width=3", url=app.url)
    assert out.returncode == 2 and "only apply to workflow templates" in out.stderr
    assert app.requests == []


def test_bad_key_value(app):
    out = cli("submit", "example_invert", "width", url=app.url)
    assert out.returncode == 2 and "key=value" in out.stderr and app.requests == []


def test_400_prints_the_error_and_exits_1(app):
    out = cli("submit", "example_invert", "width=big", url=app.url)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: width: expected an integer, got 'big'"
    assert out.stdout == ""


def test_comfyui_validation_error_names_the_node(app):
    out = cli("submit", "example_invert", "width=0", url=app.url)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: Prompt outputs failed validation — Blank canvas (#1): width"


def test_error_object_is_flattened(app):
    out = cli("submit", "example_invert", "width=1", url=app.url)
    assert out.returncode == 1 and out.stderr.strip() == "error: Cannot execute: Node ID '#2'"


def test_unknown_workflow_404(app):
    out = cli("submit", "nope", url=app.url)
    assert out.returncode == 1 and "error: unknown workflow 'nope'" in out.stderr


def test_jobs_table(app):
    out = cli("jobs", url=app.url)
    assert out.returncode == 0, out.stderr
    assert [r["path"] for r in app.requests] == ["/api/admin/queue"]
    header, running, queued = out.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "WORKFLOW", "QUEUED", "PROGRESS"]
    assert running.startswith(JOB_ID) and "running" in running and "Invert a blank canvas" in running
    assert "50%  Upscale Image  step 10/20" in running
    assert queued.startswith(QUEUED_ID) and "my_graph" in queued and queued.endswith("#2 in queue")
    assert header.index("STATUS") == running.index("running")  # columns line up


def test_jobs_all_and_json(app):
    out = cli("jobs", "--all", url=app.url)
    assert out.returncode == 0, out.stderr
    assert app.requests[1]["path"] == "/api/admin/history" and app.requests[1]["args"] == {"limit": "20"}
    last = out.stdout.splitlines()[-1]
    assert last.startswith(DONE_ID) and "completed" in last and last.endswith("3.2s")
    data = json.loads(cli("jobs", "--all", "--json", url=app.url).stdout)
    assert [j["id"] for j in data["jobs"]] == [JOB_ID, QUEUED_ID, DONE_ID]


def test_cancel(app):
    out = cli("cancel", JOB_ID, url=app.url)
    assert out.returncode == 0, out.stderr
    assert (app.requests[0]["method"], app.requests[0]["path"]) == ("POST", f"/api/admin/jobs/{JOB_ID}/cancel")
    assert f"cancel requested for {JOB_ID}: status cancelled" in out.stdout
    out = cli("cancel", "missing", url=app.url)
    assert out.returncode == 1 and out.stderr.strip() == "error: no job missing"


def test_requeue(app):
    out = cli("requeue", DONE_ID, url=app.url)
    assert out.returncode == 0, out.stderr
    assert (app.requests[0]["method"], app.requests[0]["path"]) == ("POST", f"/api/admin/jobs/{DONE_ID}/requeue")
    assert app.requests[0]["json"] == {}
    assert out.stdout.strip() == f"queued a1b2c3d4-0000-4000-8000-00000000beef from {DONE_ID}: status queued"
    app.requests.clear()
    out = cli("requeue", DONE_ID, "--new-seed", "--host", "gpu2", url=app.url)
    assert out.returncode == 0, out.stderr
    assert app.requests[0]["json"] == {"new_seed": True, "host": "gpu2"}
    out = cli("requeue", JOB_ID, url=app.url)
    assert out.returncode == 1 and "still running" in out.stderr


def test_workflows_listing(app):
    out = cli("workflows", url=app.url)
    assert out.returncode == 0, out.stderr
    assert app.requests[0]["path"] == "/api/run/workflows"
    lines = out.stdout.splitlines()
    assert lines[0] == "example_invert  Invert a blank canvas"
    assert "    width: int 1..4096, default 512" in lines
    assert "    upscale_method: choice area|bilinear, default \"area\"" in lines
    assert "    size: int, required" in lines
    assert json.loads(cli("workflows", "--json", url=app.url).stdout) == {"workflows": WORKFLOWS}


def test_submit_wait_until_completed(app):
    app.polls[:] = [RUNNING, job(status="completed", duration_s=2.0)]
    out = cli("submit", "example_invert", "--wait", "--interval", "0.05", url=app.url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == ["queued", "running  50%  Upscale Image  step 10/20", "completed  2.0s"]
    assert [r["path"] for r in app.requests[1:]] == [f"/api/admin/jobs/{JOB_ID}"] * 2


@pytest.mark.parametrize("final, reason", [
    (job(status="failed", error={"type": "RuntimeError", "message": "CUDA out of memory"}), "CUDA out of memory"),
    (job(status="interrupted", status_reason="interrupted by user"), "interrupted by user"),
    (job(status="stalled", status_reason="ComfyUI restarted"), "ComfyUI restarted"),
])
def test_submit_wait_exits_1_unless_completed(app, final, reason):
    app.polls[:] = [RUNNING, final]
    out = cli("submit", "example_invert", "--wait", "--interval", "0.05", url=app.url)
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].startswith(final["status"])
    assert f"job {JOB_ID} ended {final['status']}: {reason}" in out.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    out = cli("jobs", url=url)
    assert out.returncode == 2
    assert f"cannot reach the monitor at {url}" in out.stderr and "connection refused" in out.stderr


def test_url_flag_beats_environment_and_port_default(app):
    dead = f"http://127.0.0.1:{free_port()}"
    assert cli("jobs", "--url", app.url, url=dead).returncode == 0
    assert cli("--url", app.url, "jobs", url=dead).returncode == 0
    port = app.url.rsplit(":", 1)[1]
    assert cli("workflows", MONITOR_PORT=port).returncode == 0
    assert len(app.requests) == 3


def test_submit_to_a_host(app, tmp_path):
    out = cli("submit", "example_invert", "width=64", "--host", "gpu2", url=app.url)
    assert out.returncode == 0, out.stderr
    assert app.requests[0]["json"] == {"params": {"width": "64"}, "host": "gpu2"}
    assert "host=gpu2" in out.stdout
    prompt = tmp_path / "graph.json"
    prompt.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}}}))
    out = cli("submit", str(prompt), "--host", "gpu1", url=app.url)
    assert out.returncode == 0, out.stderr
    assert app.requests[-1]["json"]["host"] == "gpu1" and "host=gpu1" in out.stdout
    out = cli("submit", "example_invert", url=app.url)   # routed by the monitor: it says where
    assert "host" not in app.requests[-1]["json"] and "host=gpu1" in out.stdout


def test_jobs_table_has_a_host_column_only_with_several_hosts(app):
    header = cli("jobs", url=app.url).stdout.splitlines()[0]
    assert "HOST" not in header.split()
    app.fleet = True
    header, running, queued = cli("jobs", url=app.url).stdout.splitlines()
    assert header.split() == ["ID", "HOST", "STATUS", "WORKFLOW", "QUEUED", "PROGRESS"]
    assert running.split()[:3] == [JOB_ID, "gpu1", "running"]
    assert queued.split()[:3] == [QUEUED_ID, "gpu2", "queued"]
    assert header.index("STATUS") == running.index("running")


def test_hosts_listing(app):
    out = cli("hosts", url=app.url)
    assert out.returncode == 0, out.stderr
    header, gpu1, gpu2 = out.stdout.splitlines()
    assert header.split() == ["NAME", "URL", "STATE", "RUNNING", "PENDING", "ERROR"]
    assert gpu1.startswith("gpu1") and "http://10.0.0.5:8188" in gpu1 and "connected since" in gpu1
    assert gpu2.startswith("gpu2") and "disconnected" in gpu2 and "Connection refused" in gpu2
    data = json.loads(cli("hosts", "--json", url=app.url).stdout)
    assert [h["name"] for h in data["hosts"]] == ["gpu1", "gpu2"]
