"""Prometheus metrics for GET /metrics: counters the hosts bump as jobs finish, and a collector that reads the
fleet's cached state at scrape time. A scrape never touches the database or ComfyUI: queue depths and the
database's health come from a snapshot a background greenlet refreshes every few seconds."""
from __future__ import annotations

import logging
import time

import gevent
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .timeutil import epoch_from_iso

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFRESH_S = 2.0
PREFIX = "comfymon"
# Seconds: a preview render to an hour-long video job.
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))
class Metrics:
    """One per Fleet. `job_finished()` is called by a Host when a job reaches its final state."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_finished = Counter(f"{PREFIX}_jobs_finished", "Jobs that reached a final state",
                                     ["host", "status"], registry=self.registry)
        self.job_duration = Histogram(f"{PREFIX}_job_duration_seconds",
                                      "Run time of finished jobs (ComfyUI's start to the final message)",
                                      ["host", "status"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(self))
        self.snapshot: dict = {"queue": {}, "db_up": None, "at": None}
        self._greenlet: gevent.Greenlet | None = None

    def job_finished(self, host: str, job: dict) -> None:
        status = job.get("status") or "unknown"
        self.jobs_finished.labels(host, status).inc()
        started, finished = epoch_from_iso(job.get("started_at")), epoch_from_iso(job.get("finished_at"))
        if started is not None and finished is not None and finished >= started:
            self.job_duration.labels(host, status).observe(finished - started)

    # --- the cached part of the state --------------------------------------------------------------
    def start(self) -> None:
        self.refresh()
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            gevent.sleep(REFRESH_S)
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a failed refresh leaves the last snapshot, never kills the loop
                log.exception("metrics refresh failed")

    def refresh(self) -> dict:
        """Queue depth per host and whether the database answers, read once here so scrapes need not."""
        try:
            queue = self.fleet.counts_by_host()
            db_up = self.fleet.store.available   # False while PostgreSQL is down (the counts are the cached ones)
        except Exception:  # noqa: BLE001 - the database is down: say so, keep the last queue figures
            queue, db_up = self.snapshot["queue"], False
        for host in self.fleet.hosts:
            queue.setdefault(host.name, {"running": 0, "queued": 0})
        self.snapshot = {"queue": queue, "db_up": db_up, "at": time.time()}
        return self.snapshot

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Gauges and counters read from live objects at scrape time (listeners, hub, telemetry, snapshot)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []   # families vary with the fleet; nothing to pre-register

    def collect(self):
        fleet, snap = self.metrics.fleet, self.metrics.snapshot
        p = PREFIX
        queue = GaugeMetricFamily(f"{p}_queue_jobs", "Active jobs per host and state", labels=["host", "state"])
        for host, counts in sorted(snap["queue"].items()):
            for state in ("running", "queued"):
                queue.add_metric([host, state], counts[state])
        yield queue

        connected = GaugeMetricFamily(f"{p}_comfy_connected", "1 while the host's ComfyUI WebSocket is open",
                                      labels=["host"])
        reconnects = CounterMetricFamily(f"{p}_comfy_reconnects", "ComfyUI WebSocket connections after the first",
                                         labels=["host"])
        frames = CounterMetricFamily(f"{p}_comfy_frames", "ComfyUI WebSocket messages ingested, by kind",
                                     labels=["host", "kind"])
        bad = CounterMetricFamily(f"{p}_comfy_bad_frames", "Malformed ComfyUI messages ignored, by kind",
                                  labels=["host", "kind"])
        previews_dropped = CounterMetricFamily(f"{p}_comfy_previews_dropped", "Previews over the size limit",
                                               labels=["host"])
        for host in fleet.hosts:
            listener = host.listener
            connected.add_metric([host.name], 1 if listener.connected else 0)
            reconnects.add_metric([host.name], max(0, listener.connections - 1))
            for kind, n in sorted(listener.frame_kinds.items()):
                frames.add_metric([host.name, kind], n)
            for kind, n in sorted(listener.bad_frames.items()):
                bad.add_metric([host.name, kind], n)
            previews_dropped.add_metric([host.name], listener.previews_dropped)
        yield from (connected, reconnects, frames, bad, previews_dropped)

        hub = fleet.hub.stats()
        yield GaugeMetricFamily(f"{p}_browser_clients", "Browsers connected to /api/run/ws", value=hub["clients"])
        yield CounterMetricFamily(f"{p}_hub_events_dropped", "Events a slow browser missed (outbox full)",
                                  value=hub["events_dropped"])
        yield CounterMetricFamily(f"{p}_hub_clients_dropped", "Browsers disconnected for falling behind",
                                  value=hub["clients_dropped"])

        if snap["db_up"] is not None:
            yield GaugeMetricFamily(f"{p}_database_up", "1 when the job database answered the last check",
                                    value=1 if snap["db_up"] else 0)
        yield from _telemetry_families(fleet)


def _telemetry_families(fleet):
    """Per host and GPU; a value the host cannot report is left out (no series), never exported as 0."""
    p = PREFIX
    gpu_labels = ["host", "gpu", "name"]
    util = GaugeMetricFamily(f"{p}_gpu_utilization_percent", "GPU utilization", labels=gpu_labels)
    used = GaugeMetricFamily(f"{p}_gpu_memory_used_bytes", "GPU memory in use", labels=gpu_labels)
    total = GaugeMetricFamily(f"{p}_gpu_memory_total_bytes", "GPU memory", labels=gpu_labels)
    temp = GaugeMetricFamily(f"{p}_gpu_temperature_celsius", "GPU temperature", labels=gpu_labels)
    cpu = GaugeMetricFamily(f"{p}_cpu_percent", "CPU utilization of the host", labels=["host"])
    ram_used = GaugeMetricFamily(f"{p}_ram_used_bytes", "RAM in use on the host", labels=["host"])
    ram_total = GaugeMetricFamily(f"{p}_ram_total_bytes", "RAM of the host", labels=["host"])
    for host in fleet.hosts:
        snap = fleet.telemetry_of(host)
        if not snap:
            continue
        name = host.name
        if (snap.get("cpu") or {}).get("percent") is not None:
            cpu.add_metric([name], snap["cpu"]["percent"])
        ram = snap.get("ram") or {}
        if ram.get("used") is not None:
            ram_used.add_metric([name], ram["used"])
        if ram.get("total") is not None:
            ram_total.add_metric([name], ram["total"])
        for device in (snap.get("gpu") or {}).get("devices") or []:
            labels = [name, str(device.get("index")), str(device.get("name") or "")]
            for family, key in ((util, "load_percent"), (used, "memory_used"), (total, "memory_total"),
                                (temp, "temperature_c")):
                if device.get(key) is not None:
                    family.add_metric(labels, device[key])
    yield from (util, used, total, temp, cpu, ram_used, ram_total)
