"""One ComfyUI host's session: listener → tracker → the shared job store and hub, its reconciler, submit and
cancel, and the views of its own jobs. The fleet (fleet.py) owns what the hosts share."""
from __future__ import annotations

import json
import logging
import os
import time
import uuid

import gevent
from gevent.lock import RLock
from gevent.pool import Group

from . import estimate as estimates
from . import graph as graphs
from . import markers, reconciler
from .comfy import ComfyClient, ComfyRejected, ComfyUnavailable
from .config import ComfyHost, Config
from .jobs import FINISHED as TERMINAL  # the four end states and stalled: nothing more will happen
from .jobs import EventBus, JobStore, RawJSON
from .listener import Listener
from .timeutil import epoch_from_iso, iso_from_epoch, iso_from_epoch_ms, utcnow_iso
from .tracker import Tracker

log = logging.getLogger(__name__)

MB = 1024 * 1024
EVENT_SEVERITY = {"completed": "info", "failed": "error", "interrupted": "warning",
                  "cancelled": "warning", "stalled": "warning"}
LINGER_S = 30.0        # finished prompts stay in the tracker this long (late previews, the final frame)
STALLED_KEEP_S = 600.0  # a stalled job is watched this long in case ComfyUI reports it after all
MISSES_BEFORE_LOST = 2  # reconciles in a row that must not find a job before it is declared stalled
ADOPT_PER_PASS = 200    # new jobs learned from ComfyUI per reconcile: a hostile server cannot flood the store
SWEEP_ITEMS = 16        # newest /history entries looked at when a prompt we never saw has finished
STALLED_RECHECK_S = 15.0
STALLED_ASKS_PER_PASS = 10
OUTPUTS_FLUSH_S = 1.0   # node outputs of running jobs reach the record at most this late
HISTORY_TRIES = 3       # a superseded prompt's /history entry is written before the next starts; retry briefly
WEIGHT_FLOOR_S = 0.01  # a node learned as instant still moves the bar a little when it finishes
ESTIMATES_TTL_S = 0.25  # the host's queue estimates are recomputed at most this often (and on every store write)
ESTIMATES_PUSHED = 100  # queued jobs whose changed "starts in" is pushed to browsers while a job runs


class SubmitError(Exception):
    """A submission ComfyUI refused or could not take; `status` is the HTTP code for our API."""

    def __init__(self, status: int, message: str, details=None, job=None):
        super().__init__(message)
        self.status, self.details, self.job = status, details, job


