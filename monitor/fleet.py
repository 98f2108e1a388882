"""The fleet: one Host per configured ComfyUI around the shared job store, event bus, hub and telemetry; routes
submissions and cancels to a host, and answers the views over all hosts (what the web layer calls)."""
from __future__ import annotations

import logging
import os
import time

import gevent

from . import capability, reconciler
from . import graph as graphs
from .config import Config
from .estimate import Estimator
from .hub import Hub
from .jobs import FINISHED, EventBus, JobStore, StoreError, count_active, prune_step
from .metrics import Metrics
from .service import Host, SubmitError, _load_client_id
from .telemetry import RemoteTelemetry, Telemetry
from .timeutil import epoch_from_iso, iso_from_epoch, utcnow_iso
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
        self.estimator = Estimator()   # learned node durations, shared by the hosts (each looks up its own)
        self.estimator.add(self.store.timings())
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
        self.services: list = []   # more start()/stop() owners run with the fleet (web/push.py's Pusher)

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
        for service in self.services:
            service.start()
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
        for service in self.services:
            service.stop()
        for host in self.hosts:
            host.stop()
        for sampler in self.remote_telemetry.values():
            sampler.stop()
        self.telemetry.stop()
        self.hub.stop()

    def close(self) -> None:
        """Stop, then release the database and its lease (a new Fleet may then take it)."""
        self.stop()
        self.store.close(grace=self.config.shutdown_grace_s)

    # --- hosts --------------------------------------------------------------------------------
    def busy(self) -> bool:
        return any(host.busy for host in self.hosts)

    def host_of(self, job: dict) -> Host | None:
        return self.by_name.get(job.get("host") or self.hosts[0].name)

    def hosts_state(self) -> list[dict]:
        out = []
        by_host = self.counts_by_host()
        for host in self.hosts:
            st = host.listener.status()
            counts = by_host.get(host.name) or count_active([])
            # A short sentence for people; the exception text is in the log (listener, service).
            if st["connected"]:
                error = "ComfyUI's /queue answer is unreadable (details in the log)" if host.answer_error else None
            else:
                error = "ComfyUI unreachable" if st["last_error"] else "not connected yet"
            out.append({
                "name": host.name, "url": host.spec.base, "connected": st["connected"],
                "since": iso_from_epoch(st["connected_since"]),
                "queue": {"running": counts["running"], "pending": counts["queued"]},
                "features": host.comfy.features.as_dict(), "relay": host.relay,
                "telemetry": self.telemetry_of(host),
                "error": error,
            })
        return out

    def telemetry_of(self, host: Host) -> dict | None:
        """The host's gauges: this machine's sampler for the local host, its /system_stats reading otherwise."""
        remote = self.remote_telemetry.get(host.name)
        return remote.snapshot() if remote is not None else self.telemetry.snapshot()

    # --- the page's fleet view (read cached state only) ---------------------------------------
    def host_views(self) -> list[dict]:
        """The page's row per host: hosts_state() plus "down_since" for a disconnected host (when its
        connection was lost, or when the monitor began trying if it never had one), else None."""
        out = []
        for host, state in zip(self.hosts, self.hosts_state()):
            st = host.listener.status()
            down = None if state["connected"] else iso_from_epoch(st.get("disconnected_at") or st.get("started_at"))
            out.append(dict(state, down_since=down))
        return out

    def running_jobs(self) -> list[dict]:
        """Every running job, decorated as current_job() is, in configured host order: the page's Current
        Job panels, which keep their places while jobs on other hosts start and end."""
        order = {host.name: index for index, host in enumerate(self.hosts)}
        running = [job for job in self.store.active(graph=False, shared=True) if job["status"] == "running"]
        running.sort(key=lambda job: (order.get(job.get("host"), len(order)), job.get("started_at") or ""))
        return [self._decorate(self.host_of(job), job, brief=True) for job in running]

    def recent_outcomes(self, within_s: float, now: float | None = None) -> list[dict]:
        """Each host's newest finished job if it ended less than `within_s` ago and nothing runs there since:
        what the Current Job panel shows for a few seconds after a job ends (its outcome). Host order."""
        now = time.time() if now is None else now
        busy = {job.get("host") for job in self.store.active(graph=False, shared=True) if job["status"] == "running"}
        newest: dict = {}
        for job in self.store.history(limit=2 * len(self.hosts) + 2, graph=False):
            ended = epoch_from_iso(job.get("finished_at")) if job.get("finished_at") else None
            if ended is None or now - ended > within_s or job.get("host") in busy or job.get("host") in newest:
                continue
            newest[job.get("host")] = self._decorate(self.host_of(job), job, brief=True)
        order = {host.name: index for index, host in enumerate(self.hosts)}
        return sorted(newest.values(), key=lambda job: order.get(job.get("host"), len(order)))

    def card_versions(self, limit: int | None = None) -> list[tuple[str, tuple, object]]:
        """The page's cards, as active_versions() gives them. One host: its run order. Several (each ComfyUI
        numbers its own queue): running jobs first in host order, then every host's queued jobs by the time
        they were queued (ties keep run order); queue positions stay per host."""
        versions = self.active_versions()
        if len(self.hosts) > 1:
            jobs = {job["id"]: job for job in self.store.active(graph=False, shared=True)}
            order = {host.name: index for index, host in enumerate(self.hosts)}

            def key(item):
                job = jobs.get(item[0]) or {}
                if job.get("status") == "running":
                    return (0, order.get(job.get("host"), len(order)))
                return (1, epoch_from_iso(job.get("queued_at")) or 0.0)
            versions.sort(key=key)
        return versions if limit is None else versions[:limit]

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
        for index, job in enumerate(self.store.active(graph=False, shared=True)):   # build() copies
            position = None
            if job["status"] == "queued":
                position = positions[job.get("host")] = positions.get(job.get("host"), 0) + 1
            if index < offset:
                continue
            if end is not None and index >= end:
                break
            host = self.host_of(job)
            pid = job["id"]
            version = (generation, host.tracker.stamp(pid) if host else None, position,
                       host.estimate_stamp(pid) if host else None)
            out.append((pid, version, lambda job=job, position=position, host=host:
                        self._decorate(host, job, position, brief=True)))
        return out

    def active_key(self) -> tuple:
        """Changes whenever active_versions() would give another version for a job that is not volatile
        (Tracker.volatile: a running job, whose rendering moves with the clock), or another list: a new or
        ended job, a position, a progress step of a queued job, an estimate. A cache of a whole page is
        valid while it holds, except for its volatile jobs (see web/fragments.py PageCache)."""
        return (self.store.generation,) + tuple((host.tracker.revision, host.estimates_revision())
                                                for host in self.hosts)

    def volatile_ids(self) -> set[str]:
        """The jobs whose renderings move with the clock (running), on every host."""
        return {pid for host in self.hosts for pid in host.tracker.volatile_ids()}

    def active_counts(self) -> dict:
        return count_active(self.store.active(graph=False, shared=True))

    def counts_by_host(self) -> dict[str, dict]:
        """{host name: count_active(...)} from one read of the active list (a job without a host is the
        first host's; hosts no longer configured keep their names)."""
        jobs: dict[str, list] = {}
        for job in self.store.active(graph=False, shared=True):
            jobs.setdefault(job.get("host") or self.hosts[0].name, []).append(job)
        return {name: count_active(group) for name, group in jobs.items()}

    def current_job(self) -> dict | None:
        """The running job (the first by queue order if we believe in several) of a configured host."""
        for job in self.store.active(graph=False, shared=True):
            if job["status"] == "running" and self.host_of(job) is not None:
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

    def history_page(self, limit: int = 50, status: str | None = None,
                     before: str | None = None) -> tuple[list[dict], str | None]:
        """A page of finished jobs, newest first, and the next page's cursor (JobStore.history_page)."""
        jobs, cursor = self.store.history_page(limit=limit, status=status, before=before)
        return [self._decorate(self.host_of(j), j, brief=True) for j in jobs], cursor

    def history_versions(self, limit: int = 50, status: str | None = None,
                         before: str | None = None) -> tuple[list[tuple], str | None]:
        """As history_page, as (id, version, build) for per-row caches of renderings (see active_versions)."""
        versions, cursor = self.store.history_versions(limit=limit, status=status, before=before)

        def build(job_id):
            job = self.store.get(job_id, graph=False) or {"id": job_id, "status": "cancelled"}
            return self._decorate(self.host_of(job), job, brief=True)
        return [(job_id, version, lambda job_id=job_id: build(job_id)) for job_id, version in versions], cursor

    @staticmethod
    def _decorate(host: Host | None, job: dict, position: int | None = None, brief: bool = False) -> dict:
        if host is not None:
            return host._decorate(job, position, brief=brief)
        # Its host is no longer configured: kept as it was last known, marked, with nothing live about it.
        job = dict(job, progress=None, queue_position=None, host_configured=False)
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
                "jobs": [s for host in self.hosts for s in host.active_states()],
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
        is left to ComfyUI's own validation) and whose /queue answer is readable, the one with the least work
        ahead (_work_ahead), ties by name."""
        connected = [h for h in self.hosts if h.listener.connected]
        if not connected:
            raise SubmitError(503, "no ComfyUI host is connected ("
                                   f"{', '.join(h.name for h in self.hosts)}); try again when one shows LIVE")
        able, refusals = [], []
        for host in connected:
            missing = capability.lacks(prompt, host.object_info) if host.object_info is not None else []
            if missing:
                refusals.append(f"{host.name}: {capability.describe(missing)}")
            elif host.answer_error:
                # Its queue cannot be read, so it looks empty: it would draw every job.
                refusals.append(f"{host.name}: its queue cannot be read ({host.answer_error})")
            else:
                able.append(host)
        if not able:
            raise SubmitError(400, "no connected host can run this graph: " + " | ".join(refusals))
        ahead, shown = self._work_ahead(able)
        target = min(able, key=lambda h: (ahead[h.name], h.name))
        return target, "least wait (" + ", ".join(shown[h.name] for h in sorted(able, key=lambda h: h.name)) + ")"

    def _work_ahead(self, hosts: list[Host]) -> tuple[dict[str, float], dict[str, str]]:
        """Each host's work ahead of a new job, and how the routed reason shows it: the estimated wait in
        seconds when every host can estimate one (Host.estimated_wait_s), else running + queued job counts
        (seconds and counts are never compared with each other)."""
        waits = {h.name: h.estimated_wait_s() for h in hosts}
        if all(w is not None for w in waits.values()):
            return waits, {name: f"{name} {w:.0f} s" for name, w in waits.items()}
        counts = self.counts_by_host()
        totals = {h.name: counts[h.name]["total"] if h.name in counts else 0 for h in hosts}
        return totals, {name: f"{name} {n} job{'s' if n != 1 else ''}" for name, n in totals.items()}

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

    def requeue(self, job_id: str, *, new_seed: bool = False, host: str | None = None) -> dict:
        """Submit a finished job's graph again (routed like any submission unless `host` is named); the new
        record says `requeued_from`. The graph is the record's, else (an external job, or one whose graph
        retention dropped) its host's /history entry; 409 when neither has it or the job is still active."""
        job = self.store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        if job["status"] not in FINISHED:
            raise SubmitError(409, f"job {job_id} is still {job['status']}; only a finished job can be run again")
        graph = job.get("graph")
        if not isinstance(graph, dict) or not graph:
            graph = self._graph_from_history(job)
        if not isinstance(graph, dict) or not graph:
            raise SubmitError(409, f"the graph of job {job_id} is not known (not recorded, and its host's "
                                   "/history no longer has it); it cannot be run again")
        if new_seed:
            graph = graphs.with_new_seeds(graph)
        new = self.submit(graph, host=host, workflow_id=job.get("workflow_id"),
                          workflow_name=job.get("workflow_name"), params=job.get("params") or None)
        self.store.update(new["id"], requeued_from=job_id)
        self.events.emit("job.requeued", f"Job {new['id'][:8]} queued again from {job_id[:8]}",
                         data={"id": new["id"], "requeued_from": job_id})
        return self.get_job(new["id"], graph=False)

    def _graph_from_history(self, job: dict) -> dict | None:
        host = self.host_of(job)
        if host is None:
            return None
        reached, entry = reconciler.fetch_history(host.comfy, job["id"])
        prompt = entry.get("prompt") if isinstance(entry, dict) else None
        if isinstance(prompt, list) and len(prompt) >= 3 and isinstance(prompt[2], dict):
            return prompt[2]
        return None

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
