"""COMFYUI_URL as a list of ComfyUI hosts: names, per-host URL parts, and the lists that refuse to start."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from monitor.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_list_of_named_and_unnamed_hosts(monkeypatch):
    monkeypatch.setenv("COMFYUI_URL", " gpu1=http://10.0.0.5:8188 , gpu2=https://user:p%40ss@gpu2.example:443/base/,"
                                      "https://gpu3.example,http://127.0.0.1:8190")
    hosts = Config.from_env().comfy_hosts
    assert [h.name for h in hosts] == ["gpu1", "gpu2", "gpu3.example:443", "127.0.0.1:8190"]
    gpu1, gpu2, gpu3, local = hosts
    assert (gpu1.base, gpu1.ws_url, gpu1.auth) == ("http://10.0.0.5:8188", "ws://10.0.0.5:8188/ws", None)
    assert gpu2.base == "https://gpu2.example:443/base"
    assert gpu2.ws_url == "wss://gpu2.example:443/base/ws"
    assert gpu2.auth == ("user", "p@ss")
    assert gpu3.ws_url == "wss://gpu3.example/ws"
    assert [h.is_loopback for h in hosts] == [False, False, False, True]


def test_one_url_is_one_host_named_by_host_and_port():
    cfg = Config.from_env(comfyui_url="http://127.0.0.1:8188")
    assert [(h.name, h.base) for h in cfg.comfy_hosts] == [("127.0.0.1:8188", "http://127.0.0.1:8188")]
    assert cfg.comfy_base == "http://127.0.0.1:8188" and cfg.comfy_ws_url == "ws://127.0.0.1:8188/ws"
    # The first host's parts are what single-host code reads.
    cfg = Config.from_env(comfyui_url="a=https://u:p@one.example:8443,b=http://two.example:8188")
    assert (cfg.comfy_base, cfg.comfy_ws_url, cfg.comfy_auth) == \
        ("https://one.example:8443", "wss://one.example:8443/ws", ("u", "p"))


@pytest.mark.parametrize("raw, named", [
    ("a=http://h1:8188,a=http://h2:8188", "entry 2 ('a=http://h2:8188'): the host name 'a' is given twice"),
    ("http://h1:8188,b=http://h1:8188/", "entry 2 ('b=http://h1:8188/'): the URL http://h1:8188 is given twice"),
    ("a=http://h1:8188,,b=http://h2:8188", "entry 2 is empty"),
    ("a=http://h1:8188,", "entry 2 is empty"),
    ("a=http://h1:8188,b=ftp://h2", "entry 2 ('b=ftp://h2'): the URL must look like"),
    ("a=http://h1:8188,b=h2:8188", "entry 2 ('b=h2:8188'): the URL must look like"),
    ("a=http://h1:99999", "entry 1 ('a=http://h1:99999'): the URL must look like"),
    ("bad name=http://h1:8188", "entry 1 ('bad name=http://h1:8188'): a host name is 1 to 32"),
    ("=http://h1:8188", "entry 1 ('=http://h1:8188'): a host name is 1 to 32"),
    (f"{'x' * 33}=http://h1:8188", "a host name is 1 to 32"),
    ("a=http://h1:8188,b=http://h2:0", "entry 2 ('b=http://h2:0'): the URL must look like"),
    ("a=http://h1:8188/?token=x", "entry 1 ('a=http://h1:8188/?token=x'): the URL must look like"),
    ("a=http://h1:8188#top", "entry 1 ('a=http://h1:8188#top'): the URL must look like"),
    ("a=b=http://h1:8188", "entry 1 ('a=b=http://h1:8188'): the URL must look like"),
    (" , ", "entry 1 is empty"),
    ("gpu=http://h1:8188,GPU=http://h2:8188", "entry 2 ('GPU=http://h2:8188'): the host name 'GPU' is given twice"),
    ("http://H1:8188,http://h1:8188", "entry 2 ('http://h1:8188'): the host name 'h1:8188' is given twice"),
])
def test_bad_lists_refuse_to_start_naming_the_entry(raw, named):
    with pytest.raises(SystemExit) as info:
        Config.from_env(comfyui_url=raw)
    assert named in str(info.value)


def test_the_app_refuses_a_bad_list_from_the_environment_before_opening_anything(tmp_path, monkeypatch):
    from monitor import create_app
    monkeypatch.setenv("COMFYUI_URL", "gpu1=http://127.0.0.1:9,gpu2=http://127.0.0.1:9")
    with pytest.raises(SystemExit) as info:
        create_app(Config.from_env(data_dir=str(tmp_path / "data")), start=False)
    assert "entry 2 ('gpu2=http://127.0.0.1:9'): the URL http://127.0.0.1:9 is given twice" in str(info.value)
    assert not (tmp_path / "data").exists(), "nothing created for a configuration that cannot start"


def test_app_py_refuses_a_bad_list_and_names_the_entry(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_") and k != "COMFYUI_URL"}
    proc = subprocess.run([sys.executable, "app.py", "--port", "0", "--data-dir", str(tmp_path),
                           "--comfy-url", "gpu1=http://127.0.0.1:9,gpu1=http://127.0.0.1:10"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "entry 2" in proc.stderr and "'gpu1' is given twice" in proc.stderr
