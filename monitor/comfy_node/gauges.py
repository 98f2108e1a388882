"""This GPU host's gauges for GET /monitor/telemetry, in the shape of the monitor's own /api/admin/telemetry:
sampled in a daemon thread (nvidia-smi with a timeout, psutil), never on ComfyUI's event loop; requests read
the cached snapshot. The thread runs only while someone asks (it stops after IDLE_S without a request)."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from datetime import datetime, timezone

import psutil

INTERVAL_S = 2.0
IDLE_S = 60.0
NVIDIA_TIMEOUT_S = 5.0
MIB = 1024 * 1024
THRESHOLDS = {"warm": 65, "hot": 85}
QUERY = "index,name,utilization.gpu,memory.used,memory.total,temperature.gpu"


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _num(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None   # "[N/A]", "[Not Supported]"
    return value if value == value else None


def _pct(part, whole):
    return None if part is None or not whole else round(part / whole * 100.0, 1)


def parse_nvidia(text: str) -> list[dict]:
    """`nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits` → devices (unknown values None + reason)."""
    devices = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 6:
            continue
        index, name = cells[0], cells[1]
        load, used, total, temp = (_num(c) for c in cells[2:])
        used = None if used is None else int(used * MIB)
        total = None if total is None else int(total * MIB)
        missing = [k for k, v in (("load", load), ("memory used", used), ("memory total", total),
                                  ("temperature", temp)) if v is None]
        devices.append({"index": int(_num(index) or 0), "name": name, "load_percent": load,
                        "memory_used": used, "memory_total": total, "memory_percent": _pct(used, total),
                        "temperature_c": temp,
                        "reason": f"nvidia-smi does not report: {', '.join(missing)}" if missing else None})
    return devices


def query_nvidia(timeout: float = NVIDIA_TIMEOUT_S) -> tuple[list[dict], str | None]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "no NVIDIA GPU visible: nvidia-smi not found on PATH"
    try:
        done = subprocess.run([exe, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"nvidia-smi did not answer within {timeout:g} s"
    except OSError as exc:
        return [], f"nvidia-smi could not run: {exc}"
    if done.returncode != 0:
        return [], f"nvidia-smi failed ({done.returncode}): {done.stderr.strip()[:200]}"
    devices = parse_nvidia(done.stdout)
    return devices, None if devices else "no NVIDIA GPU visible: nvidia-smi lists no GPU"


def output_dir() -> str | None:
    try:
        import folder_paths   # ComfyUI's own module
        return folder_paths.get_output_directory()
    except Exception:  # noqa: BLE001 - not inside ComfyUI (tests) or another version
        return None


class Sampler:
    def __init__(self, interval: float = INTERVAL_S, nvidia=query_nvidia, folder=output_dir):
        self.interval, self.nvidia, self.folder = interval, nvidia, folder
        self._snapshot = self._empty("warming up")
        self._asked = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def snapshot(self, now: float) -> dict:
        """The cached snapshot; (re)starts the sampler thread if it is not running. Never blocks."""
        self._asked = now
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="monitor-relay-gauges", daemon=True)
                self._thread.start()
        return self._snapshot

    def _run(self) -> None:
        psutil.cpu_percent(None)   # the first call only starts the measurement
        while time.time() - self._asked < IDLE_S:
            time.sleep(min(self.interval, 0.5) if self._snapshot["sampled_at"] is None else self.interval)
            try:
                self._snapshot = self.sample()
            except Exception as exc:  # noqa: BLE001 - report it, keep sampling
                self._snapshot = self._empty(f"sampling failed: {type(exc).__name__}: {exc}")

    def _empty(self, why: str) -> dict:
        return {"sampled_at": None, "interval_s": self.interval, "source": "relay_node",
                "cpu": {"percent": None, "count": None, "reason": why},
                "ram": {"used": None, "total": None, "percent": None, "limited_by": None, "reason": why},
                "disk": {"path": None, "of": "comfyui_output_dir", "used": None, "total": None, "percent": None,
                         "reason": why},
                "gpu": {"source": None, "stale": False, "stale_since": None, "sampled_at": None, "reason": why,
                        "devices": []},
                "thresholds": dict(THRESHOLDS)}

    def sample(self) -> dict:
        now = iso(time.time())
        vm = psutil.virtual_memory()
        folder = self.folder()
        disk = {"path": folder, "of": "comfyui_output_dir", "used": None, "total": None, "percent": None,
                "reason": None}
        if folder is None:
            disk["reason"] = "ComfyUI's output folder is unknown"
        else:
            try:
                usage = psutil.disk_usage(folder if os.path.isdir(folder) else os.path.dirname(folder) or "/")
                disk.update(used=usage.used, total=usage.total, percent=round(usage.percent, 1))
            except OSError as exc:
                disk["reason"] = f"cannot measure {folder}: {exc.strerror or exc}"
        devices, gpu_reason = self.nvidia()
        return {"sampled_at": now, "interval_s": self.interval, "source": "relay_node",
                "cpu": {"percent": round(psutil.cpu_percent(None), 1), "count": psutil.cpu_count(), "reason": None},
                "ram": {"used": vm.total - vm.available, "total": vm.total,
                        "percent": _pct(vm.total - vm.available, vm.total), "limited_by": None, "reason": None},
                "disk": disk,
                "gpu": {"source": "nvidia-smi" if devices else None, "stale": False, "stale_since": None,
                        "sampled_at": now, "reason": gpu_reason, "devices": devices},
                "thresholds": dict(THRESHOLDS)}
