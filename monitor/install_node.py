"""`python -m monitor install-node PATH`: copies the relay node (monitor/comfy_node) into a ComfyUI checkout's
custom_nodes folder. Idempotent; upgrades an older copy in place; refuses a folder that is not ComfyUI."""
from __future__ import annotations

import filecmp
import os
import re
import shutil

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfy_node")
FOLDER = "comfyui_monitor_relay"
MARKER = "comfyui-monitor relay"            # in the node's __init__ docstring: tells our copy from another node
COMFY_FILES = ("main.py", "server.py", "nodes.py", "execution.py")
_VERSION = re.compile(r'^VERSION = "([^"]+)"', re.M)


class InstallError(Exception):
    """Nothing was changed; the message says why."""


def node_files() -> list[str]:
    return sorted(f for f in os.listdir(SOURCE) if f.endswith(".py"))


def version_of(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "relay.py"), encoding="utf-8") as fh:
            match = _VERSION.search(fh.read())
    except OSError:
        return None
    return match.group(1) if match else None


def _is_ours(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "__init__.py"), encoding="utf-8") as fh:
            return MARKER in fh.read(2000)
    except OSError:
        return False


def install(comfy_root: str) -> list[str]:
    """Install or upgrade; returns the lines to print. Raises InstallError (nothing changed)."""
    root = os.path.abspath(os.path.expanduser(comfy_root))
    if not os.path.isdir(root):
        raise InstallError(f"{root} is not a folder")
    missing = [f for f in COMFY_FILES if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise InstallError(f"{root} is not a ComfyUI checkout (no {', '.join(missing)}); give the folder "
                           "that holds ComfyUI's main.py and custom_nodes/")
    custom = os.path.join(root, "custom_nodes")
    if not os.path.isdir(custom):
        raise InstallError(f"{root} has no custom_nodes/ folder; is it a ComfyUI checkout?")
    target = os.path.join(custom, FOLDER)
    new_version = version_of(SOURCE)
    files = node_files()
    if os.path.exists(target):
        if not os.path.isdir(target) or not _is_ours(target):
            raise InstallError(f"{target} exists and is not this relay node; move it away first")
        same = all(os.path.isfile(os.path.join(target, f)) and
                   filecmp.cmp(os.path.join(SOURCE, f), os.path.join(target, f), shallow=False) for f in files)
        extra = [f for f in os.listdir(target) if f.endswith(".py") and f not in files]
        if same and not extra:
            return [f"the relay node {new_version} is already installed in {target}; nothing changed"]
        old_version = version_of(target) or "unknown version"
        action = f"upgraded the relay node in {target} ({old_version} -> {new_version})"
    else:
        action = f"installed the relay node {new_version} in {target}"
    staging, retired = target + ".installing", target + ".old"
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        os.mkdir(staging)
        for f in files:
            shutil.copy2(os.path.join(SOURCE, f), os.path.join(staging, f))
        if os.path.exists(target):
            os.rename(target, retired)   # swapped by renames: ComfyUI never sees a half-copied node
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if os.path.isdir(retired) and not os.path.exists(target):
            os.rename(retired, target)
        raise InstallError(f"could not write {target}: {exc.strerror or exc}") from None
    shutil.rmtree(retired, ignore_errors=True)
    return [action, "restart ComfyUI to load it; the monitor then subscribes by itself on its next connect "
                    "(GET /monitor/relay on ComfyUI answers once it is loaded)"]
