"""The fleet: one Host per configured ComfyUI around the shared job store, event bus, hub and telemetry; routes
submissions and cancels to a host, and answers the views over all hosts (what the web layer calls)."""
from __future__ import annotations

import logging
import os
import time

import gevent

from . import capability
from .config import Config
from .hub import Hub
from .jobs import EventBus, JobStore, StoreError, prune_step
from .metrics import Metrics
from .service import Host, SubmitError, _load_client_id
from .telemetry import RemoteTelemetry, Telemetry
from .timeutil import iso_from_epoch, utcnow_iso
from .workflows import load_workflows

log = logging.getLogger(__name__)

PRUNE_FIRST_S, PRUNE_EVERY_S = 30.0, 600.0
LEASE_POLL_S = 2.0        # a standby monitor asks for the lease this often
LEASE_CHECK_S = 1.0       # the active one checks it still holds it (a database restart ends the session)


class Fleet:
    def __init__(self, config: Config):
        self.config = config
        specs = config.comfy_hosts   # SystemExit for a bad COMFYUI_URL list, before anything is opened
        self.store = JobStore(config.database)  # creates the data dir, or says clearly why it can't
        self.standby = False   # another monitor holds this database's lease: we wait, watching nothing
        try:
            # SQLite: a second monitor on the data dir is refused (DataDirBusy); PostgreSQL: it waits.
            if not self.store.try_lease():
                self.standby = True
                log.warning("another monitor is active on %s; this one is on standby until it exits",
                            self.store.path)
            # The first host keeps the single-host `client_id`: upgrading to a fleet loses no messages.
            client_ids = [_load_client_id(self.store, None if index == 0 else spec.name)
                          for index, spec in enumerate(specs)]
            if not self.standby:
                self.store.assign_host(specs[0].name)
        except BaseException as exc:
            self.store.close()
            if isinstance(exc, OSError):  # a full disk, or a lock/client-id path that is not a file
                raise StoreError(f"cannot use data directory {os.path.abspath(config.data_dir)}: "
                                 f"{exc.strerror or exc} ({exc.filename or 'writing'}); set MONITOR_DATA_DIR "
                                 "(or --data-dir) to a writable directory") from exc
            raise
        self.hub = Hub(tick=config.hub_tick)
        self.events = EventBus(self.store, on_event=self.hub.publish_event)
        self.hub.events_since = self.events.since  # a reconnecting page replays what it missed
        self.workflows = load_workflows(config.workflows_dir)
        self.hosts: list[Host] = [Host(config, spec, store=self.store, events=self.events, fleet=self,
                                       client_id=client_id, tag_events=len(specs) > 1)
                                  for spec, client_id in zip(specs, client_ids)]
        self.by_name = {host.name: host for host in self.hosts}
        # This machine's sampler describes the host on loopback (or the only host, as before the fleet).
        local = next((h for h in self.hosts if h.spec.is_loopback), None)
        if local is None and len(self.hosts) == 1:
            local = self.hosts[0]
        self.telemetry = Telemetry(config, comfy=local.comfy if local else None, interval=config.telemetry_interval)
        # Every other host: what its ComfyUI's /system_stats says (this machine's sampler does not describe it).
        self.remote_telemetry = {host.name: RemoteTelemetry(host.comfy, interval=max(2.0, config.telemetry_interval))
                                 for host in self.hosts if host is not local}
        self.metrics = Metrics(self)
        self._fleet_greenlets: list[gevent.Greenlet] = []

    def __getattr__(self, name):
        # One host: the fleet is that host (listener, tracker, comfy, client_id, reconcile...), as before.
        if name.startswith("__") or name in ("hosts", "_fleet_greenlets", "remote_telemetry", "metrics", "standby"):
            raise AttributeError(name)
        return getattr(self.hosts[0], name)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.hub.start()
        self.telemetry.start()
        for sampler in self.remote_telemetry.values():
            sampler.start()
        self.metrics.start()
        if self.standby:
            self._fleet_greenlets.append(gevent.spawn(self._await_lease))
        else:
            self._start_active()

    def _start_active(self) -> None:
        """What only the monitor holding the lease runs: the hosts' listeners and reconcilers, retention."""
        for host in self.hosts:
            host.start()
        self._fleet_greenlets.append(gevent.spawn(self._prune_loop))
        if self.store.shared:
            self._fleet_greenlets.append(gevent.spawn(self._watch_lease))

    def _await_lease(self) -> None:
        while not self.store.try_lease():
            gevent.sleep(LEASE_POLL_S)
        log.warning("this monitor took over the database lease on %s; starting", self.store.path)
        self.store.assign_host(self.hosts[0].name)
        for host in self.hosts:
            host.started_at = time.time()
        self.standby = False
        self._start_active()

    def _watch_lease(self) -> None:
        """A database restart ends the lease's session: take the lease again. If another monitor took it
        meanwhile, stop watching ComfyUI and wait (two listeners must never share a client id)."""
        while True:
            gevent.sleep(LEASE_CHECK_S)
            if self.store.lease_held():
                continue
            if self.store.try_lease() or not self.store.available:
                continue   # re-taken, or the server is still down: nobody else can hold it either
            try:
                self.store.get("lease-probe", graph=False)   # reachable now?
            except Exception:  # noqa: BLE001
                continue
            if self.store.try_lease():
                continue
            log.error("another monitor took the database lease on %s; this one goes to standby", self.store.path)
            for host in self.hosts:
                host.stop()
            self.standby = True
            for g in list(self._fleet_greenlets):
                if g is not gevent.getcurrent():
                    g.kill(block=False)
            self._fleet_greenlets = [gevent.spawn(self._await_lease)]
            return

    def stop(self) -> None:
        for g in self._fleet_greenlets:
            g.kill(block=False)
        self._fleet_greenlets.clear()
        self.metrics.stop()
        for host in self.hosts:
            host.stop()
        for sampler in self.remote_telemetry.values():
            sampler.stop()
        self.telemetry.stop()
        self.hub.stop()

    def close(self) -> None:
        """Stop, then release the database and its lease (a new Fleet may then take it)."""
        self.stop()
        self.store.close()

    # --- hosts --------------------------------------------------------------------------------
    def busy(self) -> bool:
        return any(host.busy for host in self.hosts)

    def host_of(self, job: dict) -> Host | None:
        return self.by_name.get(job.get("host") or self.hosts[0].name)

    def hosts_state(self) -> list[dict]:
        out = []
        for host in self.hosts:
            st = host.listener.status()
            counts = host.active_counts()
            error = host.answer_error if st["connected"] else (st["last_error"] or "not connected yet")
            out.append({
                "name": host.name, "url": host.spec.base, "connected": st["connected"],
                "since": iso_from_epoch(st["connected_since"]),
                "queue": {"running": counts["running"], "pending": counts["queued"]},
                "features": host.comfy.features.as_dict(),
                "telemetry": self.telemetry_of(host),
                "error": error,
            })
        return out

    def telemetry_of(self, host: Host) -> dict | None:
        """The host's gauges: this machine's sampler for the local host, its /system_stats reading otherwise."""
        remote = self.remote_telemetry.get(host.name)
        return remote.snapshot() if remote is not None else self.telemetry.snapshot()

    # --- views (read cached state only) --------------------------------------------------------
    def active_jobs(self) -> list[dict]:
        """Running first, then queued in run order (the store's order for active jobs)."""
        return [build() for _, _, build in self.active_versions()]

    def active_versions(self, offset: int = 0, limit: int | None = None) -> list[tuple[str, tuple, object]]:
        """The active jobs in queue order as (id, version, build): `build()` makes the same dict as
        active_jobs() has for that job, and `version` changes whenever that dict would. Lets the views keep
        one rendering per job instead of re-rendering a long queue on every poll. Queue positions count
        1..N over each host's queued jobs in run order (no gaps, no duplicates); `offset`/`limit` page a
        long queue (positions stay those of the whole queue)."""
        generation = self.store.generation
        positions: dict[str | None, int] = {}
        end = None if limit is None else offset + limit
        out = []
        for index, job in enumerate(self.store.active(graph=False)):
            position = None
            if job["status"] == "queued":
                position = positions[job.get("host")] = positions.get(job.get("host"), 0) + 1
            if index < offset:
                continue
            if end is not None and index >= end:
                break
            host = self.host_of(job)
            pid = job["id"]
            version = (generation, host.tracker.stamp(pid) if host else None, position)
            out.append((pid, version, lambda job=job, position=position, host=host:
                        self._decorate(host, job, position, brief=True)))
        return out

    def active_counts(self) -> dict:
        jobs = self.store.active(graph=False)
        running = sum(1 for j in jobs if j["status"] == "running")
        return {"total": len(jobs), "running": running, "queued": len(jobs) - running}

    def current_job(self) -> dict | None:
        """The running job (the first by queue order if we believe in several)."""
        for job in self.store.active(graph=False):
            if job["status"] == "running":
                return self._decorate(self.host_of(job), job, brief=True)
        return None

    def get_job(self, job_id: str, graph: bool = True) -> dict | None:
        job = self.store.get(job_id, graph=graph)
        if not job:
            return None
        host = self.host_of(job)
        position = host._position(job_id) if host is not None and job["status"] == "queued" else None
        return self._decorate(host, job, position)

    def history(self, limit: int = 50, status: str | None = None) -> list[dict]:
        return [self._decorate(self.host_of(j), j, brief=True)
                for j in self.store.history(limit=limit, status=status, graph=False)]

    @staticmethod
    def _decorate(host: Host | None, job: dict, position: int | None = None, brief: bool = False) -> dict:
        if host is not None:
            return host._decorate(job, position, brief=brief)
        job = dict(job, progress=None, queue_position=None)   # its host is no longer configured
        if brief:
            job.pop("graph", None)
        return job

    def comfy_state(self) -> dict:
        """One host: its state, as before. Several: connected when any is, with each host's state."""
        states = [host.comfy_state() for host in self.hosts]
        if len(states) == 1:
            return states[0]
        first = next((s for s in states if s["connected"]), states[0])
        return {**first, "connected": any(s["connected"] for s in states),
                "hosts": [{"name": host.name, **state} for host, state in zip(self.hosts, states)]}

    def hello(self) -> dict:
        return {"type": "hello", "server": {"name": "comfyui-monitor", "time": utcnow_iso()},
                "comfy": self.comfy_state(),
                "jobs": [s for host in self.hosts for s in host.tracker.active() if s],
                "last_seq": self.events.last_seq()}

    # --- jobs in and out ------------------------------------------------------------------------
    def submit(self, prompt: dict, *, host: str | None = None, **fields) -> dict:
        """Submit to `host`, or (none named) to the connected host with the least work ahead."""
        routed = None
        if self.standby:
            raise SubmitError(503, "this monitor is on standby (another one is active on the same database)")
        if host is not None:
            target = self.by_name.get(host)
            if target is None:
                raise SubmitError(400, f"unknown host {host!r}; configured hosts: "
                                       f"{', '.join(h.name for h in self.hosts)}")
            if not target.listener.connected:
                raise SubmitError(503, f"host {host!r} is not connected to ComfyUI ({target.spec.base}); "
                                       "try again when it is, or submit without a host")
        elif len(self.hosts) == 1:
            target = self.hosts[0]   # it says itself when it is not connected
        else:
            target, routed = self._route(prompt)
        return target.submit(prompt, routed=routed, **fields)

    def _route(self, prompt: dict) -> tuple[Host, str]:
        """Among connected hosts that can run the graph (capability.py; a host whose /object_info is unknown
        is left to ComfyUI's own validation), the one with the fewest running + queued jobs, ties by name."""
        connected = [h for h in self.hosts if h.listener.connected]
        if not connected:
            raise SubmitError(503, "no ComfyUI host is connected ("
                                   f"{', '.join(h.name for h in self.hosts)}); try again when one shows LIVE")
        able, refusals = [], []
        for host in connected:
            missing = capability.lacks(prompt, host.object_info) if host.object_info is not None else []
            if missing:
                refusals.append(f"{host.name}: {capability.describe(missing)}")
            else:
                able.append(host)
        if not able:
            raise SubmitError(400, "no connected host can run this graph: " + " | ".join(refusals))
        load = {h.name: h.active_counts()["total"] for h in able}
        target = min(able, key=lambda h: (load[h.name], h.name))
        loads = ", ".join(f"{h.name} {load[h.name]} job{'s' if load[h.name] != 1 else ''}"
                          for h in sorted(able, key=lambda h: h.name))
        return target, f"least wait ({loads})"

    def cancel(self, job_id: str) -> dict:
        """Cancel on the job's own host."""
        job = self.store.get(job_id, graph=False)
        if job is None:
            raise KeyError(job_id)
        host = self.host_of(job)
        if host is None:
            raise SubmitError(409, f"job {job_id} ran on host {job.get('host')!r}, which is no longer configured",
                              job=self._decorate(None, job))
        return host.cancel(job_id)

    # --- retention ------------------------------------------------------------------------------
    def _prune_loop(self) -> None:
        gevent.sleep(PRUNE_FIRST_S)
        while True:
            try:
                self.prune()
            except Exception:
                log.exception("pruning old jobs failed")
            gevent.sleep(PRUNE_EVERY_S)

    def prune(self) -> dict:
        """Retention (MONITOR_KEEP_DAYS, MONITOR_KEEP_JOBS, MONITOR_KEEP_GRAPHS_MB), in small batches
        that let requests in between; off the request path."""
        cfg, total = self.config, {"deleted": 0, "graphs_dropped": 0, "pages_freed": 0}
        while True:
            step = prune_step(self.store, keep_days=cfg.keep_days, keep_jobs=cfg.keep_jobs,
                              graph_budget=int(cfg.keep_graphs_mb * 1024 * 1024))
            for key, value in step.items():
                total[key] += value
            if not any(step.values()):
                break
            gevent.sleep(0.01)
        if any(total.values()):
            log.info("retention: %d old jobs deleted, %d graphs dropped, %d MB returned to the file system",
                     total["deleted"], total["graphs_dropped"], total["pages_freed"] * 4 // 1024)
        return total
