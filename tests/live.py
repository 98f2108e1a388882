"""The real app served by gevent on an ephemeral loopback port, pointed at a fake ComfyUI."""
from __future__ import annotations

import os
import time

import gevent
import requests

from monitor import create_app
from monitor.config import Config
from monitor.web.server import make_server

import recordings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATABASE_URL: str | None = None   # set by conftest's `backend` fixture: PostgreSQL instead of SQLite


def recorded_prompt(scenario: str = "01b_happy_path_feature_flags", index: int = 0) -> dict:
    """The API-format graph that a recording posted (real, not invented)."""
    return recordings.posted_prompts(scenario)[index]["request"]["prompt"]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        gevent.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LiveServer:
    def __init__(self, fake, data_dir: str, wait_connected: bool = True, **config):
        self.fake = fake
        self.data_dir = data_dir
        self.overrides = config
        self.port = 0
        self.server = None
        self.app = None
        self.start_app(wait_connected)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def monitor(self):
        return self.app.extensions["monitor"]

    def start_app(self, wait_connected: bool = True) -> None:
        settings = dict(comfyui_url=self.fake.url, data_dir=self.data_dir, host="127.0.0.1", port=0,
                        workflows_dir=os.path.join(ROOT, "workflows"), reconcile_interval=0.5,
                        reconnect_min=0.1, reconnect_max=1.0, telemetry_interval=0.5, hub_tick=0.15,
                        testing=True, database_url=DATABASE_URL)
        settings.update(self.overrides)
        self.app = create_app(Config(**settings))
        # The production server (web/server.py), bound to loopback whatever config.host says.
        self.server = make_server(self.app, "127.0.0.1", self.port)
        self.server.start()
        self.port = self.server.server_port
        if wait_connected:
            wait_for(lambda: self.monitor.listener.connected, what="the monitor to connect to ComfyUI")

    def stop_app(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None
        if self.app is not None:
            self.monitor.close()

    def restart_app(self, wait_connected: bool = True) -> None:
        self.stop_app()
        self.start_app(wait_connected=wait_connected)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=10, **kw)

    def submit(self, prompt: dict | None = None, **body) -> dict:
        resp = self.post("/api/run", json={"prompt": prompt or recorded_prompt(), **body})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def wait_status(self, job_id: str, status: str | set, timeout: float = 20.0) -> dict:
        wanted = {status} if isinstance(status, str) else set(status)

        def check():
            job = self.monitor.get_job(job_id)
            return job if job and job["status"] in wanted else None
        return wait_for(check, timeout, what=f"job {job_id} to reach {wanted}")
