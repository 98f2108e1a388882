"""Telemetry: one sampler greenlet refreshes a cached snapshot; readers only ever get the cache.

`Telemetry(config, comfy=None, interval=1.5)`; `.start()` spawns the sampler, `.stop()` kills it,
`.snapshot()` returns the latest snapshot dict without touching hardware (treat it as read-only).
`comfy` is anything with `system_stats() -> dict` (ComfyUI's GET /system_stats; raises on failure);
it is asked only when no NVIDIA GPU is visible. Keyword-only knobs for tests: `gpu_timeout` (s before
a running nvidia-smi makes the GPU reading stale), `cgroup_root`, `history_s`.

Snapshot shape (the contract for `GET /api/admin/telemetry` and the gauges; bytes are ints, percents
floats 0-100 with one decimal, times UTC ISO strings). A value that is not known is `null`, never 0,
and the `reason` next to it says why ("warming up", "nvidia-smi not found on PATH", ...):

    {"sampled_at": iso|null,                  # null until the first pass has run
     "interval_s": 1.5,
     "cpu":  {"percent": float|null, "count": int|null, "reason": str|null},
     "ram":  {"used": int|null, "total": int|null, "percent": float|null,
              "limited_by": "cgroup"|null,    # "cgroup": total = the container's memory limit
              "reason": str|null},
     "disk": {"path": str,                    # the folder measured (nearest existing one)
              "of": "comfyui_output_dir"|"data_dir",
              "used": int|null, "total": int|null, "percent": float|null, "reason": str|null},
     "gpu":  {"source": "nvidia-smi"|"comfyui"|null,
              "stale": bool,                  # nvidia-smi has not answered within gpu_timeout
              "stale_since": iso|null,        # when that unanswered nvidia-smi call started
              "sampled_at": iso|null,         # when the devices below were read
              "reason": str|null,             # why devices is empty, or why the reading is stale
              "devices": [{"index": int, "name": str,
                           "load_percent": float|null,
                           "memory_used": int|null, "memory_total": int|null,   # bytes
                           "memory_percent": float|null,
                           "temperature_c": float|null,
                           "reason": str|null,       # why some of the values above are null
                           "history": {"load": [[epoch_s, percent], ...],      # last 5 minutes,
                                       "memory": [[epoch_s, percent], ...]}}]},  # oldest first
     "thresholds": {"warm": 65, "hot": 85}}

`level(percent, thresholds)` maps a percent to the gauge colour class: "normal" | "warm" | "hot" | "na".
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import shutil
import sys
import time
import types
from collections import deque

import gevent
import psutil

from .timeutil import iso_from_epoch, utcnow_iso

log = logging.getLogger(__name__)

THRESHOLDS = {"warm": 65, "hot": 85}
HISTORY_S = 300.0
MIB = 1024 * 1024


def level(percent, thresholds=None) -> str:
    t = thresholds or THRESHOLDS
    if percent is None or (isinstance(percent, float) and math.isnan(percent)):
        return "na"
    if percent > t["hot"]:
        return "hot"
    if percent > t["warm"]:
        return "warm"
    return "normal"


# --- GPUtil ----------------------------------------------------------------------------------------

def _import_gputil():
    """(GPUtil.GPUtil module, None) or (None, reason). GPUtil 1.4.0 does `from distutils import spawn`;
    on Python 3.12+ setuptools' shim provides distutils. Without it, a stand-in module is lent for the
    import only: GPUtil uses nothing but spawn.find_executable (on Windows), which is shutil.which."""
    try:
        import GPUtil.GPUtil as gputil
        return gputil, None
    except ImportError as exc:
        if exc.name != "distutils":
            return None, f"GPUtil is not importable: {exc}"
    stub, spawn = types.ModuleType("distutils"), types.ModuleType("distutils.spawn")
    spawn.find_executable = shutil.which
    stub.spawn = spawn
    sys.modules.update({"distutils": stub, "distutils.spawn": spawn})
    try:
        import GPUtil.GPUtil as gputil
        return gputil, None
    except Exception as exc:  # noqa: BLE001 - reported on the gauge instead of crashing the app
        return None, f"GPUtil is not importable: {exc}"
    finally:
        for name in ("distutils.spawn", "distutils"):
            if sys.modules.get(name) in (stub, spawn):
                del sys.modules[name]


def _private_subprocess():
    """A private, unpatched copy of the stdlib subprocess module for GPUtil in a threadpool thread.
    After monkey.patch_all() the shared module's Popen fails there (gevent's needs the main loop's
    child watcher; the stdlib one is left without its _fork_exec) and GPUtil swallows the error as
    "no GPU". The copy spawns through _posixsubprocess, which drops the GIL while the child starts
    (os.posix_spawn holds it: tens of ms of loop stall on a busy machine), and blocks only its thread."""
    spec = importlib.util.find_spec("subprocess")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._USE_POSIX_SPAWN = False  # that path calls os.posix_spawn, which gevent patches
    return module


_gputil, GPUTIL_ERROR = _import_gputil()
if _gputil is not None:
    _gputil.Popen = _private_subprocess().Popen


def _num(value, scale=1.0):
    """A finite float, or None (GPUtil turns "[N/A]" and "[Not Supported]" into nan)."""
    try:
        value = float(value) * scale
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _pct(part, whole):
    if part is None or not whole:
        return None
    return round(part / whole * 100.0, 1)


def _device(index, name, load, used, total, temperature, reason=None):
    return {"index": index, "name": name,
            "load_percent": None if load is None else round(load, 1),
            "memory_used": None if used is None else int(used),
            "memory_total": None if total is None else int(total),
            "memory_percent": _pct(used, total),
            "temperature_c": temperature, "reason": reason}


def _query_nvidia():
    """Runs in a threadpool thread (GPUtil blocks on nvidia-smi). Returns (devices, reason)."""
    if _gputil is None:
        return [], GPUTIL_ERROR
    gpus = _gputil.getGPUs()  # [] when nvidia-smi cannot be started at all
    if not gpus:
        if shutil.which("nvidia-smi") is None:
            return [], "no NVIDIA GPU visible: nvidia-smi not found on PATH"
        return [], "no NVIDIA GPU visible: nvidia-smi lists no GPU"
    devices = []
    for g in gpus:
        values = {"load": _num(g.load, 100.0), "memory used": _num(g.memoryUsed, MIB),
                  "memory total": _num(g.memoryTotal, MIB), "temperature": _num(g.temperature)}
        missing = [k for k, v in values.items() if v is None]
        devices.append(_device(int(g.id), g.name, values["load"], values["memory used"],
                               values["memory total"], values["temperature"],
                               f"nvidia-smi does not report: {', '.join(missing)}" if missing else None))
    return devices, None


# --- ComfyUI fallback ------------------------------------------------------------------------------

_TORCH_NAME = re.compile(r"^\w+:\d+\s+|\s+:\s+\S+$")  # "cuda:0 NVIDIA … : cudaMallocAsync"


def _comfy_devices(stats: dict):
    """(devices, reason) from a /system_stats body: VRAM only, ComfyUI reports no load or temperature."""
    listed = stats.get("devices") or []
    gpus = [d for d in listed if isinstance(d, dict) and d.get("type") != "cpu"]
    if not gpus:
        return [], "ComfyUI runs on the CPU" if listed else "ComfyUI reports no device"
    devices = []
    for pos, d in enumerate(gpus):
        total, free = _num(d.get("vram_total")), _num(d.get("vram_free"))
        used = total - free if total is not None and free is not None else None
        name = _TORCH_NAME.sub("", str(d.get("name") or "")).strip() or str(d.get("type") or "GPU")
        index = d["index"] if isinstance(d.get("index"), int) else pos
        devices.append(_device(index, name, None, used, total, None,
                               "ComfyUI's /system_stats reports memory only"))
    return devices, None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _unreadable(what: str, exc: BaseException) -> str:
    """A gauge's reason is a short sentence for people; the exception goes to the log."""
    log.warning("telemetry: %s could not be read: %s", what, _short(exc))
    return "could not be read (details in the log)"


