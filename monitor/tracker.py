"""Tracker: per-prompt progress from ComfyUI messages (DESIGN.md §2). Pure: no I/O, injectable clock.

Memory stays bounded only if the service calls forget() for every prompt it has settled (after a
short linger for late frames). A settled prompt keeps just its frozen ProgressState until then.

Transition kinds: started (also re-sent when ComfyUI's own start time arrives), cached (the full list,
whenever it is learned), node_output, completed, failed, interrupted; finish() may also emit
cancelled / stalled; "revived" = a prompt settled as stalled that ComfyUI reports again; "blocked" = an ExecutionBlocked error (the run goes on); "hint_finished"
= `executing {node: null}` for a prompt that got no terminal message (reason "executing_null"),
or a new prompt started while this one was still running (reason "superseded"): confirm via /history.
"""
from __future__ import annotations

import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field

from . import graph as graphs
from .protocol import BinaryFrame
from .timeutil import iso_from_epoch

TERMINAL = frozenset({"completed", "failed", "interrupted", "cancelled", "stalled"})
PERCENT_CAP = 99.9          # 100 is reserved for execution_success
STEP_WINDOW = 10            # step intervals in the it/s rolling average
FORGOTTEN_KEEP = 512        # forgotten ids whose late frames are ignored instead of re-registered
TRACEBACK_MAX = 8000
OUTPUTS_IN_STATE = 48       # the live state carries the newest node outputs; the job record keeps them all


@dataclass
class Transition:
    kind: str
    prompt_id: str
    data: dict = field(default_factory=dict)


@dataclass
class Preview:
    prompt_id: str | None
    node_id: str | None
    mime: str
    image: memoryview


class _Prompt:
    __slots__ = ("id", "graph", "outputs_to_execute", "number", "client_id", "status", "started",
                 "comfy_started", "finished", "updated", "cached", "cached_known", "effective", "done", "ps", "ps_running", "ps_finished", "node", "display",
                 "step", "step_node", "step_at", "intervals", "floor", "outputs", "frozen",
                 "node_at", "timings", "timing_gap", "weights", "sums")

    def __init__(self, prompt_id: str, now: float):
        self.id = prompt_id
        self.graph: dict | None = None
        self.outputs_to_execute: list[str] | None = None
        self.number: float | None = None
        self.client_id: str | None = None
        self.status = "queued"
        self.started: float | None = None        # our clock: elapsed time is measured on it
        self.comfy_started: float | None = None  # ComfyUI's execution_start timestamp: the record's start
        self.finished: float | None = None
        self.updated = now
        self.cached: list[str] = []
        # False until ComfyUI's execution_cached (live, persisted, or from /history) says which nodes
        # will not run: until then the node total is only an upper bound and the bar follows steps.
        self.cached_known = False
        self.effective: set[str] | None = None   # None = graph unknown
        self.done: set[str] = set()               # nodes known finished (any node id)
        self.ps: dict[str, tuple[str, float, float]] | None = None   # last progress_state snapshot
        self.ps_running: dict[str, float] = {}    # its running nodes → fraction done (a few at most)
        self.ps_finished = 0                       # its finished nodes
        self.node: str | None = None               # current node (execution id)
        self.display: str | None = None            # its display node id, for titles
        self.step: tuple[float, float] | None = None
        self.step_node: str | None = None
        self.step_at: float | None = None
        self.intervals: deque = deque(maxlen=STEP_WINDOW)   # (seconds, steps)
        self.floor: float | None = None            # highest percent reported: keeps it monotonic
        self.outputs: dict[str, dict] = {}        # node id → output entry, oldest first
        self.frozen: dict | None = None            # final state once terminal
        self.node_at: float | None = None          # when the current node started (our clock)
        self.timings: dict[str, float] = {}        # node id → seconds it ran, for nodes seen start to end
        self.timing_gap = False                    # a reconnect mid-run: some node boundaries were missed
        self.weights: dict[str, float] | None = None   # node id → expected seconds (learned), from set_weights
        # (total weight, done weight, done count) over the effective nodes, kept up to date as nodes finish
        # so the percent costs constant work per message; None = recompute once (the basis changed).
        self.sums: list | None = None