class Host:
    """Everything about one ComfyUI server; the store, event bus and hub are the fleet's, shared."""

    def __init__(self, config: Config, spec: ComfyHost, *, store: JobStore, events: EventBus, fleet,
                 client_id: str, tag_events: bool = False):
        self.config = config
        self.spec = spec
        self.name = spec.name
        self.fleet = fleet
        self.store = store
        self.events = _HostEvents(events, spec.name) if tag_events else events
        self.hub = fleet.hub
        self.client_id = client_id
        self.tracker = Tracker(instant_types=set(graphs.DEFAULT_INSTANT_TYPES) | set(config.instant_nodes),
                               admit=self._admit)
        self._adopt_budget = ADOPT_PER_PASS
        self._adopt_refused = 0
        self._queue_remaining: int | None = None   # from ComfyUI's last `status`
        self._sweep_due = False
        self.comfy = ComfyClient(spec.base, auth=spec.auth, timeout=config.comfy_timeout)
        self.listener = Listener(
            spec.ws_url, self.client_id, auth=spec.auth,
            on_text=self._on_text, on_binary=self._on_binary,
            on_connect=self._on_connect, on_disconnect=self._on_disconnect,
            backoff_min=config.reconnect_min, backoff_max=config.reconnect_max,
            max_message=int(config.max_message_mb * MB), max_preview=int(config.max_preview_mb * MB),
            handshake_timeout=config.comfy_timeout)
        self._lock = RLock()             # one writer at a time: listener, reconciler, submit, cancel
        self._reconciling = RLock()      # one reconcile at a time
        self._posting: set[str] = set()  # submitted, POST /prompt not answered yet
        self._missing: dict[str, int] = {}
        self._cancel_requested: set[str] = set()
        self._graphless: set[str] = set()  # known only from a message so far: /queue has the graph
        self._finished: dict[str, float] = {}
        self._outputs_dirty: set[str] = set()    # running jobs whose record lacks their newest outputs
        self._seen_pending: dict[str, int] = {}   # prompt id → connection epoch it was last seen pending in
        self._stalled: dict[str, float] = {}      # recently stalled → when its /history was last asked
        self._disconnects = 0          # bumped on every lost connection
        self._reconciled_epoch = 0     # the _disconnects value the last full reconcile accounted for
        self._wake = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._tasks = Group()   # one-off work (after a connect, object_info, /history fixes): killed by stop()
        self._was_busy = False
        self.started_at = time.time()
        self.reconciled_at: float | None = None
        self.object_info: dict | None = None   # several hosts: this one's node types, for routing (None: unknown)
        self.relay = False             # subscribed to the relay node on the current connection
        self.relay_version: str | None = None
        self._relay_noted: bool | None = None   # what was last logged about the node (logged on change)
        self._own_estimates: dict[str, tuple[int, tuple]] = {}   # queued prompt → (estimator version, estimate)
        self._estimates: tuple | None = None     # (key, monotonic time, {id: estimate}, work ahead)
        self._estimates_seen: tuple = (None, None, 0)   # (estimates tuple, their quantized stamps, revision)
        self._pushed_estimates: dict[str, tuple] = {}   # queued prompt → quantized estimate last pushed

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._reattach()
        self.listener.start()
        self._greenlets.append(gevent.spawn(self._reconcile_loop))
        self._greenlets.append(gevent.spawn(self._flush_loop))

    def stop(self) -> None:
        for g in self._greenlets:
            g.kill(block=False)
        self._greenlets.clear()
        self._tasks.kill(block=False)
        self.listener.stop()

    def own_active(self, graph: bool = True) -> list[dict]:
        """This host's queued and running jobs, in the store's run order."""
        return [job for job in self.store.active(graph=graph) if job.get("host") == self.name]

    def _reattach(self) -> None:
        """After our own restart: put every job we believed active back into the tracker. The
        reconciler then asks ComfyUI what became of each; nothing is declared stalled blindly."""
        for job in self.own_active():
            # What we learned before going down: ComfyUI's start time and the nodes it said were cached.
            self.tracker.register(job["id"], job.get("graph"), job.get("outputs_to_execute"),
                                  number=job.get("number"), client_id=job.get("client_id"),
                                  status=job["status"], started=epoch_from_iso(job.get("started_at")),
                                  cached=job.get("cached_nodes"))
            if not job.get("graph"):
                self._graphless.add(job["id"])

    # --- views' side (read cached state only) --------------------------------------------------
    @staticmethod
    def _with_positions(active: list[dict]):
        """Queue positions follow the store's run order (ComfyUI's numbers; a job still being posted is
        last): 1..N over the queued jobs, so the list never shows a gap, a duplicate or a stale number."""
        position = 0
        for job in active:
            if job["status"] == "queued":
                position += 1
                yield job, position
            else:
                yield job, None

    def _position(self, job_id: str) -> int | None:
        for job, position in self._with_positions(self.own_active(graph=False)):
            if job["id"] == job_id:
                return position
        return None

    def get_job(self, job_id: str, graph: bool = True) -> dict | None:
        job = self.store.get(job_id, graph=graph)
        if not job:
            return None
        return self._decorate(job, self._position(job_id) if job["status"] == "queued" else None)

    def comfy_state(self) -> dict:
        st = self.listener.status()
        now = time.time()
        return {
            "connected": st["connected"],
            "url": self.spec.base,
            "since": iso_from_epoch(st["connected_since"]),
            "last_message_at": iso_from_epoch(st["last_message_at"]),
            "listener_age_s": round(now - st["started_at"], 1) if st["started_at"] else None,
            "last_error": st["last_error"],
            "bad_frames": st["bad_frames"],
            "previews_dropped": st.get("previews_dropped", 0),
            "dropped_connections": st.get("dropped_connections", 0),
            "reconciled_at": iso_from_epoch(self.reconciled_at),
            "features": self.comfy.features.as_dict(),
            "relay": self.relay,
        }

    def _decorate(self, job: dict, position: int | None = None, brief: bool = False) -> dict:
        job = dict(job)
        state = self.tracker.state(job["id"]) if job["status"] not in TERMINAL else None
        job["progress"] = state
        job["queue_position"] = position if job["status"] == "queued" else None
        if job["status"] in ("queued", "running"):
            job.update(self.estimates().get(job["id"]) or _unknown_estimate(job["status"]))
        if brief:
            job.pop("graph", None)
        return job

    # --- learned estimates ----------------------------------------------------------------------
    def job_estimate(self, pid: str) -> tuple[float | None, str]:
        """(seconds left for the whole job, basis) of an active job; a queued one's is its own run time."""
        estimator = getattr(self.fleet, "estimator", None)
        plan = self.tracker.plan(pid)
        if estimator is None or plan is None:
            return None, "graph unknown"
        if plan["status"] == "running":
            return estimator.remaining(plan["graph"], self.name, plan["pending"], cached_known=plan["cached_known"],
                                       current=plan["current"], current_s=plan["current_s"],
                                       step_eta_s=plan["step_eta_s"])
        known = self._own_estimates.get(pid)
        if known is None or known[0] != estimator.version:
            known = self._own_estimates[pid] = (estimator.version, estimator.remaining(
                plan["graph"], self.name, plan["pending"], cached_known=plan["cached_known"]))
        return known[1]

    def estimates(self) -> dict[str, dict]:
        """This host's active jobs → {"eta_s", "eta_basis"} and, for queued ones, "starts_in_s" (the work
        ahead of it here) and "done_in_s"; null where anything ahead, or the job itself, is unknown."""
        return self._queue_estimates()[2]

    def estimated_wait_s(self) -> float | None:
        """Seconds of work ahead on this host (running + queued), None when unknown; 0 when idle."""
        return self._queue_estimates()[3]

    def _queue_estimates(self) -> tuple:
        estimator = getattr(self.fleet, "estimator", None)
        key = (self.store.generation, estimator.version if estimator else None, self.tracker.revision)
        now = time.monotonic()
        cached = self._estimates
        # Only a running job's estimate (and the starts of those behind it) moves with the clock: with none
        # running, the estimates hold while the key does (a long idle queue is not re-estimated per poll).
        if cached is not None and cached[0] == key and (now - cached[1] < ESTIMATES_TTL_S
                                                        or not self.tracker.volatile_ids()):
            return cached
        out: dict[str, dict] = {}
        ahead: float | None = 0.0
        active = self.own_active(graph=False)
        for job in active:
            eta, basis = self.job_estimate(job["id"])
            entry = {"eta_s": eta, "eta_basis": basis}
            if job["status"] == "queued":
                entry["starts_in_s"] = None if ahead is None else round(ahead, 1)
                entry["done_in_s"] = None if ahead is None or eta is None else round(ahead + eta, 1)
            ahead = None if ahead is None or eta is None else ahead + eta
            out[job["id"]] = entry
        ids = set(out)
        for pid in [p for p in self._own_estimates if p not in ids]:
            del self._own_estimates[pid]
        self._estimates = (key, now, out, None if ahead is None else round(ahead, 1))
        return self._estimates

    def estimates_revision(self) -> int:
        """Changes whenever estimate_stamp() of any of this host's jobs would (or a job joins or leaves)."""
        estimates = self._queue_estimates()
        seen, stamps, revision = self._estimates_seen
        if estimates is not seen:
            now = [(pid, _quantized(entry)) for pid, entry in estimates[2].items()]
            if now != stamps:
                revision += 1
            self._estimates_seen = (estimates, now, revision)
        return revision

    def estimate_stamp(self, pid: str):
        """Changes when a job's estimate changes visibly (quantized): part of a rendering's version."""
        return _quantized(self.estimates().get(pid))

    def active_states(self) -> list[dict]:
        """The tracker's active states, each with its "estimate" (the hello message's jobs)."""
        return [self._with_estimate(state["prompt_id"], state) for state in self.tracker.active() if state]

    def _with_estimate(self, pid: str, state: dict) -> dict:
        if state.get("status") in ("queued", "running"):
            state["estimate"] = self.estimates().get(pid) or _unknown_estimate(state["status"])
        return state

    def _weigh(self, pid: str) -> None:
        """Give the tracker each node's learned expected time, so the percent measures work done; any node
        unknown leaves the effective node count as the basis."""
        estimator = getattr(self.fleet, "estimator", None)
        nodes = self.tracker.nodes_to_run(pid) if estimator is not None and self.name in estimator.hosts else None
        plan = self.tracker.plan(pid) if nodes else None
        if estimator is None or plan is None or self.name not in estimator.hosts:
            return   # nothing learned on this host yet: the node count, without hashing the graph
        weights, graph, memo = {}, plan["graph"], {}
        sig = estimates.signature(graph)
        for node_id in nodes:
            seconds = estimator.node(graph, node_id, self.name, sig, True, memo)[0]
            if seconds is None:
                self.tracker.set_weights(pid, None)
                return
            weights[node_id] = max(seconds, WEIGHT_FLOOR_S)
        self.tracker.set_weights(pid, weights)

    def _record_timings(self, pid: str, graph) -> None:
        """A completed run seen start to end: its node timings become history for estimates."""
        estimator = getattr(self.fleet, "estimator", None)
        timings = self.tracker.timings(pid)
        if estimator is None or not isinstance(graph, dict) or not timings or not timings["complete"]:
            return
        try:
            rows = estimates.timing_rows(graph, timings, self.name)
            self.store.record_timings(pid, rows)
            estimator.add(rows, pid)
        except Exception:   # an estimate is a nicety: never let it break settling a job
            log.exception("recording node timings of %s failed", pid)

    # --- jobs in ----------------------------------------------------------------------------
    def submit(self, prompt: dict, *, workflow_id: str | None = None, workflow_name: str | None = None,
               params: dict | None = None, seeds: list | None = None, job_folder: str | None = None,
               prompt_id: str | None = None, routed: str | None = None) -> dict:
        if not self.store.available:
            raise SubmitError(503, "the job database is not answering; nothing was submitted, try again shortly")
        if not self.listener.connected:
            # Without our socket open, ComfyUI would send this job's messages to nobody.
            raise SubmitError(503, "ComfyUI is not connected; try again when the monitor shows LIVE")
        prompt_id = prompt_id or str(uuid.uuid4())
        outputs = graphs.output_nodes_guess(prompt)
        graph_json = json.dumps(prompt, separators=(",", ":"))   # once, for the record and for ComfyUI
        output_dir = (os.path.join(self.config.comfyui_output_dir, job_folder)
                      if self.config.comfyui_output_dir and job_folder else None)
        job = {
            "id": prompt_id, "host": self.name, "source": "local", "status": "queued",
            "workflow_id": workflow_id,
            "workflow_name": workflow_name or graphs.workflow_name(prompt, {}),
            "params": params or {}, "seeds": seeds if seeds is not None else graphs.seeds(prompt),
            "prompt_excerpt": graphs.prompt_excerpt(prompt), "job_folder": job_folder,
            "output_dir": output_dir, "client_id": self.client_id, "graph": RawJSON(graph_json),
            "outputs_to_execute": outputs, "input_image": _input_image(prompt), "routed": routed,
        }
        with self._lock:
            # Recorded first, so no message can arrive for a job we don't know.
            job = self.store.create(job)
            self.tracker.register(prompt_id, prompt, outputs, client_id=self.client_id)
            self._posting.add(prompt_id)
            self.events.emit("job.queued", f"Job {prompt_id[:8]} queued", data={"id": prompt_id})
        body = {"client_id": self.client_id, "prompt_id": prompt_id}
        if self.comfy.features.jobs_api:
            # Newer servers honour a per-prompt preview method even when started with `none`.
            body["extra_data"] = {"preview_method": "auto"}
        body = RawJSON('{"prompt":' + graph_json + "," + json.dumps(body)[1:])
        try:
            answer = self.comfy.post_prompt(body)
        except ComfyRejected as exc:
            message, details = _rejection_message(exc, prompt)
            self._settle(prompt_id, "failed", error={"message": message, "node_errors": details})
            self._tasks.spawn(self.refresh_object_info)
            raise SubmitError(400 if exc.status < 500 else 502, message, details, self.get_job(prompt_id, graph=False))
        except ComfyUnavailable as exc:
            # Refused or timed out: it may or may not be queued. The reconciler decides from /queue.
            log.warning("POST /prompt for %s failed: %s", prompt_id, exc)
            raise SubmitError(502, f"ComfyUI did not answer: {exc}", job=self.get_job(prompt_id, graph=False))
        finally:
            self._posting.discard(prompt_id)
        fields = {}
        if isinstance(answer.get("number"), (int, float)):
            fields["number"] = float(answer["number"])
        if answer.get("node_errors"):
            # Partially valid: ComfyUI runs only the valid outputs. Keep what it said.
            fields["error"] = {"message": "some outputs failed validation and will not run",
                               "node_errors": answer["node_errors"], "partial": True}
        if fields:
            with self._lock:
                self.store.update(prompt_id, **fields)
        self._wake.set()
        return self.get_job(prompt_id, graph=False)   # the caller has the graph: no megabytes echoed back

    def cancel(self, job_id: str) -> dict:
        """Interrupt a running job or remove a queued one. Only what ComfyUI accepted leaves a trace:
        a refused or failed request changes nothing, now or later."""
        job = self.store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        if job["status"] in TERMINAL:
            raise SubmitError(409, f"job is already {job['status']}", job=self._decorate(job))
        view = reconciler.fetch_queue(self.comfy)
        if view is None:
            raise SubmitError(502, "ComfyUI is not reachable; nothing was cancelled")
        running = {e[1] for e in view.running}
        pending = {e[1] for e in view.pending}
        if job_id not in running and job_id not in pending:
            # Not queued any more: it has just finished (its /history says how), or ComfyUI lost it.
            if self._settle_from_history(job_id):
                settled = self.get_job(job_id)
                raise SubmitError(409, f"job is already {settled['status']}", job=settled)
            if job_id in self._posting:
                raise SubmitError(409, "the job is still being submitted to ComfyUI; try again in a moment")
            self._settle(job_id, "cancelled", reason="ComfyUI no longer had it queued when cancel was asked")
            return self.get_job(job_id)
        try:
            if self.comfy.features.cancel_api:
                self.comfy.cancel_job(job_id)
            elif job_id in running:
                self.comfy.interrupt(job_id)
            else:
                self.comfy.delete_pending([job_id])
        except (ComfyRejected, ComfyUnavailable) as exc:
            raise SubmitError(502, f"ComfyUI refused the cancel; nothing was cancelled: {exc}")
        self._cancel_requested.add(job_id)   # ComfyUI took the request
        if job_id in running:
            # It ends `interrupted` when ComfyUI confirms (execution_interrupted or /history).
            self.events.emit("job.cancel_requested", f"Interrupt sent for job {job_id[:8]}",
                             data={"id": job_id})
        else:
            after = reconciler.fetch_queue(self.comfy)
            if after is not None and job_id in {e[1] for e in after.running}:
                # It started between our two looks: interrupt it instead.
                try:
                    self.comfy.interrupt(job_id)
                except (ComfyRejected, ComfyUnavailable) as exc:
                    log.warning("interrupting %s after it started failed: %s", job_id, exc)
            elif after is not None and job_id not in after.ids:
                self._settle(job_id, "cancelled")
        self._wake.set()
        return self.get_job(job_id)

    # --- listener callbacks (run in the listener greenlet) --------------------------------------
    def _on_connect(self) -> None:
        self.events.emit("comfy.connected", f"Connected to ComfyUI at {self.spec.base}",
                         data={"host": self.name})
        self.hub.publish({"type": "comfy", **self.fleet.comfy_state()})
        self._tasks.spawn(self._after_connect)

    def _after_connect(self) -> None:
        self.comfy.probe_features()
        self.subscribe_relay()
        self.tracker.on_reconnect()
        self.reconcile()
        self.refresh_object_info()

    def subscribe_relay(self) -> bool:
        """Probe GET /monitor/relay and subscribe this connection's client id (on every connect: a subscription
        ends with its socket). With the node, jobs queued by other clients get their progress and previews."""
        epoch = self._disconnects
        try:
            info = self.comfy.relay_info()
            if info is not None:
                self.comfy.relay_subscribe(self.client_id)
        except (ComfyRejected, ComfyUnavailable) as exc:
            info = None
            log.warning("%s: the relay node did not take our subscription: %s", self.name, exc)
        # A connection lost meanwhile has its own probe coming: this one says nothing about it.
        self.relay = info is not None and epoch == self._disconnects and self.listener.connected
        self.relay_version = info.get("version") if info else None
        if self._relay_noted is not self.relay:
            self._relay_noted = self.relay
            if self.relay:
                log.info("%s: relay node %s found; subscribed: jobs queued elsewhere show live progress",
                         self.name, self.relay_version)
            else:
                log.info("%s: no relay node in this ComfyUI: jobs queued elsewhere show start and end only "
                         "(python -m monitor install-node PATH installs it)", self.name)
        self.hub.publish({"type": "comfy", **self.fleet.comfy_state()})
        return self.relay

    def refresh_object_info(self) -> None:
        """Cached for the fleet's routing, on every (re)connect and after a submission failed validation (a
        model may have been added or removed). One host routes nothing: it is never asked."""
        if len(self.fleet.hosts) < 2:
            return
        try:
            self.object_info = self.comfy.get_object_info()
        except (ComfyRejected, ComfyUnavailable) as exc:
            log.info("%s: GET /object_info failed (%s); routing cannot check this host's nodes", self.name, exc)
            self.object_info = None

    def _on_disconnect(self, reason: str) -> None:
        self._disconnects += 1
        self.relay = False
        self.tracker.on_disconnect()
        self.events.emit("comfy.disconnected", f"Lost the ComfyUI connection: {reason}",
                         severity="warning", data={"host": self.name})
        self.hub.publish({"type": "comfy", **self.fleet.comfy_state()})

    def _on_text(self, msg_type: str, data: dict) -> None:
        if msg_type == "status":
            status = data.get("status") if isinstance(data, dict) else None   # hostile shapes: no count
            info = status.get("exec_info") if isinstance(status, dict) else None
            remaining = info.get("queue_remaining") if isinstance(info, dict) else None
            if isinstance(remaining, int) and self._queue_remaining is not None and remaining < self._queue_remaining:
                self._sweep_due = True   # a prompt finished: was it one we never saw?
            self._queue_remaining = remaining if isinstance(remaining, int) else None
            self._wake.set()  # the queue changed: someone may have queued a prompt
            return
        with self._lock:
            transitions = self.tracker.handle(msg_type, data)
            self._apply(transitions)
        self._push_progress()

    def _on_binary(self, frame) -> None:
        if frame.event not in (1, 4):
            return
        preview = self.tracker.handle_preview(frame)
        if preview is not None:
            self.hub.publish_preview(preview.prompt_id, preview.node_id, preview.mime, preview.image)

    # --- applying tracker transitions -----------------------------------------------------------
    def _apply(self, transitions) -> None:
        for tr in transitions:
            pid, kind, data = tr.prompt_id, tr.kind, tr.data or {}
            status = self.store.status(pid)
            if status is None:
                status = self._adopt_unknown(pid)["status"]
            if kind == "started":
                self._mark_running(pid, data.get("started_at"))
                self._weigh(pid)
            elif kind == "revived":
                self._revive(pid, "ComfyUI sent its progress after all")
            elif kind == "cached":
                # Stored when it arrives: a monitor restarted mid-run still knows which nodes will run.
                self.store.update(pid, cached_nodes=list(data.get("nodes") or []))
                self._weigh(pid)
            elif kind == "node_output":
                # The tracker holds them while the job runs; the record gets them in batches (and in
                # full when the job ends), so a graph with thousands of outputs costs no more per message.
                self._outputs_dirty.add(pid)
            elif kind == "hint_finished":
                if data.get("reason") == "superseded" and status == "running":
                    # Another prompt started, so this one has ended: settle it before the next is
                    # marked running (readers never see two running jobs on one ComfyUI).
                    self._settle_superseded(pid)
                self._wake.set()  # ended or superseded without a terminal message: /history decides
            elif kind == "blocked":
                self.events.emit("job.blocked", f"Job {pid[:8]}: a node was blocked: "
                                 f"{(data.get('error') or {}).get('message', '')}", severity="warning",
                                 data={"id": pid})
            elif kind in ("completed", "failed", "interrupted"):
                self._settle(pid, kind, error=data.get("error"), outputs=data.get("outputs"),
                             finished_at=data.get("finished_at"), from_tracker=True)

    def _settle_superseded(self, pid: str) -> None:
        for attempt in range(HISTORY_TRIES):
            if self._settle_from_history(pid) is not False:   # settled, or ComfyUI unreachable
                return
            gevent.sleep(0.05 * (attempt + 1))

    def _admit(self, pid: str) -> bool:
        """The tracker asks before it follows a prompt it has not seen: one we know, or within budget."""
        return self.store.status(pid) is not None or self._take_budget()

    def _take_budget(self) -> bool:
        if self._adopt_budget > 0:
            self._adopt_budget -= 1
            return True
        self._adopt_refused += 1
        return False

    def _adopt_unknown(self, pid: str) -> dict:
        """A message for a prompt we have never seen (a script posting without client id, or one
        queued while we were down): record it now; the reconciler fills in its graph."""
        self._wake.set()
        self._graphless.add(pid)
        return self.store.create({"id": pid, "host": self.name, "source": "external", "status": "queued"})

    def _mark_running(self, pid: str, started_at: str | None = None) -> None:
        """queued → running, once, whoever sees it first (the tracker's message or /queue): the store
        checks the current status in the same transaction, so a stale copy cannot repeat it."""
        job = self.store.transition(pid, {"queued"}, status="running", started_at=started_at or utcnow_iso())
        if job is None:
            if started_at:  # already running: ComfyUI's own start time may still be earlier than ours
                self.store.transition(pid, {"running"}, started_at=started_at)
            return
        if job.get("job_folder"):
            markers.write_marker(self.config.comfyui_output_dir, job["job_folder"], pid, job["started_at"])
        self.events.emit("job.started", f"Job {pid[:8]} started", data={"id": pid})

    def _revive(self, pid: str, why: str, status: str = "queued") -> dict | None:
        """A job we declared stalled that ComfyUI reports after all takes that state, and says why."""
        with self._lock:
            old = self.store.get(pid)
            if old is None or old["status"] != "stalled":
                return None
            job = self.store.transition(pid, {"stalled"}, status=status,
                                        status_reason=f"{why} (it had been marked stalled: {old['status_reason']})")
            if job is None:
                return None
            job = self.store.get(pid)
            self._stalled.pop(pid, None)
            self.tracker.register(pid, job.get("graph"), job.get("outputs_to_execute"), number=job.get("number"),
                                  client_id=job.get("client_id"), status=status,
                                  started=epoch_from_iso(job.get("started_at")), cached=job.get("cached_nodes"))
            self.events.emit("job.recovered", f"Job {pid[:8]} is known to ComfyUI again: {why}",
                             severity="warning", data={"id": pid, "status": status})
            return job

    def _settle_from_history(self, pid: str) -> bool | None:
        """Settle a job from its /history entry: True if settled, False if ComfyUI has no entry,
        None if ComfyUI could not be asked."""
        reached, entry = reconciler.fetch_history(self.comfy, pid)
        if not reached:
            return None
        if entry is None:
            return False
        status, fields = reconciler.settlement_from_history(entry)
        self._settle(pid, status, error=fields.get("error"), outputs=fields.get("outputs"),
                     finished_at=iso_from_epoch_ms(fields.get("finished_ms")),
                     started_at=iso_from_epoch_ms(fields.get("started_ms")), history=fields)
        return True

    def _correct_from_history(self, pid: str, delays=(0.2, 0.5, 1.0, 2.0, 4.0)) -> None:
        """Start time, cached nodes and node counts of a finished job, from its /history entry."""
        for delay in delays:
            gevent.sleep(delay)
            reached, entry = reconciler.fetch_history(self.comfy, pid)
            if entry is None:
                continue
            status, fields = reconciler.settlement_from_history(entry)
            with self._lock:
                job = self.store.get(pid)
                if job is None or job["status"] not in TERMINAL:
                    return
                graph = job.get("graph") or fields.get("graph")
                total, done = self.tracker.node_counts(graph, job.get("outputs_to_execute"), fields.get("cached"),
                                                       job["status"], fields.get("executed"))
                update = {"started_at": iso_from_epoch_ms(fields.get("started_ms"))}
                if fields.get("cached") is not None:
                    update["cached_nodes"] = fields["cached"]
                if total is not None:
                    update.update(node_total=total, node_done=done)
                self.store.update(pid, **{k: v for k, v in update.items() if v is not None})
            return

    def _settle(self, pid: str, status: str, *, error=None, outputs=None, finished_at=None,
                reason: str | None = None, started_at=None, from_tracker: bool = False,
                history: dict | None = None) -> None:
        with self._lock:
            job = self.store.get(pid)
            if job is None or (job["status"] in TERMINAL and job["status"] != "stalled"):
                return
            if job["status"] == "stalled" and status == "stalled":
                return
            if job["status"] == "stalled" and not from_tracker:
                # Re-open the tracker's frozen stall, so that the real end is counted from scratch.
                self.tracker.register(pid, job.get("graph"), job.get("outputs_to_execute"), status="running",
                                      started=epoch_from_iso(job.get("started_at")),
                                      cached=job.get("cached_nodes"))
            if history is not None:
                started = history.get("started_ms")
                self.tracker.apply_history(pid, graph=history.get("graph"), cached=history.get("cached"),
                                           executed=history.get("executed"),
                                           started=started / 1000.0 if started is not None else None)
            if not from_tracker:
                self.tracker.finish(pid, status, error=error, outputs=outputs)
            if not outputs:   # lost or cancelled: keep what the run produced before
                outputs = self.tracker.outputs(pid)
            fields: dict = {"status": status}
            if error is not None:
                fields["error"] = error
            if outputs:
                fields["outputs"] = outputs
            if finished_at:
                fields["finished_at"] = finished_at
            if started_at:
                fields["started_at"] = started_at  # the store keeps the earlier of two start times
            if reason:
                fields["status_reason"] = reason
            elif job["status"] == "stalled":
                fields["status_reason"] = f"ComfyUI reported how it ended after it had been marked stalled " \
                                          f"({job['status_reason']})"
            if history is not None and history.get("cached") is not None:
                fields["cached_nodes"] = history["cached"]
            state = self.tracker.state(pid)
            if state:  # the frozen state: node counts as the run ended (None where not knowable)
                fields["node_total"] = state.get("nodes_total")
                fields["node_done"] = state.get("nodes_done") if state.get("nodes_total") is not None else None
                if state.get("nodes_uncertain") and status != "stalled" and history is None:
                    # A run we joined late ended by its message: /history has its start time and cached
                    # nodes (written moments after that message), so the record can still be made exact.
                    self._tasks.spawn(self._correct_from_history, pid)
            if status == "completed":
                self._record_timings(pid, job.get("graph"))
            job = self.store.update(pid, **fields)
            metrics = getattr(self.fleet, "metrics", None)
            if metrics is not None:
                metrics.job_finished(self.name, job)
            if status == "completed" and job.get("job_folder"):
                markers.remove_marker(self.config.comfyui_output_dir, job["job_folder"])
            self._finished[pid] = time.time()
            self._missing.pop(pid, None)
            self._cancel_requested.discard(pid)
            self._graphless.discard(pid)
            self._seen_pending.pop(pid, None)
            self._outputs_dirty.discard(pid)   # the settled record has them all
            if status == "stalled":
                self._stalled[pid] = time.time()
            else:
                self._stalled.pop(pid, None)
            message = f"Job {pid[:8]} {status}"
            if status == "failed" and isinstance(error, dict) and error.get("message"):
                where = error.get("node_title") or error.get("node_type")
                message += f"{' in ' + where if where else ''}: {error['message']}"
            if reason:
                message += f": {reason}"
            self.events.emit(f"job.{status}", message, severity=EVENT_SEVERITY[status],
                             data={"id": pid, "status": status})
        self._push_progress()

    def _push_progress(self) -> None:
        for pid in self.tracker.pop_dirty():
            state = self.tracker.state(pid)
            if state is not None:
                self.hub.set_progress(pid, self._with_estimate(pid, state))
        self._push_estimates()
        busy = self.busy
        if self._was_busy and not busy and not self.fleet.busy():
            self.hub.set_progress(None, {"prompt_id": None, "status": "idle"})
        self._was_busy = busy

    def _push_estimates(self) -> None:
        """Queued jobs' "starts in" moves with the running job: push the first ones when it changes visibly."""
        pushed, sent = {}, 0
        for pid, entry in self.estimates().items():
            if "starts_in_s" not in entry or sent >= ESTIMATES_PUSHED:
                continue
            sent += 1
            stamp = pushed[pid] = _quantized(entry)
            if self._pushed_estimates.get(pid) != stamp:
                state = self.tracker.state(pid)
                if state is not None and state.get("status") == "queued":
                    state["estimate"] = entry
                    self.hub.set_progress(pid, state)
        self._pushed_estimates = pushed

    @property
    def answer_error(self) -> str | None:
        """Why ComfyUI's /queue answer was unreadable (until it answers properly again), or None."""
        problem = self.comfy.unreadable("GET", "/queue")
        return f"GET /queue answered {problem}" if problem else None

    @property
    def busy(self) -> bool:
        return self.tracker.running_id() is not None

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(OUTPUTS_FLUSH_S)
            try:
                self.flush_outputs()
            except Exception:
                log.exception("writing node outputs failed")

    def flush_outputs(self) -> None:
        """Write the node outputs that arrived since the last flush, one update per job."""
        dirty, self._outputs_dirty = self._outputs_dirty, set()
        for pid in dirty:
            outputs = self.tracker.outputs(pid)
            if outputs is not None:
                with self._lock:
                    self.store.transition(pid, {"queued", "running"}, outputs=outputs)
            gevent.sleep(0)

    # --- reconciliation ------------------------------------------------------------------------
    def _reconcile_loop(self) -> None:
        while True:
            self._wake.wait(timeout=self.config.reconcile_interval)
            self._wake.clear()
            took = 0.0
            if self.listener.connected:
                started = time.monotonic()
                try:
                    self.reconcile()
                except Exception:
                    log.exception("reconcile failed")
                took = time.monotonic() - started
            self._forget_finished()
            # Debounce bursts of status messages; a queue of big graphs (tens of MB from /queue) is read at
            # most a fifth of the time, however often ComfyUI says the queue changed.
            gevent.sleep(min(max(0.3, 4 * took), 5.0))

    def reconcile(self) -> None:
        # One at a time: the one after a (re)connect and the periodic one would otherwise both count
        # a miss for the same absent job.
        with self._reconciling:
            self._reconcile()

    def _reconcile(self) -> None:
        # Read before asking ComfyUI: a connection lost while we ask must not count as accounted for.
        epoch = self._disconnects
        # Jobs and submissions as they were *before* asking: one posted meanwhile is missing from this view
        # without being lost (and right after a reconnect it would be declared lost at once). Only used to
        # find missing jobs: every transition below re-checks the current state.
        candidates = self.own_active(graph=False)
        posting = set(self._posting)
        view = reconciler.fetch_queue(self.comfy)
        if view is None:
            return   # ComfyUI could not be asked, or answered something unreadable: nothing is known
        running_ids = {e[1] for e in view.running}
        for entry in view.pending:
            self._seen_pending[entry[1]] = epoch
        if self._adopt_refused:
            log.warning("ComfyUI reported %d more unknown prompts than the %d adopted per pass; the rest "
                        "wait for the next pass", self._adopt_refused, ADOPT_PER_PASS)
        self._adopt_budget, self._adopt_refused = ADOPT_PER_PASS, 0
        # Jobs that left the queue are settled first, so that the one ComfyUI runs now is never
        # marked running while its predecessor still reads running.
        restarted = epoch != self._reconciled_epoch
        complete = self._settle_missing(candidates, view, posting, epoch, restarted)
        with self._lock:
            known = {j["id"]: j for j in candidates}
            for index, entry in enumerate(view.running + view.pending):
                self._adopt_or_refresh(entry, entry[1] in running_ids, known.get(entry[1]))
                if index % 50 == 49:
                    gevent.sleep(0)   # a long queue: let requests in (views read without this lock)
        self._recheck_stalled(view)
        if self._sweep_due:
            self._sweep_due = False
            self._sweep_history()
        if complete and self._disconnects == epoch:
            self._reconciled_epoch = epoch
        self.reconciled_at = time.time()
        self._push_progress()

    def _settle_missing(self, candidates, view, posting, epoch, restarted) -> bool:
        """Settle the jobs ComfyUI's queue no longer lists, from /history or as lost. False if some
        could not be asked about (they are asked again next time)."""
        complete = True
        for index, job in enumerate(candidates):
            if index % 50 == 49:
                gevent.sleep(0)
            pid = job["id"]
            if pid in view.ids or pid in posting or pid in self._posting:
                self._missing.pop(pid, None)
                continue
            settled = self._settle_from_history(pid)
            if settled is None:
                complete = False
                continue
            if settled:
                continue
            job = self.store.get(pid)
            if job is None or job["status"] not in ("queued", "running"):
                self._missing.pop(pid, None)   # settled (by its terminal message) while we asked
                continue
            if pid in self._cancel_requested and job["status"] == "queued":
                self._settle(pid, "cancelled")
                continue
            misses = self._missing[pid] = self._missing.get(pid, 0) + 1
            if restarted:
                self._settle(pid, "stalled", reason=reconciler.RESTART_REASON)
            elif misses >= MISSES_BEFORE_LOST:
                if (job["status"] == "queued" and self._seen_pending.get(pid) == epoch
                        and self._disconnects == epoch):
                    # Seen pending, then gone from queue and history while we stayed connected:
                    # someone deleted it (ComfyUI's UI, another client). That is a cancel, not a loss.
                    self._settle(pid, "cancelled", reason=reconciler.REMOVED_REASON)
                else:
                    self._settle(pid, "stalled", reason=reconciler.LOST_REASON)
        return complete

    def _recheck_stalled(self, view) -> None:
        """A job declared stalled that ComfyUI has in its history after all takes that state (one listed
        in the queue again was revived by _adopt_or_refresh). Each is asked about every STALLED_RECHECK_S
        for STALLED_KEEP_S, at most STALLED_ASKS_PER_PASS per reconcile."""
        now, asks = time.time(), 0
        for pid, asked in sorted(self._stalled.items(), key=lambda kv: kv[1]):
            if asks >= STALLED_ASKS_PER_PASS:
                break
            if pid in view.ids or now - asked < STALLED_RECHECK_S:
                continue
            if now - self._finished.get(pid, 0.0) > STALLED_KEEP_S:
                self._stalled.pop(pid, None)
                continue
            self._stalled[pid] = now
            asks += 1
            self._settle_from_history(pid)

    def _adopt_or_refresh(self, entry: list, running: bool, brief: dict | None = None) -> None:
        """`brief`: the job as the active list has it (no graph), so that a long queue of jobs we
        already know costs no database read and no graph parsing per reconcile."""
        pid, graph, extra, outputs = entry[1], entry[2], entry[3], entry[4]
        extra = extra if isinstance(extra, dict) else {}
        outputs = [str(o) for o in outputs] if isinstance(outputs, list) else None
        if brief is not None and pid not in self._graphless:
            job = brief
        else:
            job = self.store.get(pid)
        if job is None and not self._take_budget():
            return
        if job is not None and job["status"] == "stalled":
            job = self._revive(pid, "ComfyUI lists it in its queue again") or job
        if job is not None and job["status"] not in ("queued", "running"):
            return   # settled meanwhile; /queue lags a finished prompt only by moments
        if job is None or pid in self._graphless or (brief is None and not job.get("graph")):
            fields, created = self._fields_from_entry(entry)
            mine = fields["source"] == "local"
            if job is None:
                job = self.store.create({"id": pid, "host": self.name, "status": "queued",
                                         **({"queued_at": created} if created else {}), **fields})
                self.events.emit("job.queued", f"{'External job' if not mine else 'Job'} {pid[:8]} queued",
                                 data={"id": pid, "source": fields["source"]})
            else:
                job = self.store.update(pid, **fields)
            self.tracker.register(pid, graph, outputs, number=fields["number"],
                                  client_id=extra.get("client_id"), status=job["status"])
            self._graphless.discard(pid)
        elif outputs and set(job.get("outputs_to_execute") or ()) != set(outputs):   # ComfyUI's order varies
            job = self.store.update(pid, outputs_to_execute=outputs)
            self.tracker.register(pid, graph, outputs, number=job.get("number"),
                                  client_id=job.get("client_id"), status=job["status"])
        if running and job["status"] == "queued":
            now_running = self.tracker.running_id()
            if now_running is not None and now_running != pid:
                # Another prompt started after this /queue answer was read: this one has ended since.
                # Marking it running would show two running jobs; its /history settles it next time.
                self._wake.set()
                return
            # Foreign prompts send us no execution_start: /queue is how we learn they started. `job` may
            # be a stale copy: _mark_running applies the transition only if it is still queued.
            self.tracker.register(pid, graph, outputs, number=job.get("number"),
                                  client_id=job.get("client_id"), status="running")
            self._mark_running(pid)

    def _fields_from_entry(self, entry: list) -> tuple[dict, str | None]:
        """A job's fields from a /queue entry (or a /history entry's `prompt`), and its queue time if known."""
        number, graph, extra, outputs = entry[0], entry[2], entry[3], entry[4]
        extra = extra if isinstance(extra, dict) else {}
        created = iso_from_epoch_ms(extra.get("create_time")) if isinstance(
            extra.get("create_time"), (int, float)) else None
        return {
            "source": "local" if extra.get("client_id") == self.client_id else "external",
            "workflow_name": graphs.workflow_name(graph, extra),
            "prompt_excerpt": graphs.prompt_excerpt(graph), "seeds": graphs.seeds(graph),
            "number": float(number) if isinstance(number, (int, float)) else None,
            "client_id": extra.get("client_id"), "graph": graph,
            "outputs_to_execute": [str(o) for o in outputs] if isinstance(outputs, list) else None,
            "input_image": _input_image(graph),
        }, created

    def _sweep_history(self) -> None:
        """Prompts that ComfyUI ran entirely between two of our looks at /queue (a fast job queued from its
        own UI) are only in its /history: after something finished, look at the newest entry, and if we
        never saw it, at the newest few, and record the ones that ran while we watched."""
        try:
            recent = self.comfy.get_history_recent(1)
            if all(self.store.status(pid) is not None for pid in recent):
                return
            recent = self.comfy.get_history_recent(SWEEP_ITEMS)
        except (ComfyRejected, ComfyUnavailable) as exc:
            log.debug("history sweep: %s", exc)
            return
        for pid, entry in recent.items():
            prompt = entry.get("prompt")
            if self.store.status(pid) is not None or not (
                    isinstance(prompt, list) and len(prompt) >= 5 and isinstance(prompt[2], dict)):
                continue
            status, fields = reconciler.settlement_from_history(entry)
            started = fields.get("started_ms")
            if started is None or started / 1000.0 < self.started_at - 60 or not self._take_budget():
                continue   # from before this monitor watched: not ours to import
            job_fields, created = self._fields_from_entry(prompt)
            with self._lock:
                if self.store.status(pid) is not None:
                    continue
                self.store.create({"id": pid, "host": self.name, "status": "queued",
                                   "queued_at": created or iso_from_epoch_ms(started), **job_fields})
                self.tracker.register(pid, job_fields["graph"], job_fields["outputs_to_execute"],
                                      number=job_fields["number"], client_id=job_fields["client_id"])
            self._settle(pid, status, error=fields.get("error"), outputs=fields.get("outputs"),
                         finished_at=iso_from_epoch_ms(fields.get("finished_ms")),
                         started_at=iso_from_epoch_ms(started), history=fields)

    def _forget_finished(self) -> None:
        now = time.time()
        for pid, at in list(self._finished.items()):
            if pid in self._stalled and now - at <= STALLED_KEEP_S:
                continue  # kept, so that its messages still find it if ComfyUI runs it after all
            self._stalled.pop(pid, None)
            if now - at > LINGER_S:
                self.tracker.forget(pid)
                del self._finished[pid]


