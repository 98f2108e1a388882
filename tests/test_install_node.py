"""`python -m monitor install-node PATH`: run as a real subprocess against a folder laid out like ComfyUI."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from monitor.install_node import FOLDER, node_files, version_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "monitor", "install-node", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def comfy(tmp_path):
    for name in ("main.py", "server.py", "nodes.py", "execution.py"):
        (tmp_path / name).write_text("# ComfyUI\n")
    (tmp_path / "custom_nodes").mkdir()
    return tmp_path


def test_installs_then_is_idempotent_then_upgrades(comfy):
    target = comfy / "custom_nodes" / FOLDER
    first = cli(str(comfy))
    assert first.returncode == 0, first.stderr
    assert "installed the relay node" in first.stdout and "restart ComfyUI" in first.stdout
    assert sorted(os.listdir(target)) == node_files()
    for name in node_files():
        assert (target / name).read_bytes() == open(os.path.join(ROOT, "monitor", "comfy_node", name), "rb").read()

    again = cli(str(comfy))
    assert again.returncode == 0 and "nothing changed" in again.stdout

    # An older copy: another version, a file that no longer exists.
    relay = target / "relay.py"
    relay.write_text(relay.read_text().replace(f'VERSION = "{version_of(str(target))}"', 'VERSION = "0.0.1"'))
    (target / "obsolete.py").write_text("")
    upgraded = cli(str(comfy))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "0.0.1 ->" in upgraded.stdout
    assert sorted(os.listdir(target)) == node_files()
    assert not [p for p in os.listdir(comfy / "custom_nodes") if p != FOLDER]   # no staging leftovers


def test_refuses_a_folder_that_is_not_comfyui(tmp_path):
    done = cli(str(tmp_path))
    assert done.returncode == 1
    assert "not a ComfyUI checkout" in done.stderr and not os.listdir(tmp_path)
    missing = cli(str(tmp_path / "nope"))
    assert missing.returncode == 1 and "not a folder" in missing.stderr


def test_never_overwrites_another_node_of_the_same_name(comfy):
    other = comfy / "custom_nodes" / FOLDER
    other.mkdir()
    (other / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {'Mine': object}\n")
    done = cli(str(comfy))
    assert done.returncode == 1 and "is not this relay node" in done.stderr
    assert (other / "__init__.py").read_text() == "NODE_CLASS_MAPPINGS = {'Mine': object}\n"