class _Outage:
    """Since when ComfyUI has not answered /system_stats: the gauges' reason ("ComfyUI unreachable since
    14:02 UTC"); the exception is logged once per outage, not shown."""

    def __init__(self, who: str):
        self.who, self.since = who, None

    def failed(self, exc: BaseException) -> str:
        if self.since is None:
            self.since = time.time()
            log.warning("telemetry: %s /system_stats failed: %s", self.who, _short(exc))
        else:
            log.debug("telemetry: %s /system_stats still failing: %s", self.who, _short(exc))
        return "ComfyUI unreachable since " + time.strftime("%H:%M UTC", time.gmtime(self.since))

    def ok(self) -> None:
        self.since = None


# --- RAM and disk ----------------------------------------------------------------------------------

def _read_int(path):
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):  # missing file, or "max" (no limit)
        return None


def _stat_value(path, key):
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory(root="/sys/fs/cgroup"):
    """(used, limit) of the cgroup (v2, else v1) when it has a memory limit, else None. Used is the
    working set, as `docker stats` shows it: usage minus inactive page cache the kernel can drop."""
    for limit_f, usage_f, stat_f, inactive in (
            ("memory.max", "memory.current", "memory.stat", "inactive_file"),
            ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat",
             "total_inactive_file")):
        limit = _read_int(os.path.join(root, limit_f))
        usage = _read_int(os.path.join(root, usage_f))
        if limit is not None and usage is not None:
            return max(0, usage - _stat_value(os.path.join(root, stat_f), inactive)), limit
    return None


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