def _unknown_estimate(status: str) -> dict:
    entry = {"eta_s": None, "eta_basis": "graph unknown"}
    if status == "queued":
        entry.update(starts_in_s=None, done_in_s=None)
    return entry


def _quantize(value):
    """Seconds coarsened to what a person reads ("~40s", "~2m"): 1 s under a minute, 5 s under ten, then 30 s."""
    if value is None:
        return None
    step = 1 if value < 60 else 5 if value < 600 else 30
    return int(round(value / step)) * step


def _quantized(entry: dict | None):
    if not entry:
        return None
    return tuple(_quantize(entry.get(k)) for k in ("eta_s", "starts_in_s", "done_in_s")) + (entry.get("eta_basis"),)


def _input_image(graph: dict | None) -> str | None:
    for node in (graph or {}).values():
        if isinstance(node, dict) and node.get("class_type") in ("LoadImage", "LoadImageMask"):
            image = (node.get("inputs") or {}).get("image")
            if isinstance(image, str):
                return image
    return None


def _rejection_message(exc: ComfyRejected, prompt: dict) -> tuple[str, dict]:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), dict) else {}
    parts = []
    for node_id, info in node_errors.items():
        title = graphs.node_title(prompt, node_id)
        msgs = [_describe(e) for e in (info or {}).get("errors") or [] if isinstance(e, dict)]
        parts.append(f"{title} (#{node_id}): {'; '.join(m for m in msgs if m) or 'invalid'}")
    if isinstance(error, dict):
        head = error.get("message") or error.get("type") or "ComfyUI rejected the prompt"
        if error.get("details") and not parts:
            head += f": {error['details']}"
    else:
        head = str(error) if error else f"ComfyUI rejected the prompt (HTTP {exc.status})"
    message = head + (" — " + " | ".join(parts) if parts else "")
    return message, node_errors


def _describe(error: dict) -> str:
    message, details = error.get("message") or "", error.get("details") or ""
    return f"{message} ({details})" if message and details else message or details


class _HostEvents:
    """With several hosts, each host's events say which host they are about ("[gpu1] Job … started", and
    "host" in their data); with one, events read as before."""

    def __init__(self, bus: EventBus, name: str):
        self._bus, self._name = bus, name

    def emit(self, kind, message, severity="info", data=None) -> dict:
        return self._bus.emit(kind, f"[{self._name}] {message}", severity=severity,
                              data={**(data or {}), "host": self._name})


def _load_client_id(store: JobStore, host: str | None = None) -> str:
    """One fixed client id per host and database, so a restarted monitor keeps receiving its prompts' messages.
    The first host's is kept as `client_id` (as before the fleet); another host's as `client_id.<name>`."""
    return store.kept_value("client_id" if host is None else f"client_id.{host}",
                            lambda: f"monitor-{uuid.uuid4().hex}")
