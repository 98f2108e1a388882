"""Configuration, the app factory, and security by default (credentials, origin checks)."""
from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from monitor import create_app
from monitor.config import Config
from monitor.jobs import DataDirBusy
from monitor.web.security import InsecureConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_environment_is_read_in_one_place_and_flags_win(monkeypatch):
    monkeypatch.setenv("COMFYUI_URL", "https://user:p%40ss@comfy.example:8443/base/")
    monkeypatch.setenv("MONITOR_PORT", "9001")
    monkeypatch.setenv("PORT", "9100")
    monkeypatch.setenv("MONITOR_INSTANT_NODES", "MyRouter, Other ,")
    cfg = Config.from_env()
    assert cfg.port == 9100, "PORT comes before MONITOR_PORT"
    assert cfg.comfy_base == "https://comfy.example:8443/base"
    assert cfg.comfy_ws_url == "wss://comfy.example:8443/base/ws"
    assert cfg.comfy_auth == ("user", "p@ss")
    assert cfg.instant_nodes == frozenset({"MyRouter", "Other"})
    assert cfg.shutdown_grace_s == 10.0
    monkeypatch.setenv("MONITOR_SHUTDOWN_GRACE_S", "25")
    assert Config.from_env().shutdown_grace_s == 25.0
    monkeypatch.setenv("MONITOR_SHUTDOWN_GRACE_S", "0")
    assert Config.from_env().shutdown_grace_s == 0.0    # 0: do not wait
    assert Config.from_env(port=1234, comfyui_url="http://h:1").comfy_ws_url == "ws://h:1/ws"
    monkeypatch.setenv("MONITOR_PORT", "eighty")
    monkeypatch.delenv("PORT")
    with pytest.raises(SystemExit, match="MONITOR_PORT"):
        Config.from_env()


def _cfg(tmp_path, **kw):
    return Config(data_dir=str(tmp_path / "data"), comfyui_url="http://127.0.0.1:9", testing=True, **kw)


def test_listening_beyond_loopback_requires_credentials(tmp_path, caplog):
    with pytest.raises(InsecureConfig, match="MONITOR_PASSWORD"):
        create_app(_cfg(tmp_path, host="0.0.0.0"), start=False)
    app = create_app(_cfg(tmp_path, host="0.0.0.0", allow_open=True), start=False)
    assert "WITHOUT any credentials" in caplog.text
    app.extensions["monitor"].close()


def test_app_py_refuses_to_start_open_and_says_how_to_fix_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    proc = subprocess.run([sys.executable, "app.py", "--host", "0.0.0.0", "--port", "0",
                           "--data-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "MONITOR_PASSWORD" in proc.stderr and "MONITOR_TOKEN" in proc.stderr


def test_credentials_guard_pages_apis_and_the_websocket(tmp_path):
    app = create_app(_cfg(tmp_path, host="0.0.0.0", password="s3cret", token="tok-123"), start=False)
    client = app.test_client()
    try:
        for path in ("/api/admin/queue", "/admin/queue", "/api/run/ws"):
            assert client.get(path).status_code == 401, path
        assert client.get("/healthz").status_code in (200, 503), "health stays open for supervisors"
        good = base64.b64encode(b"admin:s3cret").decode()
        bad = base64.b64encode(b"admin:wrong").decode()
        assert client.get("/api/admin/queue", headers={"Authorization": f"Basic {good}"}).status_code == 200
        assert client.get("/api/admin/queue", headers={"Authorization": f"Basic {bad}"}).status_code == 401
        assert client.get("/api/admin/queue", headers={"Authorization": "Bearer tok-123"}).status_code == 200
        assert client.get("/api/admin/queue", headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        app.extensions["monitor"].close()


def test_loopback_needs_no_credentials_and_post_origin_is_checked(tmp_path):
    app = create_app(_cfg(tmp_path), start=False)
    client = app.test_client()
    try:
        assert client.get("/api/admin/queue").status_code == 200
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            resp = client.post("/api/admin/jobs/x/cancel", headers=headers)
            assert resp.status_code == 403 and resp.get_json()["error"], headers
        same = client.post("/api/admin/jobs/x/cancel", headers={"Origin": "http://localhost"})
        assert same.status_code == 404, "same-origin reaches the handler"
    finally:
        app.extensions["monitor"].close()


def test_one_data_dir_serves_one_monitor(tmp_path):
    first = create_app(_cfg(tmp_path), start=False)
    with pytest.raises(DataDirBusy, match="data dir"):
        create_app(_cfg(tmp_path), start=False)
    client_id = first.extensions["monitor"].client_id
    first.extensions["monitor"].close()
    second = create_app(_cfg(tmp_path), start=False)
    assert second.extensions["monitor"].client_id == client_id, "the client id is persisted"
    second.extensions["monitor"].close()