# --- the sampler -----------------------------------------------------------------------------------

def remember_gpu(history: dict, key, device: dict, t: float, history_s: float, maxlen: int | None = None) -> dict:
    """Add a device's load and memory percent (when known) at time t to `history[key]`, forgetting points
    older than `history_s`; returns that device's {"load": deque, "memory": deque} of (t, percent)."""
    series = history.setdefault(key, {"load": deque(maxlen=maxlen), "memory": deque(maxlen=maxlen)})
    for name, value in (("load", device.get("load_percent")), ("memory", device.get("memory_percent"))):
        points = series[name]
        if isinstance(value, (int, float)):
            points.append((round(t, 3), value))
        while points and points[0][0] < t - history_s:
            points.popleft()
    return series


class Telemetry:
    def __init__(self, config, comfy=None, interval=1.5, *, gpu_timeout=5.0,
                 cgroup_root="/sys/fs/cgroup", history_s=HISTORY_S):
        self.config = config
        self.comfy = comfy
        self.interval = float(interval)
        self.gpu_timeout = float(gpu_timeout)
        self.cgroup_root = cgroup_root
        self.history_s = float(history_s)
        self._greenlet = None
        self._cpu_primed = False
        self._gpu_job = None          # the one nvidia-smi call in flight (threadpool AsyncResult)
        self._gpu_job_started = None
        self._gpu = {"source": None, "reason": "not sampled yet", "devices": [], "sampled_at": None}
        self._history = {}            # (source, index) -> {"load": deque, "memory": deque}
        self._outage = _Outage(getattr(comfy, "base", None) or "ComfyUI")
        pending = "not sampled yet"
        self._snapshot = self._compose(
            None, {"percent": None, "count": None, "reason": pending},
            {"used": None, "total": None, "percent": None, "limited_by": None, "reason": pending},
            {**self._disk_target(), "used": None, "total": None, "percent": None, "reason": pending},
            time.time())

    def start(self):
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None

    def snapshot(self) -> dict:
        return self._snapshot

    def _run(self):
        while True:
            began = time.monotonic()
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a sampler that dies would freeze every gauge
                log.exception("telemetry sample failed")
            gevent.sleep(max(0.05, self.interval - (time.monotonic() - began)))

    def sample(self) -> dict:
        """One sampling pass: the sampler's body, public for tests and the bench. Cooperative; it
        waits on nvidia-smi for at most `interval` and on ComfyUI for at most `gpu_timeout`."""
        cpu, ram, disk = self._read_cpu(), self._read_ram(), self._read_disk()
        self._read_gpus()
        now = time.time()
        self._snapshot = self._compose(utcnow_iso(), cpu, ram, disk, now)
        return self._snapshot

    # CPU: psutil keeps the cpu_percent(None) baseline per threading.get_ident(), and under gevent
    # every greenlet is a new "thread": a call from a request greenlet would compare against nothing
    # (and leave one baseline per greenlet behind). So only this sampler calls it, and its first
    # call, which only sets the baseline, is not reported.
    def _read_cpu(self):
        try:
            percent, count = psutil.cpu_percent(interval=None), psutil.cpu_count()
        except Exception as exc:  # noqa: BLE001
            return {"percent": None, "count": None, "reason": _unreadable("CPU", exc)}
        if not self._cpu_primed:
            self._cpu_primed = True
            return {"percent": None, "count": count, "reason": "warming up: needs a second reading"}
        return {"percent": round(percent, 1), "count": count, "reason": None}

    def _read_ram(self):
        try:
            vm = psutil.virtual_memory()
        except Exception as exc:  # noqa: BLE001
            return {"used": None, "total": None, "percent": None, "limited_by": None,
                    "reason": _unreadable("RAM", exc)}
        used, total, limited_by = vm.total - vm.available, vm.total, None
        group = cgroup_memory(self.cgroup_root)
        if group is not None and 0 < group[1] < total:
            (used, total), limited_by = group, "cgroup"
        return {"used": int(used), "total": int(total), "percent": _pct(used, total),
                "limited_by": limited_by, "reason": None}

    def _disk_target(self):
        out = self.config.comfyui_output_dir
        if out and os.path.isdir(out):
            return {"path": os.path.abspath(out), "of": "comfyui_output_dir"}
        return {"path": _nearest_existing(self.config.data_dir), "of": "data_dir"}

    def _read_disk(self):
        target = self._disk_target()
        try:
            du = psutil.disk_usage(target["path"])
        except Exception as exc:  # noqa: BLE001
            return {**target, "used": None, "total": None, "percent": None, "reason": _unreadable("disk", exc)}
        return {**target, "used": int(du.used), "total": int(du.total),
                "percent": round(du.percent, 1), "reason": None}

    def _read_gpus(self):
        now = time.time()
        if self._gpu_job is None:  # never a second nvidia-smi while one still runs
            self._gpu_job = gevent.get_hub().threadpool.spawn(_query_nvidia)
            self._gpu_job_started = now
        job, started = self._gpu_job, self._gpu_job_started
        job.wait(timeout=max(0.0, min(self.interval, started + self.gpu_timeout - now)))
        if not job.ready():
            return  # keep the last reading; _compose marks it stale once gpu_timeout has passed
        self._gpu_job = None
        try:
            devices, reason = job.get()
        except Exception as exc:  # noqa: BLE001 - e.g. nvidia-smi printed an error GPUtil can't parse
            log.warning("telemetry: nvidia-smi output not understood: %s", _short(exc))
            devices, reason = [], "nvidia-smi output not understood (details in the log)"
        source = "nvidia-smi" if devices else None
        if not devices and self.comfy is not None:
            devices, reason, source = self._ask_comfy(reason)
        taken = time.time()
        for d in devices:
            self._remember(source, d, taken)
        self._gpu = {"source": source, "reason": reason, "devices": devices, "sampled_at": taken}

    def _ask_comfy(self, why_not_nvidia):
        try:
            with gevent.Timeout(self.gpu_timeout, TimeoutError(f"no answer in {self.gpu_timeout:g} s")):
                stats = self.comfy.system_stats()
        except Exception as exc:  # noqa: BLE001
            return [], f"{why_not_nvidia}; {self._outage.failed(exc)}", None
        self._outage.ok()
        devices, reason = _comfy_devices(stats if isinstance(stats, dict) else {})
        return devices, reason, ("comfyui" if devices else None)

    def _remember(self, source, device, t):
        remember_gpu(self._history, (source, device["index"]), device, t, self.history_s,
                     maxlen=int(self.history_s / max(self.interval, 0.05)) + 8)

    def _compose(self, sampled_at, cpu, ram, disk, now):
        gpu = self._gpu
        stale = self._gpu_job is not None and now - self._gpu_job_started > self.gpu_timeout
        reason = gpu["reason"]
        if stale:
            waited = now - self._gpu_job_started
            reason = (f"nvidia-smi has not answered for {waited:.0f} s"
                      + ("; showing the last reading" if gpu["devices"] else ""))
        devices = []
        for d in gpu["devices"]:
            series = self._history.get((gpu["source"], d["index"]), {"load": (), "memory": ()})
            devices.append({**d, "history": {k: [list(p) for p in series[k]] for k in ("load", "memory")}})
        return {"sampled_at": sampled_at, "interval_s": self.interval, "cpu": cpu, "ram": ram,
                "disk": disk,
                "gpu": {"source": gpu["source"], "stale": stale,
                        "stale_since": iso_from_epoch(self._gpu_job_started) if stale else None,
                        "sampled_at": iso_from_epoch(gpu["sampled_at"]), "reason": reason,
                        "devices": devices},
                "thresholds": dict(THRESHOLDS)}


