"""SimComfy: an in-process simulated ComfyUI 0.3.64 (HTTP + WebSocket on loopback) for `--demo` and tests.

The core speaks the recorded protocol (tests/fixtures/comfyui-0.3.64/PROTOCOL.md): it owns the queue, the
history, the socket table and the addressing rules; an `Engine` only says *what* a running prompt emits and
when. `SyntheticEngine` (here) invents plausible runs for any API-format graph; tests/fake_comfy.py has an
engine that replays the recordings frame for frame.
"""
from __future__ import annotations

import hashlib
import heapq
import io
import itertools
import json
import logging
import mimetypes
import os
import random
import socket
import string
import struct
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import gevent
import gevent.event
import gevent.pool
import gevent.queue
from flask import Flask, Response, request
from flask_sock import Sock
from gevent.pywsgi import WSGIServer

log = logging.getLogger(__name__)

SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
HISTORY_MAX = 10000
FILES_MAX = 2000     # /view files kept by a long-running demo
LOG_MAX = 10000      # .requests / .posted entries kept
DEMO_FAILURE_RATE = 1 / 8

# Per PROTOCOL.md §3: with no client_id these go to every socket, everything else to nobody.
BROADCAST_WITHOUT_CLIENT = frozenset({"progress", "progress_state", "execution_interrupted"})
TIMESTAMPED = frozenset({"execution_start", "execution_cached", "execution_success",
                         "execution_error", "execution_interrupted"})
TERMINAL = frozenset({"execution_success", "execution_error", "execution_interrupted"})
HISTORY_MESSAGES = TIMESTAMPED  # what ComfyUI keeps in history status.messages


# --------------------------------------------------------------------------------------------------------
# What an engine yields

@dataclass
class Preview:
    """A sampler preview. The core turns it into a type 4 or a type 1 frame depending on the receiver."""
    image: bytes
    node_id: str
    mime: str = "image/jpeg"
    display_node_id: str | None = None
    parent_node_id: str | None = None
    real_node_id: str | None = None


@dataclass
class TextFrame:
    """A binary type 3 TEXT frame (e.g. GetImageSize): broadcast to every socket."""
    node_id: str
    text: str


CHECK = "interrupt-check"             # the engine's "throw_exception_if_processing_interrupted()"
WAIT_INTERRUPT = "wait-for-interrupt"  # block until the running prompt is interrupted (replay of 05)


def ms_now() -> int:
    return int(time.time() * 1000)


def preview_frame(p: Preview, prompt_id: str | None, with_metadata: bool) -> bytes:
    """PROTOCOL.md §5.1/§5.2; metadata key order and json.dumps spacing as on the wire."""
    if with_metadata:
        meta = json.dumps({"node_id": p.node_id, "prompt_id": prompt_id,
                           "display_node_id": p.display_node_id or p.node_id,
                           "parent_node_id": p.parent_node_id,
                           "real_node_id": p.real_node_id or p.node_id,
                           "image_type": p.mime}).encode()
        return struct.pack(">II", 4, len(meta)) + meta + p.image
    return struct.pack(">II", 1, 2 if p.mime == "image/png" else 1) + p.image


def text_frame(t: TextFrame) -> bytes:
    node = t.node_id.encode()
    return struct.pack(">II", 3, len(node)) + node + t.text.encode()


# --------------------------------------------------------------------------------------------------------
# Queue entries and the state of the running prompt

@dataclass
class Job:
    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs_to_execute: list
    engine: "Engine"

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")

    def entry(self) -> list:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]


@dataclass
class Run:
    """What the core learns while a prompt runs; engines may read it (e.g. `executed` for an error)."""
    job: Job
    interrupt: gevent.event.Event = field(default_factory=gevent.event.Event)
    current_node: str | None = None
    cached: list = field(default_factory=list)
    executed: list = field(default_factory=list)      # finished in this run, cached ones excluded
    outputs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)
    terminal: str | None = None
    pending_type1: list = field(default_factory=list)
    fallback_graph: dict = field(default_factory=dict)  # a replayed recording's graph, for node types

    def class_type(self, node_id) -> str | None:
        for graph in (self.job.prompt, self.fallback_graph):
            node = graph.get(str(node_id))
            if isinstance(node, dict):
                return node.get("class_type")
        return None


class Engine:
    """Says what a running prompt emits. `run` yields (delay_s, item); item is a text message dict
    ({"type", "data"}), a Preview, a TextFrame, CHECK or WAIT_INTERRUPT. The core does the rest."""

    output_classes = frozenset({"SaveImage", "PreviewImage", "PreviewAny", "SaveAnimatedWEBP",
                                "SaveAnimatedPNG", "SaveVideo", "SaveWEBM", "SaveAudio", "SaveLatent"})

    def knows(self, class_type: str) -> bool:
        return True

    def is_output(self, class_type: str) -> bool:
        return class_type in self.output_classes

    def run(self, job: Job, run: Run) -> Iterator[tuple[float, object]]:
        raise NotImplementedError

    def history_entry(self, job: Job, built: dict) -> dict:
        return built

    def render_file(self, kind: str, subfolder: str, filename: str) -> bytes:
        return render_png(filename)

    def reset(self) -> None:
        """ComfyUI restarted: forget caches."""


# --------------------------------------------------------------------------------------------------------
# One WebSocket connection

class RawFrame(bytes):
    """A complete WebSocket frame that `Conn.send` writes as it is (tests: frames no real server sends)."""


class Conn:
    """A client socket with its own outbox, so a slow client never blocks the worker."""

    def __init__(self, ws, client_id: str):
        self.ws = ws
        self.client_id = client_id
        self.wants_metadata = False
        self.first_frame_seen = False
        self.outbox: gevent.queue.Queue = gevent.queue.Queue()
        try:  # like aiohttp: no Nagle delay between the many small frames of a run
            ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.sender = gevent.spawn(self._send_loop)

    def send(self, payload) -> None:
        self.outbox.put(payload)

    def _send_loop(self):
        for payload in self.outbox:
            try:
                if isinstance(payload, RawFrame):
                    self.ws.sock.sendall(payload)
                else:
                    self.ws.send(payload)
            except Exception:  # the socket died: the handler's receive() notices and unregisters us
                return

    def close(self) -> None:
        self.outbox.put(StopIteration)

    def kill(self) -> None:
        """End the TCP connection with no close frame, like a killed server."""
        self.ws.connected = False  # so flask-sock's final ws.close() sends nothing
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.ws.sock.close()
        except OSError:
            pass
        self.sender.kill(block=False)