def _str(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _num(value) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


class Tracker:
    def __init__(self, instant_types: set[str] | frozenset[str] = frozenset(), clock=time.time, admit=None):
        """`admit(prompt_id) -> bool`, if given, is asked before a message makes the tracker follow a
        prompt it has never seen (the service bounds how many a hostile server can make it adopt)."""
        self.admit = admit
        # Always on top of the defaults: passing the config's extra types alone is enough.
        self.instant_types = frozenset(graphs.DEFAULT_INSTANT_TYPES) | frozenset(instant_types or ())
        self._clock = clock
        self._prompts: dict[str, _Prompt] = {}
        self._running: str | None = None
        self._dirty: set[str] = set()
        self._queued_states: dict[str, dict] = {}   # built state of not-yet-started prompts, until touched
        # Bumped whenever a prompt's state may change other than a running one's moving with the clock:
        # while it holds, stamp() of every prompt that is not volatile is unchanged (see revision).
        self._revision = 0
        self._forgotten: deque = deque(maxlen=FORGOTTEN_KEEP)
        self._forgotten_set: set[str] = set()
        self._handlers = {
            "execution_start": self._on_start, "execution_cached": self._on_cached,
            "executing": self._on_executing, "progress": self._on_progress,
            "progress_state": self._on_progress_state, "executed": self._on_executed,
            "execution_success": self._on_success, "execution_error": self._on_error,
            "execution_interrupted": self._on_interrupted,
        }

    # --- registration and lifecycle ------------------------------------------------------------
    def register(self, prompt_id, graph: dict | None, outputs_to_execute: list[str] | None = None,
                 number: float | None = None, client_id: str | None = None, status="queued",
                 started: float | None = None, cached: list | None = None) -> None:
        """Add a prompt or fill in what is known about it. Never moves a prompt backwards, except a
        stalled one that ComfyUI reports again (status queued/running). `started` (epoch s) and
        `cached` (node ids) are what an earlier run of the monitor learned and stored."""
        if not _str(prompt_id):
            return
        self._forget_undo(prompt_id)
        p = self._prompts.get(prompt_id)
        if p is None:
            p = self._prompts[prompt_id] = _Prompt(prompt_id, self._clock())
            self._revision += 1
        if p.frozen is not None and p.status == "stalled" and status in ("queued", "running"):
            self._revive(p)
        if isinstance(cached, list) and p.frozen is None:
            self._set_cached(p, cached)
        if _num(started) is not None and p.frozen is None:
            p.started = min(p.started, _num(started)) if p.started is not None else _num(started)
            self._revision += 1
            p.comfy_started = p.comfy_started or _num(started)
        if isinstance(graph, dict) and graph is not p.graph and p.frozen is None:
            if p.graph is None:
                p.floor = None  # the percent's basis changes from step-only to the node count
            p.graph = graph
            p.effective = None
        if isinstance(outputs_to_execute, list) and p.frozen is None:
            p.outputs_to_execute = [str(o) for o in outputs_to_execute]
            p.effective = None
        if _num(number) is not None:
            p.number = _num(number)
        if _str(client_id):
            p.client_id = client_id
        if status in TERMINAL:
            self.finish(prompt_id, status)
        elif status == "running" and p.status == "queued":
            self._start(p)  # /queue says it runs now, so whatever we thought was running has ended
            self._running = prompt_id
        self._touch(p)

    def finish(self, prompt_id, status, error=None, outputs=None) -> list[Transition]:
        """Settle a prompt from outside (reconciler: /history, lost, cancelled). No-op if settled."""
        if status not in TERMINAL:
            raise ValueError(f"not a terminal status: {status!r}")
        if not _str(prompt_id) or prompt_id in self._forgotten_set:
            return []
        p = self._get(prompt_id, register=True)
        if p.frozen is not None:
            return []
        if outputs:
            self._merge_outputs(p, outputs)
        data = {}
        if status == "failed":
            data["error"] = error
        return [self._terminate(p, status, data)]

    def forget(self, prompt_id) -> None:
        self._queued_states.pop(prompt_id, None)
        if self._prompts.pop(prompt_id, None) is None:
            return
        self._revision += 1
        if self._running == prompt_id:
            self._running = None
        self._dirty.discard(prompt_id)
        if prompt_id not in self._forgotten_set:
            if len(self._forgotten) == self._forgotten.maxlen:
                self._forgotten_set.discard(self._forgotten[0])
            self._forgotten.append(prompt_id)
            self._forgotten_set.add(prompt_id)

    def apply_history(self, prompt_id, graph: dict | None = None, cached: list | None = None,
                      executed: list | None = None, started: float | None = None) -> None:
        """What a /history entry tells about a run we did not see to the end: its graph, the nodes it
        took from the cache, the nodes that ran to completion and ComfyUI's start time. Call before
        finish(), so that the frozen state counts nodes right."""
        p = self._get(_str(prompt_id), register=True)
        if p is None or p.frozen is not None:
            return
        if isinstance(graph, dict) and p.graph is None:
            p.graph, p.effective = graph, None
        if isinstance(cached, list):
            self._set_cached(p, cached)
        if isinstance(executed, list):
            for n in executed:
                if isinstance(n, str):
                    self._mark_done(p, n)
        if _num(started) is not None:
            p.comfy_started = _num(started)
            p.started = min(p.started, p.comfy_started) if p.started is not None else p.comfy_started
            self._revision += 1

    def on_reconnect(self) -> None:
        """Steps sent while we were away are gone: keep the state, restart the step timing."""
        for p in self._prompts.values():
            p.step_at = None
            p.intervals.clear()

    def on_disconnect(self) -> None:
        """The connection dropped: node boundaries of the running prompts may be missed meanwhile, so their
        timings are not a complete record."""
        for p in self._prompts.values():
            if p.status == "running" and p.frozen is None:
                p.timing_gap = True

    def set_weights(self, prompt_id, weights: dict | None) -> None:
        """Each node's share of the work: its expected seconds (learned durations). Used when every node
        that runs has one; otherwise, or with None, each node counts one (the effective node count)."""
        p = self._prompts.get(prompt_id) if _str(prompt_id) else None
        if p is None or p.frozen is not None:
            return
        clean = None
        if isinstance(weights, dict):
            clean = {str(k): max(float(v), 0.0) for k, v in weights.items() if _num(v) is not None}
        if clean != p.weights:
            p.weights = clean or None
            p.sums = None
            self._touch(p)

    def nodes_to_run(self, prompt_id) -> list[str] | None:
        """The nodes of an unsettled prompt that will run (cached and instant ones excluded), None if unknown."""
        p = self._prompts.get(prompt_id) if _str(prompt_id) else None
        if p is None or p.frozen is not None:
            return None
        effective = self._effective(p)
        return None if effective is None else sorted(effective)

    # --- messages ------------------------------------------------------------------------------
    def handle(self, msg_type: str, data: dict) -> list[Transition]:
        """Apply one parsed text message. Unknown types and malformed fields are ignored."""
        handler = self._handlers.get(msg_type)
        if handler is None or not isinstance(data, dict):
            return []
        out: list[Transition] = []
        handler(data, out)
        return out

    def handle_preview(self, frame: BinaryFrame) -> Preview | None:
        """Attribute a preview: type 4 by its metadata, type 1 to the running prompt's current node."""
        if frame.event not in (1, 4) or frame.image is None or not frame.mime:
            return None
        prompt_id, node_id = frame.prompt_id, frame.node_id
        if prompt_id is None:
            prompt_id = self._running
        p = self._prompts.get(prompt_id) if prompt_id else None
        if (p is not None and p.frozen is not None) or prompt_id in self._forgotten_set:
            return None  # a late frame of a settled prompt
        if node_id is None and p is not None:
            node_id = p.step_node or p.node
        return Preview(prompt_id, node_id, frame.mime, frame.image)

    def _on_start(self, data, out):
        p = self._get(_str(data.get("prompt_id")), register=True, message=True)
        if p is None:
            return
        if p.frozen is not None:
            if p.status != "stalled":
                return
            self._revive(p, out)
        at = _num(data.get("timestamp"))
        was_running = p.status == "running"
        if at is not None:
            p.comfy_started = at / 1000.0
        self._make_running(p, out)
        if was_running and at is not None:  # already marked running (from /queue): the exact start time
            out.append(Transition("started", p.id, {"started_at": iso_from_epoch(p.comfy_started)}))
        self._touch(p)

    def _on_cached(self, data, out):
        p = self._live(data.get("prompt_id"), out)
        nodes = data.get("nodes")
        if p is None or not isinstance(nodes, list):
            return
        new = [n for n in dict.fromkeys(n for n in nodes if isinstance(n, str)) if n not in p.cached]
        if new or not p.cached_known:
            self._set_cached(p, p.cached + new)
            out.append(Transition("cached", p.id, {"nodes": list(p.cached)}))
        self._touch(p)

    def _on_executing(self, data, out):
        node, prompt_id = _str(data.get("node")), _str(data.get("prompt_id"))
        if node is None:
            # The end of a prompt, but only a hint: the terminal message says how it ended.
            p = self._prompts.get(prompt_id) if prompt_id else None
            if p is not None and p.frozen is None:
                out.append(Transition("hint_finished", p.id, {"reason": "executing_null"}))
            return
        # Without prompt_id this is the reconnect greeting: it is about the running prompt.
        p = self._live(prompt_id, out) if prompt_id else self._prompts.get(self._running or "")
        if p is None or p.frozen is not None:
            return
        self._set_node(p, node, _str(data.get("display_node")) or node)
        self._touch(p)

    def _on_progress(self, data, out):
        prompt_id = _str(data.get("prompt_id"))
        p = self._live(prompt_id, out) if prompt_id else self._prompts.get(self._running or "")
        value, maximum = _num(data.get("value")), _num(data.get("max"))
        if p is None or p.frozen is not None or value is None or maximum is None or maximum <= 0:
            return
        node = _str(data.get("node")) or p.node
        if node is not None and node != p.node:
            self._set_node(p, node, node)
        now = self._clock()
        last = p.step
        if last is None or p.step_at is None or node != p.step_node or value < last[0]:
            p.intervals.clear()  # a new node, a new pass or a reconnect: start timing afresh
        elif value > last[0]:
            p.intervals.append((now - p.step_at, value - last[0]))
        if last is None or value != last[0] or p.step_at is None or node != p.step_node:
            p.step_at = now
        p.step, p.step_node = (value, maximum), node
        self._touch(p, now)

    def _on_progress_state(self, data, out):
        nodes = data.get("nodes")
        p = self._live(data.get("prompt_id"), out)
        if p is None or not isinstance(nodes, dict):
            return
        snapshot, running = {}, None
        for nid, entry in nodes.items():
            if not isinstance(nid, str) or not isinstance(entry, dict):
                continue
            state = entry.get("state")
            value, maximum = _num(entry.get("value")) or 0.0, _num(entry.get("max")) or 0.0
            snapshot[nid] = (state, value, maximum)
            if state == "finished":
                self._mark_done(p, nid)
            elif state == "running":
                running = nid
        p.ps = snapshot
        p.ps_running = {nid: min(max(v / m, 0.0), 1.0) if m > 0 else 0.0
                        for nid, (st, v, m) in snapshot.items() if st == "running"}
        p.ps_finished = sum(1 for st, _, _ in snapshot.values() if st == "finished")
        # Observers of prompts without client id get no `executing`: the snapshot says which node
        # runs. Only move on once the current node is no longer running (no flapping between nodes).
        if running is not None and running != p.node and snapshot.get(p.node or "", ("",))[0] != "running":
            display = _str(nodes[running].get("display_node_id")) or running
            self._set_node(p, running, display)
        self._touch(p)

    def _on_executed(self, data, out):
        p = self._live(data.get("prompt_id"), out)
        node = _str(data.get("node"))
        if p is None or node is None:
            return
        self._mark_done(p, node)
        self._end_timing(p, node)
        output = data.get("output")
        if isinstance(output, dict):
            title = graphs.node_title(p.graph, _str(data.get("display_node")) or node)
            entry = graphs.node_output(p.graph, node, output, title)
            self._merge_outputs(p, [entry])
            out.append(Transition("node_output", p.id, {"node_id": node, "title": title, "output": output,
                                                        "entry": entry}))
        self._touch(p)

    def _on_success(self, data, out):
        p = self._live(data.get("prompt_id"), out)
        if p is not None:
            out.append(self._terminate(p, "completed", {}))

    def _on_error(self, data, out):
        p = self._live(data.get("prompt_id"), out)
        if p is None:
            return
        message = data.get("exception_message")
        error = {**self._where(p, data), "exception_type": _str(data.get("exception_type")),
                 "message": message.rstrip("\n") if isinstance(message, str) else None}
        tb = data.get("traceback")
        if isinstance(tb, list) and tb:
            error["traceback"] = "".join(str(line) for line in tb)[-TRACEBACK_MAX:]
        if error["exception_type"] == "ExecutionBlocked":
            out.append(Transition("blocked", p.id, {"error": error}))  # the run continues
            return
        out.append(self._terminate(p, "failed", {"error": error}))

    def _on_interrupted(self, data, out):
        p = self._live(data.get("prompt_id"), out)
        if p is None:
            return
        out.append(self._terminate(p, "interrupted", self._where(p, data)))

    @staticmethod
    def _where(p: _Prompt, data: dict) -> dict:
        """The node an error/interrupt names; its title only if the graph has the node (never the bare id)."""
        node_id = _str(data.get("node_id"))
        node_type = graphs.class_type(p.graph, node_id)
        return {"node_id": node_id, "node_type": _str(data.get("node_type")) or node_type,
                "node_title": graphs.node_title(p.graph, node_id) if node_type else None}

    # --- internals -----------------------------------------------------------------------------
    def _get(self, prompt_id, register=False, message=False) -> _Prompt | None:
        if not _str(prompt_id) or prompt_id in self._forgotten_set:
            return None
        p = self._prompts.get(prompt_id)
        if p is None and register:
            if message and self.admit is not None and not self.admit(prompt_id):
                return None
            p = self._prompts[prompt_id] = _Prompt(prompt_id, self._clock())
            self._revision += 1
        return p

    def _live(self, prompt_id, out) -> _Prompt | None:
        """The prompt a message is about, registered if unknown and marked running; None if settled."""
        p = self._get(_str(prompt_id), register=True, message=True)
        if p is not None and p.frozen is not None and p.status == "stalled":
            self._revive(p, out)
        if p is None or p.frozen is not None:
            return None
        if p.status != "running" or self._running != p.id:
            self._make_running(p, out)
        return p

    def _make_running(self, p: _Prompt, out) -> None:
        previous = self._prompts.get(self._running or "")
        if previous is not None and previous is not p and previous.frozen is None:
            # Only one prompt runs at a time: the previous one ended without telling us.
            out.append(Transition("hint_finished", previous.id, {"reason": "superseded"}))
        self._running = p.id
        if p.status != "running":
            self._start(p)
            out.append(Transition("started", p.id, {"started_at": iso_from_epoch(p.comfy_started or p.started)}))

    def _revive(self, p: _Prompt, out: list | None = None) -> None:
        """A prompt we settled as stalled is alive after all (ComfyUI lists it, or sends its messages)."""
        p.frozen = None
        self._revision += 1
        p.status, p.finished = "queued", None
        p.floor = None
        if out is not None:
            out.append(Transition("revived", p.id, {}))

    def _set_cached(self, p: _Prompt, nodes: list) -> None:
        p.cached = list(dict.fromkeys(n for n in nodes if isinstance(n, str)))
        p.cached_known = True
        p.effective = None
        p.floor = None  # the percent's basis changes from steps alone to the node count

    def _start(self, p: _Prompt) -> None:
        self._revision += 1
        p.status = "running"
        p.started = p.started or self._clock()

    def _set_node(self, p: _Prompt, node: str, display: str) -> None:
        if node == p.node:
            return
        if p.node is not None and p.ps is None:
            self._mark_done(p, p.node)  # no progress_state from this server: the next node means this one ended
        now = self._clock()
        if p.node is not None:
            self._end_timing(p, p.node, now)
        p.node_at = now
        p.node, p.display = node, display
        p.step = p.step_node = p.step_at = None
        p.intervals.clear()

    def _touch(self, p: _Prompt, now: float | None = None) -> None:
        p.updated = self._clock() if now is None else now
        if not _volatile(p):
            self._revision += 1
        self._dirty.add(p.id)
        self._queued_states.pop(p.id, None)

    def _forget_undo(self, prompt_id: str) -> None:
        if prompt_id in self._forgotten_set:  # registered again on purpose (e.g. reattach)
            self._forgotten_set.discard(prompt_id)
            self._forgotten.remove(prompt_id)

    def _merge_outputs(self, p: _Prompt, outputs) -> None:
        """Outputs as a list of state entries, or as /history's {node_id: ui_output}."""
        if isinstance(outputs, dict):
            outputs = [graphs.node_output(p.graph, str(nid), ui) for nid, ui in outputs.items()
                       if isinstance(ui, dict)]
        if not isinstance(outputs, list):
            return
        for entry in outputs:
            if isinstance(entry, dict) and entry.get("node_id") is not None:
                p.outputs.pop(entry["node_id"], None)   # a node's newer output moves to the end
                p.outputs[entry["node_id"]] = entry

    def _end_timing(self, p: _Prompt, node: str, now: float | None = None) -> None:
        """A node ended (the next one started, its output arrived, or the prompt ended): how long it ran,
        if we saw it start."""
        if node == p.node and p.node_at is not None and node not in p.timings:
            p.timings[node] = max((self._clock() if now is None else now) - p.node_at, 0.0)

    def _terminate(self, p: _Prompt, status: str, data: dict) -> Transition:
        now = self._clock()
        if p.node is not None and status == "completed":
            self._end_timing(p, p.node, now)
        p.status, p.finished = status, now
        effective = self._effective(p)
        if status == "completed" and effective:
            p.done |= effective
            p.sums = None
        p.step_at = None
        p.intervals.clear()
        if self._running == p.id:
            self._running = None
        self._touch(p, now)
        p.frozen = self._build_state(p, now)
        self._revision += 1
        if status != "stalled":  # a stalled prompt may be revived: it keeps what it needs to go on
            p.graph = p.ps = None  # what state() needs is frozen; drop the rest
            p.ps_running = {}
        data.update({"finished_at": iso_from_epoch(now), "outputs": list(p.outputs.values())})
        return Transition(status, p.id, data)

    def _effective(self, p: _Prompt) -> set[str] | None:
        if p.graph is None:
            return None
        if p.effective is None:
            nodes = graphs.effective_nodes(p.graph, p.outputs_to_execute)
            cached = set(p.cached)
            p.effective = {n for n in nodes if n not in cached
                           and graphs.class_type(p.graph, n) not in self.instant_types}
            p.sums = None
        return p.effective

    def _percent(self, p: _Prompt) -> float | None:
        if p.status == "completed":
            return 100.0
        effective = self._effective(p)
        raw = None
        if effective is None or not p.cached_known:
            # Graph unknown, or not known which nodes will run (a run we joined late): counting every
            # node would stall the bar and then jump it; the current node's steps are honest.
            if p.step is not None:
                raw = 100.0 * p.step[0] / p.step[1]
        elif effective and (p.node in effective or p.step is not None or not p.done.isdisjoint(effective)):
            total, done_w = self._sums(p, effective)[:2]
            raw = 100.0 * (done_w + self._partial(p, effective)) / total
        if raw is None:
            return p.floor
        p.floor = min(max(raw, p.floor or 0.0), PERCENT_CAP)
        return p.floor

    def _partial(self, p: _Prompt, effective: set[str]) -> float:
        """The unfinished work of the nodes that are part-way: progress_state's running nodes, else the
        current node's steps, each fraction times the node's weight. Constant work per message, whatever
        the size of the graph."""
        weight = self._weight_of(p)
        partial = 0.0
        if p.ps is not None:
            partial = sum(f * weight(nid) for nid, f in p.ps_running.items() if nid in effective and nid not in p.done)
        node = p.node
        if (node is not None and p.step is not None and node in effective and node not in p.done
                and (p.ps is None or node not in p.ps)):
            partial += min(max(p.step[0] / p.step[1], 0.0), 1.0) * weight(node)
        return partial

    @staticmethod
    def _weight_of(p: _Prompt):
        """A node's share of the work: its learned expected time when every node to run has one (the sums
        say so), else 1 (the effective node count)."""
        weights = p.weights if p.sums is not None and p.sums[3] else None
        if weights is None:
            return lambda node: 1.0
        return lambda node: weights.get(node, 1.0)

    def _sums(self, p: _Prompt, effective: set[str]) -> list:
        """[total weight, done weight, done count, weighted?] of the effective nodes, computed once per basis."""
        if p.sums is None:
            weights = p.weights
            weighted = bool(weights) and all(n in weights for n in effective) and sum(
                weights[n] for n in effective) > 0
            w = (lambda n: weights[n]) if weighted else (lambda n: 1.0)
            done = p.done & effective
            p.sums = [sum(w(n) for n in effective) or 1.0, sum(w(n) for n in done), len(done), weighted]
        return p.sums

    def _mark_done(self, p: _Prompt, node: str) -> None:
        if node in p.done:
            return
        p.done.add(node)
        if p.sums is not None and p.effective is not None and node in p.effective:
            p.sums[1] += self._weight_of(p)(node)
            p.sums[2] += 1

    def _it_per_s(self, p: _Prompt) -> float | None:
        seconds = sum(dt for dt, _ in p.intervals)
        if not p.intervals or seconds <= 0:
            return None
        return sum(steps for _, steps in p.intervals) / seconds

    def _build_state(self, p: _Prompt, now: float) -> dict:
        effective = self._effective(p)
        counted = effective is not None and p.cached_known
        percent = self._percent(p)
        rate = self._it_per_s(p) if p.frozen is None and p.status == "running" else None
        eta = (p.step[1] - p.step[0]) / rate if rate and p.step else None
        end = p.finished if p.finished is not None else now
        return {
            "prompt_id": p.id, "status": p.status,
            "node_id": p.node,
            "node_type": graphs.class_type(p.graph, p.display) if p.node else None,
            "node_title": graphs.node_title(p.graph, p.display) if p.node else None,
            "percent": None if percent is None else round(percent, 2),
            "indeterminate": p.status == "running" and percent is None,
            "step": None if p.step is None else {"value": _int(p.step[0]), "max": _int(p.step[1])},
            "it_per_s": None if rate is None else round(rate, 3),
            "eta_s": None if eta is None else round(eta, 1),
            "started_at": iso_from_epoch(p.comfy_started or p.started),
            "elapsed_s": None if p.started is None else round(max(end - p.started, 0.0), 1),
            "nodes_done": (self._sums(p, effective)[2] if counted
                           else p.ps_finished or len(p.done)),
            "nodes_total": len(effective) if counted else None,
            "nodes_uncertain": not counted,
            "cached_nodes": list(p.cached),
            # Bounded: this state goes to every browser on every update, however many nodes a graph has.
            "outputs": list(reversed(list(itertools.islice(reversed(p.outputs.values()), OUTPUTS_IN_STATE)))),
            "outputs_count": len(p.outputs),
            "updated_at": iso_from_epoch(p.updated),
        }

    # --- queries -------------------------------------------------------------------------------
    def node_counts(self, graph, outputs_to_execute, cached, status: str,
                    executed: list | None = None) -> tuple[int | None, int | None]:
        """(total, done) of a finished run from what /history says of it: the nodes that really ran
        (cached and instant ones excluded); done is None where the entry does not say."""
        if not isinstance(graph, dict) or not isinstance(cached, list):
            return None, None
        skip = set(cached)
        effective = {n for n in graphs.effective_nodes(graph, outputs_to_execute)
                     if n not in skip and graphs.class_type(graph, n) not in self.instant_types}
        if status == "completed":
            return len(effective), len(effective)
        if isinstance(executed, list):
            return len(effective), len(effective & set(executed))
        return len(effective), None


    def state(self, prompt_id) -> dict | None:
        p = self._prompts.get(prompt_id)
        if p is None:
            return None
        if p.frozen is not None:
            return dict(p.frozen)
        if p.status == "queued" and p.started is None:
            # Nothing in a waiting prompt's state depends on the clock: build it once per change
            # (a long queue is listed by every API poll).
            cached = self._queued_states.get(p.id)
            if cached is None:
                cached = self._queued_states[p.id] = self._build_state(p, self._clock())
            return dict(cached)
        return self._build_state(p, self._clock())

    def active(self) -> list[dict]:
        """Unsettled prompts: the running one first, then other running, then queued by number."""
        live = [p for p in self._prompts.values() if p.frozen is None]
        live.sort(key=lambda p: (p.id != self._running, p.status != "running",
                                 p.number if p.number is not None else math.inf))
        return [self.state(p.id) for p in live]

    def outputs(self, prompt_id) -> list[dict] | None:
        """Every node output of a prompt so far (None if unknown): what its job record stores."""
        p = self._prompts.get(prompt_id)
        return None if p is None else list(p.outputs.values())

    def running_id(self) -> str | None:
        return self._running

    def timings(self, prompt_id) -> dict | None:
        """How long each node of a prompt ran, as seen live (None if unknown): {"nodes": {id: s},
        "cached": [ids], "complete": a completed run seen start to end with no reconnect in between}.
        Kept after the prompt settles, until forget()."""
        p = self._prompts.get(prompt_id)
        if p is None:
            return None
        return {"nodes": dict(p.timings), "cached": list(p.cached),
                "complete": p.status == "completed" and p.cached_known and not p.timing_gap}

    def plan(self, prompt_id) -> dict | None:
        """What is left of an unsettled prompt, for estimates (None if settled, unknown or without graph):
        {"status", "graph", "pending": node ids still to run (the current one excluded), "current": node id
        or None, "current_s": seconds it has run, "step_eta_s": its steps left at the live rate or None,
        "cached_known": whether ComfyUI has said which nodes it takes from its cache}."""
        p = self._prompts.get(prompt_id)
        if p is None or p.frozen is not None:
            return None
        effective = self._effective(p)
        if effective is None:
            return None
        current = p.node if p.status == "running" and p.node in effective and p.node not in p.done else None
        rate = self._it_per_s(p) if current is not None and p.step_node == current else None
        now = self._clock()
        return {"status": p.status, "graph": p.graph,
                "pending": [n for n in effective if n not in p.done and n != current],
                "current": current,
                "current_s": max(now - p.node_at, 0.0) if current is not None and p.node_at is not None else 0.0,
                "step_eta_s": (p.step[1] - p.step[0]) / rate if rate and p.step else None,
                "cached_known": p.cached_known}

    def stamp(self, prompt_id):
        """A value that changes whenever state(prompt_id) would: None for unknown prompts, and a fresh
        object for a running one (its elapsed time moves with the clock). For caches of renderings."""
        p = self._prompts.get(prompt_id)
        if p is None:
            return None
        if _volatile(p):
            return object()
        return p.updated

    def volatile_ids(self) -> list[str]:
        """The prompts whose state moves with the clock (running ones): their stamp() is always fresh."""
        return [pid for pid, p in self._prompts.items() if _volatile(p)]

    @property
    def revision(self) -> int:
        """Changes whenever stamp() of a prompt that is not volatile may change, or a prompt becomes or
        stops being volatile, or is added or forgotten: a cache of many renderings is valid while it holds,
        except for the volatile prompts it lists."""
        return self._revision

    def pop_dirty(self) -> set[str]:
        dirty, self._dirty = self._dirty, set()
        return dirty


def _volatile(p: _Prompt) -> bool:
    return p.frozen is None and not (p.status == "queued" and p.started is None)


def _int(value: float):
    return int(value) if value == int(value) else value