# --- a remote host -----------------------------------------------------------------------------------

NOT_REPORTED = "not reported by the host's ComfyUI (/system_stats)"


class RemoteTelemetry:
    """Gauges of a host the monitor does not run on. From the relay node's GET /monitor/telemetry when it
    answers (the GPU box's own CPU, RAM, disk and every GPU's load, memory and temperature; GPU history kept
    here), else from its ComfyUI's GET /system_stats: GPU names and VRAM, RAM, and what that does not report
    (GPU load and temperature, CPU, disk) None with a reason, never 0. Same snapshot shape as Telemetry's;
    `source` says which: "relay_node" or "system_stats"."""

    NODE_RETRY_S = 30.0   # after the node did not answer, /system_stats alone until then

    def __init__(self, comfy, interval: float = 3.0, history_s: float = HISTORY_S):
        self.comfy, self.interval, self.history_s = comfy, interval, history_s
        self._snapshot: dict | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._node_retry_at = 0.0
        self._history: dict[int, dict[str, deque]] = {}
        self._outage = _Outage(getattr(comfy, "base", None) or "remote ComfyUI")

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def snapshot(self) -> dict | None:
        return self._snapshot

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a sampler that dies would freeze the host's gauges
                log.exception("remote telemetry sample failed")
            gevent.sleep(self.interval)

    def sample(self) -> dict:
        if time.monotonic() >= self._node_retry_at:
            snap = self._from_node()
            if snap is not None:
                self._snapshot = snap
                return snap
        now = utcnow_iso()
        try:
            stats = self.comfy.system_stats()
        except Exception as exc:  # noqa: BLE001 - unreachable or unreadable: every gauge says why
            stats, why = None, self._outage.failed(exc)
        else:
            self._outage.ok()
        if stats is not None:
            devices, gpu_reason = _comfy_devices(stats)
            system = stats.get("system") if isinstance(stats.get("system"), dict) else {}
            total, free = _num(system.get("ram_total")), _num(system.get("ram_free"))
            used = total - free if total is not None and free is not None else None
            ram = {"used": None if used is None else int(used), "total": None if total is None else int(total),
                   "percent": _pct(used, total), "limited_by": None,
                   "reason": None if used is not None else NOT_REPORTED}
        else:
            devices, gpu_reason = [], why
            ram = {"used": None, "total": None, "percent": None, "limited_by": None, "reason": why}
        self._snapshot = {
            "sampled_at": now, "interval_s": self.interval, "source": "system_stats",
            "cpu": {"percent": None, "count": None, "reason": NOT_REPORTED if stats is not None else why},
            "ram": ram,
            "disk": {"path": None, "of": None, "used": None, "total": None, "percent": None,
                     "reason": NOT_REPORTED if stats is not None else why},
            "gpu": {"source": "comfyui" if stats is not None else None, "stale": False, "stale_since": None,
                    "sampled_at": now, "reason": gpu_reason,
                    "devices": [{**d, "history": {"load": [], "memory": []}} for d in devices]},
            "thresholds": dict(THRESHOLDS)}
        return self._snapshot

    def _from_node(self) -> dict | None:
        """The relay node's snapshot with this sampler's GPU history; None (fall back) when it does not answer
        or is still warming up."""
        try:
            snap = self.comfy.relay_telemetry()
        except Exception:  # noqa: BLE001 - no node (404), an old ComfyUI, unreachable: /system_stats then
            self._node_retry_at = time.monotonic() + self.NODE_RETRY_S
            return None
        if not snap.get("sampled_at"):
            return None
        gpu = snap["gpu"]
        devices = [d for d in gpu.get("devices") or [] if isinstance(d, dict)]
        now, seen = time.time(), set()
        for d in devices:
            index = d.get("index") if isinstance(d.get("index"), int) else len(seen)
            seen.add(index)
            hist = remember_gpu(self._history, index, d, now, self.history_s)
            d["history"] = {key: [list(p) for p in points] for key, points in hist.items()}
        for index in set(self._history) - seen:
            del self._history[index]
        return {**snap, "interval_s": self.interval, "source": "relay_node",
                "gpu": {**gpu, "devices": devices}, "thresholds": snap.get("thresholds") or dict(THRESHOLDS)}