# --------------------------------------------------------------------------------------------------------
# The simulated server

class SimComfy:
    """A fake ComfyUI 0.3.64 on loopback. `start()` → base URL; `stop(abrupt=True)` behaves like a killed
    ComfyUI (no close frames, all state lost); `start()` again reuses the port."""

    def __init__(self, engine: Engine | None = None, host: str = "127.0.0.1", port: int = 0,
                 newer: bool = False, system_stats: dict | None = None, paused: bool = False):
        # Without an explicit engine this is the demo: synthetic runs, about 1 in 8 of them failing.
        self.engine = engine or SyntheticEngine(failure_rate=DEMO_FAILURE_RATE)
        self.host, self.port = host, port
        self.newer = newer
        self._system_stats = system_stats
        self.app = self._make_app()
        self._server: WSGIServer | None = None
        self._worker: gevent.Greenlet | None = None
        self._wake = gevent.event.Event()
        self._running_allowed = gevent.event.Event()
        if not paused:
            self._running_allowed.set()
        self.requests: deque[tuple[str, str]] = deque(maxlen=LOG_MAX)  # (method, path) of every request
        self.posted: deque = deque(maxlen=LOG_MAX)                       # parsed POST /prompt bodies
        self.traffic: gevent.Greenlet | None = None                      # see start_demo()
        self._files: OrderedDict[tuple[str, str, str], bytes | None] = OrderedDict()
        self._given: set[tuple[str, str, str]] = set()  # files whose bytes a test gave (typed by name)
        self._reset_state()

    # ---- lifecycle -------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.number = 0
        self._seq = itertools.count()
        self._pending: list = []            # heap of (number, seq, Job), listed in heap order like ComfyUI
        self.running: Run | None = None
        self.history: OrderedDict[str, dict] = OrderedDict()
        self._table: dict[str, Conn] = {}   # clientId -> socket, the server's `sockets` dict
        self._conns: set[Conn] = set()      # every open socket, including orphaned duplicates
        self.create_times: dict[str, int] = {}
        # A restart deletes the temp folder; output and input files stay on disk.
        self._files = OrderedDict((k, v) for k, v in self._files.items() if k[0] != "temp")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def start(self) -> str:
        if self._server is not None:
            return self.url
        self._server = WSGIServer((self.host, self.port), self.app, spawn=gevent.pool.Pool(),
                                  log=None, error_log=None)
        self._server.start()
        self.port = self._server.server_port
        self._worker = gevent.spawn(self._work)
        return self.url

    def stop(self, abrupt: bool = True) -> None:
        """abrupt=True: like SIGKILL (sockets end without a close frame, 1006 for clients).
        abrupt=False: a polite shutdown that sends close frames, for test teardown."""
        if self._server is None:
            return
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        for conn in list(self._conns):
            if not abrupt:  # a polite goodbye first (a real ComfyUI never sends one)
                conn.sender.kill(block=False)
                try:
                    conn.ws.close(reason=1001)
                except Exception:
                    pass
            conn.kill()
        server, self._server = self._server, None
        server.stop(timeout=0)
        self.engine.reset()
        self._reset_state()

    def pause(self) -> None:
        """Tests: stop taking new prompts from the queue (the running one continues)."""
        self._running_allowed.clear()

    def resume(self) -> None:
        self._running_allowed.set()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop(abrupt=False)

    # ---- queue -------------------------------------------------------------------------------------
    def queue_remaining(self) -> int:
        return len(self._pending) + (1 if self.running else 0)

    def enqueue(self, prompt: dict, client_id: str | None = None, extra_data: dict | None = None,
                prompt_id: str | None = None, number: float | None = None,
                engine: Engine | None = None) -> Job:
        """Queue a prompt directly, as if POSTed (e.g. by ComfyUI's own UI for another client id)."""
        extra = dict(extra_data or {})
        if client_id is not None:
            extra["client_id"] = client_id
        if number is None:
            number, self.number = self.number, self.number + 1
        engine = engine or self._engine_for_new_prompt()
        outputs = [nid for nid, node in prompt.items()
                   if isinstance(node, dict) and engine.is_output(node.get("class_type", ""))]
        job = Job(number, prompt_id or str(uuid.uuid4()), prompt, extra, outputs, engine)
        self._put(job)
        return job

    def _engine_for_new_prompt(self) -> Engine:
        return self.engine

    def _put(self, job: Job) -> None:
        self.create_times[job.prompt_id] = ms_now()
        heapq.heappush(self._pending, (job.number, next(self._seq), job))
        self._broadcast_status()
        self._wake.set()

    def _work(self) -> None:
        while True:
            self._running_allowed.wait()
            if not self._pending:
                self._wake.clear()
                self._wake.wait()
                continue
            _, _, job = heapq.heappop(self._pending)
            run = self.running = Run(job)
            self._broadcast_status()  # N+1 again: the prompt moved from pending to running
            try:
                self._execute(run)
            except Exception:
                log.exception("simulated run of %s failed", job.prompt_id)
            self._finish(run)

    def _execute(self, run: Run) -> None:
        items = run.job.engine.run(run.job, run)
        try:
            for delay, item in items:
                if delay > 0:
                    run.interrupt.wait(delay)  # an interrupt cuts the wait short; the next CHECK acts on it
                if item is CHECK:
                    if run.interrupt.is_set():
                        self._interrupted(run)
                        return
                elif item is WAIT_INTERRUPT:
                    run.interrupt.wait()
                else:
                    self._emit(run, item)
        finally:
            items.close()
        if run.terminal is None:
            self._emit(run, {"type": "execution_success", "data": {"prompt_id": run.job.prompt_id}})

    def _interrupted(self, run: Run) -> None:
        node = run.current_node
        self._emit(run, {"type": "execution_interrupted", "data": {
            "prompt_id": run.job.prompt_id, "node_id": node, "node_type": run.class_type(node),
            "executed": list(run.executed)}})

    def _finish(self, run: Run) -> None:
        """History first, then status N, then `executing null` (PROTOCOL.md §7 step 6)."""
        self._flush_type1(run)
        job = run.job
        success = run.terminal == "execution_success"
        built = {"prompt": job.entry(), "outputs": run.outputs,
                 "status": {"status_str": "success" if success else "error", "completed": success,
                            "messages": run.messages},
                 "meta": run.meta}
        entry = self.history[job.prompt_id] = job.engine.history_entry(job, built)
        self._register_files(entry.get("outputs") or {})
        while len(self.history) > HISTORY_MAX:
            self.create_times.pop(self.history.popitem(last=False)[0], None)
        self.running = None
        self._broadcast_status()
        if job.client_id is not None:
            self._send_to(job.client_id, json.dumps({"type": "executing",
                                                     "data": {"node": None, "prompt_id": job.prompt_id}}))

    # ---- emitting messages -------------------------------------------------------------------------
    def _emit(self, run: Run, item) -> None:
        client_id = run.job.client_id
        if isinstance(item, Preview):
            target = self._table.get(client_id) if client_id is not None else None
            if target is not None and target.wants_metadata:
                self._send_to(client_id, preview_frame(item, run.job.prompt_id, True))
            elif client_id is None or target is not None:
                # Type 1 goes out right after the step's `progress` (PROTOCOL.md §5.1), type 4 before it.
                run.pending_type1.append(preview_frame(item, None, False))
            return
        if isinstance(item, TextFrame):
            self._flush_type1(run)
            self._broadcast(text_frame(item))
            return
        msg_type, data = item["type"], item.setdefault("data", {})
        if msg_type != "progress":
            self._flush_type1(run)
        self._observe(run, msg_type, data)
        raw = json.dumps(item)
        if client_id is not None:
            self._send_to(client_id, raw)
        elif msg_type in BROADCAST_WITHOUT_CLIENT:
            self._broadcast(raw)
        if msg_type == "progress":
            self._flush_type1(run)

    def _observe(self, run: Run, msg_type: str, data: dict) -> None:
        if msg_type in TIMESTAMPED:
            data["timestamp"] = ms_now()
        if msg_type == "executing" and data.get("node") is not None:
            run.current_node = data["node"]
        elif msg_type == "execution_cached":
            run.cached = list(data.get("nodes") or [])
        elif msg_type == "progress_state":
            for nid, st in (data.get("nodes") or {}).items():
                if st.get("state") == "finished" and nid not in run.cached and nid not in run.executed:
                    run.executed.append(nid)
        elif msg_type == "executed":
            node, output = data.get("node"), data.get("output")
            if output is not None:
                run.outputs[node] = output
                run.meta[node] = {"node_id": node, "display_node": data.get("display_node", node),
                                  "parent_node": None, "real_node_id": node}
                self._register_files({node: output})
        if msg_type in HISTORY_MESSAGES:
            run.messages.append([msg_type, data])
        if msg_type in TERMINAL:
            run.terminal = msg_type

    def _register_files(self, outputs: dict) -> None:
        for output in outputs.values():
            for img in (output or {}).get("images") or []:
                if isinstance(img, dict) and img.get("filename"):
                    key = (img.get("type") or "output", img.get("subfolder") or "", img["filename"])
                    self.add_file(*key)

    def _flush_type1(self, run: Run) -> None:
        frames, run.pending_type1 = run.pending_type1, []
        for frame in frames:
            if run.job.client_id is None:
                self._broadcast(frame)
            else:
                self._send_to(run.job.client_id, frame)

    def _send_to(self, client_id: str, payload) -> None:
        conn = self._table.get(client_id)
        if conn is not None:  # no socket for that id: dropped, never buffered (PROTOCOL.md §2.4)
            conn.send(payload)
        self._sent(client_id, payload)

    def _sent(self, client_id: str, payload) -> None:
        """Every message addressed to one client passes here after delivery (tests' relay node hooks in)."""

    def _broadcast(self, payload) -> None:
        for conn in list(self._table.values()):
            conn.send(payload)

    def _status(self) -> dict:
        return {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}}

    def _broadcast_status(self) -> None:
        self._broadcast(json.dumps(self._status()))

    # ---- WebSocket -----------------------------------------------------------------------------------
    def _ws_session(self, ws) -> None:
        client_id = request.args.get("clientId") or uuid.uuid4().hex
        conn = Conn(ws, client_id)
        # A duplicate id silently replaces the older socket in the table (PROTOCOL.md §2.2).
        self._table[client_id] = conn
        self._conns.add(conn)
        greeting = self._status()
        greeting["data"]["sid"] = client_id
        conn.send(json.dumps(greeting))
        self._sent(client_id, json.dumps(greeting))
        run = self.running
        if run is not None and run.job.client_id == client_id and run.current_node is not None:
            hint = json.dumps({"type": "executing", "data": {"node": run.current_node}})
            conn.send(hint)
            self._sent(client_id, hint)
        try:
            while True:
                raw = ws.receive()
                if raw is None:
                    break
                if isinstance(raw, str):
                    self._client_text(conn, raw)
        finally:
            # Whichever socket of a duplicated id closes, the id leaves the table (the real quirk).
            self._table.pop(client_id, None)
            self._conns.discard(conn)
            conn.close()

    def _client_text(self, conn: Conn, raw: str) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return  # logged and ignored by ComfyUI; does not count as the first frame
        if not conn.first_frame_seen and isinstance(data, dict) and data.get("type") == "feature_flags":
            flags = data.get("data") or {}
            conn.wants_metadata = flags.get("supports_preview_metadata") is True
            conn.send(json.dumps({"type": "feature_flags", "data": dict(SERVER_FEATURES)}))
            self._sent(conn.client_id, json.dumps({"type": "feature_flags", "data": dict(SERVER_FEATURES)}))
        conn.first_frame_seen = True

    # ---- HTTP ------------------------------------------------------------------------------------------
    def _make_app(self) -> Flask:
        app = Flask("simcomfy")
        sock = Sock(app)
        routes = [
            ("/prompt", "post_prompt", self._post_prompt, ["POST"]),
            ("/prompt", "get_prompt", self._get_prompt, ["GET"]),
            ("/queue", "get_queue", self._get_queue, ["GET"]),
            ("/queue", "post_queue", self._post_queue, ["POST"]),
            ("/history", "get_history", self._get_history, ["GET"]),
            ("/history", "post_history", self._post_history, ["POST"]),
            ("/history/<prompt_id>", "get_history_one", self._get_history_one, ["GET"]),
            ("/interrupt", "interrupt", self._post_interrupt, ["POST"]),
            ("/view", "view", self._view, ["GET"]),
            ("/system_stats", "system_stats", self._get_system_stats, ["GET"]),
            ("/features", "features", lambda: _json(SERVER_FEATURES), ["GET"]),
        ]
        for path, name, fn, methods in routes:
            app.add_url_rule(path, name, fn, methods=methods)
            app.add_url_rule("/api" + path, "api_" + name, fn, methods=methods)
        if self.newer:
            app.add_url_rule("/api/jobs", "jobs", self._get_jobs, methods=["GET"])
            app.add_url_rule("/api/jobs/<job_id>", "job", self._get_job, methods=["GET"])
            app.add_url_rule("/api/jobs/<job_id>/cancel", "job_cancel", self._cancel_job, methods=["POST"])
        sock.route("/ws", endpoint="ws")(self._ws_session)
        sock.route("/api/ws", endpoint="api_ws")(self._ws_session)

        @app.before_request
        def _log_request():
            self.requests.append((request.method, request.path))
        return app

    def _post_prompt(self):
        try:
            body = json.loads(request.get_data() or b"")
        except ValueError:
            return Response("500 Internal Server Error\n\nServer got itself in trouble", 500,
                            content_type="text/plain; charset=utf-8")
        self.posted.append(body)
        if not isinstance(body, dict):
            return Response("500 Internal Server Error\n\nServer got itself in trouble", 500,
                            content_type="text/plain; charset=utf-8")
        # The number is taken before validation, so rejected prompts use one up too (PROTOCOL.md §6.1).
        if "number" in body:
            number = float(body["number"])
        else:
            number = -self.number if body.get("front") else self.number
            self.number += 1
        if "prompt" not in body:
            return _json({"error": _error("no_prompt", "No prompt provided", "No prompt provided"),
                          "node_errors": {}}, 400)
        prompt = body["prompt"]
        engine = self._engine_for_new_prompt()
        error, outputs = self._validate(prompt, engine, body.get("partial_execution_targets"))
        if error is not None:
            return _json({"error": error, "node_errors": {}}, 400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        job = Job(number, str(body.get("prompt_id") or uuid.uuid4()), prompt, extra, outputs, engine)
        self._put(job)
        return _json({"prompt_id": job.prompt_id, "number": number, "node_errors": {}})

    @staticmethod
    def _validate(prompt, engine: Engine, targets) -> tuple[dict | None, list]:
        if not isinstance(prompt, dict):
            return _error("invalid_prompt", "Cannot execute because the prompt is not an object.", ""), []
        for node_id, node in prompt.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type is None:
                return _error("invalid_prompt", "Cannot execute because a node is missing the class_type "
                              "property.", f"Node ID '#{node_id}'"), []
            if not engine.knows(class_type):
                return _error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                              f"Node ID '#{node_id}'"), []
        if targets:
            outputs = [str(t) for t in targets if str(t) in prompt]
        else:
            outputs = [nid for nid, node in prompt.items() if engine.is_output(node["class_type"])]
        if not outputs:
            return _error("prompt_no_outputs", "Prompt has no outputs", ""), []
        return None, outputs

    def _get_prompt(self):
        return _json({"exec_info": {"queue_remaining": self.queue_remaining()}})

    def _get_queue(self):
        running = [self.running.job.entry()] if self.running else []
        return _json({"queue_running": running, "queue_pending": [j.entry() for _, _, j in self._pending]})

    def _post_queue(self):
        body = request.get_json(force=True, silent=True) or {}
        if body.get("clear"):
            self._pending.clear()
            self._broadcast_status()
        for prompt_id in body.get("delete") or []:
            for i, (_, _, job) in enumerate(self._pending):
                if job.prompt_id == prompt_id:
                    was_last = len(self._pending) == 1
                    self._pending.pop(i)
                    heapq.heapify(self._pending)
                    self._broadcast_status()
                    if was_last:  # ComfyUI wipes the queue then, which broadcasts a second time
                        self._broadcast_status()
                    break
        return _empty()

    def _get_history(self):
        max_items = request.args.get("max_items", type=int)
        offset = request.args.get("offset", default=-1, type=int)
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out = {}
        for i, (key, entry) in enumerate(self.history.items()):
            if i >= offset:
                out[key] = entry
                if max_items is not None and len(out) >= max_items:
                    break
        return _json(out)

    def _post_history(self):
        body = request.get_json(force=True, silent=True) or {}
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete") or []:
            self.history.pop(prompt_id, None)
        return _empty()

    def _get_history_one(self, prompt_id):
        entry = self.history.get(prompt_id)
        return _json({prompt_id: entry} if entry is not None else {})

    def _post_interrupt(self):
        body = request.get_json(force=True, silent=True) or {}
        self.interrupt(body.get("prompt_id") if isinstance(body, dict) else None)
        return _empty()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is `prompt_id`, when given)."""
        run = self.running
        if run is None or (prompt_id and run.job.prompt_id != prompt_id):
            return False
        run.interrupt.set()
        return True

    def _view(self):
        args = request.args
        filename = args.get("filename")
        if filename is None:
            return _empty(404)
        if not filename or filename[0] == "/" or ".." in filename:
            return _empty(400)
        kind = args.get("type", "output")
        if kind not in ("output", "input", "temp"):
            return _empty(400)
        subfolder = args.get("subfolder", "")
        # ComfyUI: os.path.commonpath(abspath(base/subfolder), base) != base -> 403
        base = os.path.abspath(os.path.join(os.sep, "comfy", kind))
        if os.path.commonpath((os.path.abspath(os.path.join(base, subfolder)), base)) != base:
            return _empty(403)
        subfolder = os.path.normpath(subfolder) if subfolder else ""
        key = (kind, "" if subfolder == "." else subfolder, os.path.basename(filename))
        if key not in self._files:
            return _empty(404)
        data = self._files[key]
        if data is None:
            data = self._files[key] = self.engine_for_files().render_file(*key)
        mime = "image/png"
        if key in self._given:  # bytes given to add_file(): typed by name, as aiohttp's FileResponse does
            mime = mimetypes.guess_type(key[2])[0] or "application/octet-stream"
        preview = args.get("preview")
        if preview:
            fmt, _, quality = preview.partition(";")
            if fmt in ("webp", "jpeg"):
                data, mime = reencode(data, fmt, int(quality or 90)), f"image/{fmt}"
        resp = Response(data, 200, content_type=mime)
        resp.headers["Content-Disposition"] = f'filename="{key[2]}"'
        return resp

    def engine_for_files(self) -> Engine:
        return self.engine

    def add_file(self, kind: str, subfolder: str, filename: str, data: bytes | None = None) -> None:
        """Make /view serve a file (None: rendered by the engine on first request)."""
        key = (kind, subfolder, filename)
        if data is None and key in self._files:
            return
        self._files[key] = data
        if data is not None:
            self._given.add(key)
        while len(self._files) > FILES_MAX:
            self._files.popitem(last=False)

    def _get_system_stats(self):
        if self._system_stats is not None:
            return _json(self._system_stats)
        try:
            import psutil
            vm = psutil.virtual_memory()
            total, free = vm.total, vm.available
        except Exception:  # psutil missing: numbers of the recording
            total, free = 25276514304, 24230670336
        return _json({
            "system": {"os": "posix", "ram_total": total, "ram_free": free, "comfyui_version": "0.3.64",
                       "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
                       "required_templates_version": "0.1.95", "python_version": "3.11.7 (simulated)",
                       "pytorch_version": "2.14.1+cu130", "embedded_python": False,
                       "argv": ["main.py", "--cpu", "--preview-method", "auto", "(SimComfy)"]},
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free,
                         "torch_vram_total": total, "torch_vram_free": free}]})

    # ---- newer servers (NEWER_COMFYUI.md §2): /api/jobs and cancel --------------------------------------
    def _job_summary(self, job_entry: list, status: str, history: dict | None = None) -> dict:
        number, prompt_id, _prompt, extra, _outs = job_entry
        out = {"id": prompt_id, "status": status, "priority": number,
               "create_time": self.create_times.get(prompt_id),
               "workflow_id": ((extra.get("extra_pnginfo") or {}).get("workflow") or {}).get("id"),
               "outputs_count": 0}
        if history is not None:
            images = [img for o in history.get("outputs", {}).values() for img in (o.get("images") or [])]
            out["outputs_count"] = len(images)
            out["preview_output"] = images[0] if images else None
            msgs = history.get("status", {}).get("messages", [])
            if msgs:
                out["execution_start_time"] = msgs[0][1].get("timestamp")
                out["execution_end_time"] = msgs[-1][1].get("timestamp")
                if msgs[-1][0] == "execution_error":
                    out["execution_error"] = msgs[-1][1]
        return {k: v for k, v in out.items() if v is not None}

    @staticmethod
    def _history_status(entry: dict) -> str:
        status = entry.get("status")
        if not status or status.get("status_str") == "success":
            return "completed"
        msgs = status.get("messages") or []
        if any(m[0] == "execution_interrupted" for m in msgs):
            return "cancelled"
        return "failed"

    def _all_jobs(self) -> list[dict]:
        jobs = []
        if self.running:
            jobs.append(self._job_summary(self.running.job.entry(), "in_progress"))
        jobs += [self._job_summary(j.entry(), "pending") for _, _, j in self._pending]
        jobs += [self._job_summary(e["prompt"], self._history_status(e), e) for e in self.history.values()]
        return jobs

    def _get_jobs(self):
        allowed = {"pending", "in_progress", "completed", "failed", "cancelled"}
        wanted = [s for s in request.args.get("status", "").split(",") if s]
        if any(s not in allowed for s in wanted):
            return _json({"error": f"Invalid status; allowed: {sorted(allowed)}"}, 400)
        try:
            limit = request.args.get("limit")
            limit = int(limit) if limit is not None else None
            offset = max(0, int(request.args.get("offset", 0)))
        except ValueError:
            return _json({"error": "limit and offset must be integers"}, 400)
        if limit is not None and limit <= 0:
            return _json({"error": "limit must be a positive integer"}, 400)
        jobs = [j for j in self._all_jobs() if not wanted or j["status"] in wanted]
        key = "create_time" if request.args.get("sort_by", "created_at") == "created_at" else None
        jobs.sort(key=lambda j: (j.get(key, 0) if key else
                                 j.get("execution_end_time", 0) - j.get("execution_start_time", 0)),
                  reverse=request.args.get("sort_order", "desc") != "asc")
        page = jobs[offset:offset + limit] if limit is not None else jobs[offset:]
        return _json({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": len(jobs),
                                                   "has_more": offset + len(page) < len(jobs)}})

    def _get_job(self, job_id):
        for job in self._all_jobs():
            if job["id"] == job_id:
                entry = self.history.get(job_id)
                if entry is not None:
                    job = dict(job, outputs=entry.get("outputs", {}), execution_status=entry.get("status"),
                               workflow={"prompt": entry["prompt"][2], "extra_data": entry["prompt"][3]})
                return _json(job)
        return _json({"error": "Job not found"}, 404)

    def _cancel_job(self, job_id):
        if self.running and self.running.job.prompt_id == job_id:
            self.interrupt(job_id)
            return _json({"cancelled": True, "status": "in_progress"})
        for i, (_, _, job) in enumerate(self._pending):
            if job.prompt_id == job_id:
                self._pending.pop(i)
                heapq.heapify(self._pending)
                self._broadcast_status()
                return _json({"cancelled": True, "status": "pending"})
        if job_id in self.history:
            return _json({"cancelled": False, "status": self._history_status(self.history[job_id])})
        return _json({"error": "Job not found"}, 404)


def _json(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj), status, content_type="application/json; charset=utf-8")


def _empty(status: int = 200) -> Response:
    resp = Response(b"", status)
    del resp.headers["Content-Type"]  # aiohttp's bare responses carry none
    return resp


def _error(kind: str, message: str, details: str) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


# --------------------------------------------------------------------------------------------------------
# Pictures (Pillow): "denoising" previews and saved outputs

def _palette(seed: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    rnd = random.Random(seed)
    return (tuple(rnd.randrange(40, 256) for _ in range(3)), tuple(rnd.randrange(0, 160) for _ in range(3)))


@lru_cache(maxsize=16)
def _target_image(seed: int, size: int):
    from PIL import Image, ImageChops
    a, b = _palette(seed)
    radial = Image.radial_gradient("L").resize((size, size))
    linear = Image.linear_gradient("L").resize((size, size)).rotate(90 * (seed % 4))
    mask = ImageChops.multiply(ImageChops.invert(radial), linear).point(lambda v: min(255, v * 2))
    return Image.composite(Image.new("RGB", (size, size), a), Image.new("RGB", (size, size), b), mask)


@lru_cache(maxsize=256)
def preview_jpeg(seed: int, level: int, levels: int = 16, size: int = 256) -> bytes:
    """A JPEG that goes from noise (level 0) to the clean picture (level == levels). Cached: a demo
    sampler at 20 steps/s reuses a handful of frames instead of encoding each one."""
    from PIL import Image
    target = _target_image(seed % 64, size)
    # Coarse noise, smoothed up: looks like latent noise and keeps each JPEG around 10 KB.
    noise = Image.effect_noise((size // 4, size // 4), 90).convert("RGB").resize((size, size), Image.BILINEAR)
    frame = Image.blend(noise, target, min(1.0, 0.15 + 0.85 * level / levels))
    buf = io.BytesIO()
    frame.save(buf, "JPEG", quality=75)
    return buf.getvalue()


def render_png(name: str, size: int = 256) -> bytes:
    seed = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
    buf = io.BytesIO()
    _target_image(seed % 64, size).save(buf, "PNG")
    return buf.getvalue()


def reencode(data: bytes, fmt: str, quality: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, fmt.upper(), quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------
# Synthetic engine

# Core node classes the fake accepts (anything else is "does not exist", like a server without that node).
KNOWN_CLASSES = frozenset("""
CheckpointLoaderSimple CheckpointLoader LoraLoader LoraLoaderModelOnly VAELoader CLIPLoader DualCLIPLoader
UNETLoader ControlNetLoader ControlNetApply ControlNetApplyAdvanced CLIPTextEncode CLIPSetLastLayer
ConditioningCombine ConditioningSetArea ConditioningZeroOut EmptyLatentImage EmptySD3LatentImage LatentUpscale
LatentUpscaleBy LatentComposite VAEDecode VAEEncode VAEEncodeForInpaint VAEDecodeTiled KSampler KSamplerAdvanced
SamplerCustom SamplerCustomAdvanced KSamplerSelect BasicScheduler BasicGuider CFGGuider RandomNoise
FluxGuidance ModelSamplingFlux ModelSamplingSD3 LoadImage LoadImageMask ImageScale ImageScaleBy ImageInvert
ImageBlur ImageSharpen ImageCrop ImagePadForOutpaint ImageBatch ImageUpscaleWithModel UpscaleModelLoader
EmptyImage GetImageSize SaveImage PreviewImage PreviewAny PrimitiveInt PrimitiveFloat PrimitiveString
PrimitiveBoolean Reroute Note MarkdownNote MonitorProbeSampler SaveAnimatedWEBP SaveAnimatedPNG SaveVideo
SaveWEBM SaveLatent LoadLatent SetLatentNoiseMask RepeatLatentBatch StringConcatenate SimpleMath+
""".split())

SLOW_CLASSES = {"CheckpointLoaderSimple": 0.35, "CheckpointLoader": 0.35, "UNETLoader": 0.3, "VAEDecode": 0.25,
                "VAEEncode": 0.2, "CLIPTextEncode": 0.05, "ImageUpscaleWithModel": 0.4, "LoraLoader": 0.1}

SAMPLE_TRACEBACK = [
    '  File "/srv/ComfyUI/execution.py", line 496, in execute\n    output_data, output_ui, has_subgraph, '
    'has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all)\n',
    '  File "/srv/ComfyUI/execution.py", line 277, in process_inputs\n    result = f(**inputs)\n',
    '  File "/srv/ComfyUI/comfy/samplers.py", line 1049, in sample\n    raise SimulatedFailure(msg)\n',
]


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


class SyntheticEngine(Engine):
    """Invents a run for any API-format graph: cached nodes, per-node progress_state/executing,
    sampler steps with JPEG previews, outputs that /view serves, and occasional failures."""

    def __init__(self, step_s: float = 0.12, default_steps: int = 20, failure_rate: float = 0.0,
                 extra_classes: frozenset | set = frozenset(), seed: int | None = None,
                 preview_size: int = 256, cache_size: int = 512, time_scale: float = 1.0):
        self.step_s = step_s
        self.time_scale = time_scale  # multiplies every delay (tests run at e.g. 0.05)
        self.default_steps = default_steps
        self.failure_rate = failure_rate
        self.known = KNOWN_CLASSES | frozenset(extra_classes)
        self.random = random.Random(seed)
        self.preview_size = preview_size
        self.cache_size = cache_size
        self.reset()

    def reset(self) -> None:
        self.cache: OrderedDict[str, object] = OrderedDict()  # node signature -> its UI output (or None)
        self.counters: dict[str, int] = {}
        self.temp_prefix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))

    def knows(self, class_type: str) -> bool:
        return class_type in self.known or "Sampler" in class_type

    @staticmethod
    def is_sampler(class_type: str) -> bool:
        return "Sampler" in class_type and class_type not in ("KSamplerSelect",)

    # ---- graph helpers -------------------------------------------------------------------------------
    @staticmethod
    def _needed(prompt: dict, outputs: list) -> list[str]:
        """Nodes the outputs depend on, in an executable order (inputs first)."""
        order, seen = [], set()

        def visit(nid: str):
            if nid in seen or nid not in prompt:
                return
            seen.add(nid)
            for value in (prompt[nid].get("inputs") or {}).values():
                if _is_link(value):
                    visit(value[0])
            order.append(nid)
        for out in outputs:
            visit(out)
        return order

    @staticmethod
    def _signatures(prompt: dict, order: list[str]) -> dict[str, str]:
        sigs: dict[str, str] = {}
        for nid in order:
            node = prompt[nid]
            inputs = {k: (["link", sigs.get(v[0]), v[1]] if _is_link(v) else v)
                      for k, v in sorted((node.get("inputs") or {}).items())}
            sigs[nid] = hashlib.sha1(json.dumps([node["class_type"], inputs], sort_keys=True,
                                                default=str).encode()).hexdigest()
        return sigs

    # ---- the run -------------------------------------------------------------------------------------
    def run(self, job: Job, run: Run):
        prompt, pid = job.prompt, job.prompt_id
        order = self._needed(prompt, job.outputs_to_execute)
        sigs = self._signatures(prompt, order)
        cached = [nid for nid in order if sigs[nid] in self.cache]
        fail_node, fail_step = self._planned_failure(prompt, order, cached)
        states: dict[str, dict] = {}

        def progress_state(nid, value, maximum, state):
            states[nid] = {"value": value, "max": maximum, "state": state, "node_id": nid, "prompt_id": pid,
                           "display_node_id": nid, "parent_node_id": None, "real_node_id": nid}
            return {"type": "progress_state", "data": {"prompt_id": pid,
                                                       "nodes": {k: dict(v) for k, v in states.items()}}}

        yield 0, {"type": "execution_start", "data": {"prompt_id": pid}}
        yield 0, {"type": "execution_cached", "data": {"nodes": cached, "prompt_id": pid}}
        for nid in order:
            class_type = prompt[nid]["class_type"]
            if nid in cached:
                if self.is_output(class_type):
                    yield 0, {"type": "executed", "data": {"node": nid, "display_node": nid,
                                                           "output": self.cache[sigs[nid]], "prompt_id": pid}}
                    yield 0, progress_state(nid, 1, 1, "finished")
                continue
            yield 0, progress_state(nid, 0.0, 1.0, "running")
            yield 0, {"type": "executing", "data": {"node": nid, "display_node": nid, "prompt_id": pid}}
            yield 0, CHECK
            maximum = 1.0
            if self.is_sampler(class_type):
                inputs = prompt[nid].get("inputs") or {}
                steps = _int(inputs.get("steps"), self.default_steps)
                delay = _int(inputs.get("delay_ms"), None)
                delay = (self.step_s if delay is None else delay / 1000.0) * self.time_scale
                seed = _int(inputs.get("seed", inputs.get("noise_seed")), 0)
                for step in range(1, steps + 1):
                    yield delay, CHECK
                    if nid == fail_node and step == fail_step:
                        yield 0, self._error(job, run, nid, class_type, step, steps, inputs)
                        return
                    yield 0, progress_state(nid, step, steps, "running")
                    level = round(16 * step / steps)
                    yield 0, Preview(preview_jpeg(seed, level, 16, self.preview_size), nid)
                    yield 0, {"type": "progress", "data": {"value": step, "max": steps, "prompt_id": pid,
                                                           "node": nid}}
                maximum = steps
            else:
                delay = SLOW_CLASSES.get(class_type, 0.0) * self.time_scale
                if delay:
                    yield delay, CHECK
                if nid == fail_node:
                    yield 0, self._error(job, run, nid, class_type, None, None, prompt[nid].get("inputs") or {})
                    return
            if class_type == "GetImageSize":
                yield 0, TextFrame(nid, "width: 512, height: 512\n batch size: 1")
            output = self._ui_output(prompt, nid, class_type)
            self._remember(sigs[nid], output)
            if output is not None:
                yield 0, {"type": "executed", "data": {"node": nid, "display_node": nid, "output": output,
                                                       "prompt_id": pid}}
            yield 0, progress_state(nid, maximum, maximum, "finished")
        yield 0, {"type": "execution_success", "data": {"prompt_id": pid}}

    def _planned_failure(self, prompt, order, cached) -> tuple[str | None, int | None]:
        runnable = [n for n in order if n not in cached]
        for nid in runnable:
            at = _int((prompt[nid].get("inputs") or {}).get("fail_at_step"), 0)
            if prompt[nid]["class_type"] == "MonitorProbeSampler" and at > 0:
                return nid, at
        if runnable and self.failure_rate and self.random.random() < self.failure_rate:
            samplers = [n for n in runnable if self.is_sampler(prompt[n]["class_type"])]
            if samplers:
                steps = _int((prompt[samplers[0]].get("inputs") or {}).get("steps"), self.default_steps)
                return samplers[0], self.random.randint(1, max(1, steps))
            return self.random.choice(runnable), None
        return None, None

    def _error(self, job, run, nid, class_type, step, steps, inputs) -> dict:
        if class_type == "MonitorProbeSampler":
            message = f"monitor_probe: deliberate failure at step {step}/{steps} (seed={inputs.get('seed')})\n"
            exc_type = "/srv/ComfyUI/custom_nodes/monitor_probe.MonitorProbeFailure"
        else:
            where = f" at step {step}/{steps}" if step else ""
            message = f"Simulated failure in {class_type}{where} (demo mode)\n"
            exc_type = "SimulatedFailure"
        return {"type": "execution_error", "data": {
            "prompt_id": job.prompt_id, "node_id": nid, "node_type": class_type, "executed": list(run.executed),
            "exception_message": message, "exception_type": exc_type, "traceback": list(SAMPLE_TRACEBACK),
            "current_inputs": {k: [str(v)] for k, v in inputs.items()},
            "current_outputs": list(job.prompt)}}

    def _ui_output(self, prompt, nid, class_type) -> dict | None:
        inputs = prompt[nid].get("inputs") or {}
        if class_type == "PreviewAny":
            source = inputs.get("source")
            value = prompt.get(source[0], {}).get("inputs", {}).get("value") if _is_link(source) else source
            return {"text": [str(value)]}
        if not self.is_output(class_type):
            return None
        if class_type == "PreviewImage":
            return {"images": [{"filename": self._next_name(f"ComfyUI_temp_{self.temp_prefix}"),
                                "subfolder": "", "type": "temp"}]}
        prefix = str(inputs.get("filename_prefix") or "ComfyUI")
        subfolder, _, base = prefix.rpartition("/")
        ext = ".webp" if "WEBP" in class_type else ".png"
        return {"images": [{"filename": self._next_name(base, subfolder, ext), "subfolder": subfolder,
                            "type": "output"}]}

    def _next_name(self, base: str, subfolder: str = "", ext: str = ".png") -> str:
        key = f"{subfolder}/{base}"
        self.counters[key] = self.counters.get(key, 0) + 1
        return f"{base}_{self.counters[key]:05d}_{ext}"

    def _remember(self, sig: str, output) -> None:
        self.cache[sig] = output
        self.cache.move_to_end(sig)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    def render_file(self, kind: str, subfolder: str, filename: str) -> bytes:
        return render_png(filename, self.preview_size)


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# --------------------------------------------------------------------------------------------------------
# Demo traffic: an external client that keeps the page alive

DEMO_PROMPT = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "demo_model.safetensors"},
          "_meta": {"title": "Load Checkpoint"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]},
          "_meta": {"title": "Positive prompt"}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["1", 1]},
          "_meta": {"title": "Negative prompt"}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1},
          "_meta": {"title": "Empty Latent"}},
    "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                               "latent_image": ["4", 0], "seed": 0, "steps": 20, "cfg": 7.0,
                                               "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
          "_meta": {"title": "KSampler"}},
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]},
          "_meta": {"title": "VAE Decode"}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "demo/external"},
          "_meta": {"title": "Save Image"}},
}
DEMO_SUBJECTS = ["a lighthouse at dusk, oil painting", "a red fox in fresh snow", "a city of glass at night",
                 "an orchard in spring, watercolor", "a tiny robot reading a book", "mountains above the clouds"]


def start_demo_traffic(url: str, every_s: float = 8.0, client_id: str | None = None,
                       max_pending: int = 2, seed: int | None = None) -> gevent.Greenlet:
    """Post a text-to-image prompt every `every_s` seconds as an external client (its own clientId, or none
    with client_id=""), while fewer than `max_pending` prompts wait. Returns the greenlet; kill it to stop."""
    import requests
    rnd = random.Random(seed)
    cid = f"demo-{uuid.uuid4().hex[:8]}" if client_id is None else client_id

    def loop():
        while True:
            try:
                remaining = requests.get(f"{url}/prompt", timeout=5).json()["exec_info"]["queue_remaining"]
                if remaining <= max_pending:
                    prompt = json.loads(json.dumps(DEMO_PROMPT))
                    prompt["2"]["inputs"]["text"] = rnd.choice(DEMO_SUBJECTS)
                    prompt["5"]["inputs"]["seed"] = rnd.randrange(2 ** 32)
                    prompt["5"]["inputs"]["steps"] = rnd.choice([12, 20, 28])
                    body = {"prompt": prompt}
                    if cid:
                        body["client_id"] = cid
                    requests.post(f"{url}/prompt", json=body, timeout=5)
            except Exception as exc:  # the fake server may be restarting; keep trying
                log.debug("demo traffic: %s", exc)
            gevent.sleep(every_s * rnd.uniform(0.7, 1.3))
    return gevent.spawn(loop)


def start_demo(host: str = "127.0.0.1", port: int = 0, traffic_every_s: float | None = 8.0,
               failure_rate: float = DEMO_FAILURE_RATE, step_s: float = 0.3,
               system_stats: dict | None = None) -> SimComfy:
    """`--demo`: a started SimComfy whose synthetic runs fail now and then, plus external traffic
    (None: no traffic). `sim.traffic` is the traffic greenlet (or None)."""
    # Steps slow enough for a person to watch (a real sampler runs a few it/s).
    sim = SimComfy(SyntheticEngine(failure_rate=failure_rate, step_s=step_s), host=host, port=port,
                   system_stats=system_stats)
    sim.start()
    sim.traffic = start_demo_traffic(sim.url, every_s=traffic_every_s) if traffic_every_s else None
    return sim


def demo_system_stats(index: int) -> dict:
    """What a simulated farm machine's /system_stats says: one CUDA GPU, its VRAM partly in use."""
    gib = 1024 ** 3
    vram = (24, 16, 48, 12)[index % 4] * gib
    return {"system": {"os": "posix", "ram_total": 64 * gib, "ram_free": (40 - 7 * (index % 3)) * gib,
                       "comfyui_version": "0.3.64", "python_version": "3.11.7 (simulated)",
                       "argv": ["main.py", "(SimComfy)"]},
            "devices": [{"name": f"cuda:0 NVIDIA GeForce RTX {('4090', '4080', 'A6000', '3060')[index % 4]} "
                                 "(simulated) : cudaMallocAsync", "type": "cuda", "index": 0,
                         "vram_total": vram, "vram_free": int(vram * (0.35 + 0.15 * (index % 3))),
                         "torch_vram_total": vram, "torch_vram_free": vram // 2}]}


def start_demo_fleet(count: int, host: str = "127.0.0.1") -> list[tuple[str, SimComfy]]:
    """`--demo --demo-hosts N`: N started SimComfys named gpu1..gpuN, each sampling a little slower than the
    one before (so several jobs run at different speeds at once); the others report a simulated GPU."""
    return [(f"gpu{i + 1}", start_demo(host, traffic_every_s=None, step_s=round(0.25 + 0.07 * i, 2),
                                       system_stats=demo_system_stats(i) if i else None))
            for i in range(count)]


def drive_monitor(monitor, sim, every_s: float = 6.0, external_every: int = 4,
                  max_active: int = 3, seed: int | None = None) -> gevent.Greenlet:
    """`--demo`'s traffic: submit a text-to-image job through the monitor itself (full live detail; with
    several simulators the monitor routes it), and every `external_every`-th one straight to a simulator
    under another client id, as ComfyUI's own UI would (it shows up as an external job). `sim`: one
    SimComfy, or a list of them (then `max_active` and the pace are per simulator)."""
    import requests
    sims = list(sim) if isinstance(sim, (list, tuple)) else [sim]
    rnd = random.Random(seed)
    foreign = f"comfyui-tab-{uuid.uuid4().hex[:6]}"

    def one_prompt() -> dict:
        prompt = json.loads(json.dumps(DEMO_PROMPT))
        prompt["2"]["inputs"]["text"] = rnd.choice(DEMO_SUBJECTS)
        prompt["5"]["inputs"]["seed"] = rnd.randrange(2 ** 32)
        prompt["5"]["inputs"]["steps"] = rnd.choice([12, 20, 28])
        return prompt

    def loop():
        count = 0
        while True:
            try:
                connected = any(host.listener.connected for host in monitor.hosts)
                if connected and len(monitor.active_jobs()) < max_active * len(sims):
                    count += 1
                    if count % external_every == 0:
                        requests.post(f"{rnd.choice(sims).url}/prompt",
                                      json={"prompt": one_prompt(), "client_id": foreign}, timeout=5)
                    else:
                        monitor.submit(one_prompt(), workflow_name="Demo text-to-image")
            except Exception as exc:  # the simulator may be restarting; keep going
                log.debug("demo driver: %s", exc)
            gevent.sleep(every_s / len(sims) * rnd.uniform(0.6, 1.4))
    return gevent.spawn(loop)
