"""ComfyUI's HTTP API as the monitor uses it: one requests session, Basic auth from the URL, a total deadline
on every call, and answers checked for the shape ComfyUI gives (an unreadable answer is an error, never
"empty")."""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field

import gevent
import requests

from . import protocol

log = logging.getLogger(__name__)

_QUEUE_LISTS = ("queue_running", "queue_pending")


class ComfyUnavailable(RuntimeError):
    """ComfyUI could not be reached (connection refused, timeout, TLS failure) or gave no usable answer."""


class ComfyBadAnswer(ComfyUnavailable):
    """A 2xx answer whose body is not what this endpoint returns: an HTML login page from a proxy, JSON of
    another shape, JSON nested absurdly deep. It says nothing about ComfyUI's state, so it is handled like no
    answer at all: keep what we know, ask again later."""


class ComfyRejected(RuntimeError):
    """ComfyUI answered with an error status; `status` and `body` say what it said."""

    def __init__(self, status: int, body, message: str):
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class Features:
    """What the connected server supports, probed rather than guessed from its version."""
    jobs_api: bool = False
    cancel_api: bool = False
    version: str | None = None
    probed: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"jobs_api": self.jobs_api, "cancel_api": self.cancel_api, "version": self.version}


class ComfyClient:
    """Every method raises ComfyUnavailable (incl. ComfyBadAnswer) when ComfyUI gives no usable answer
    within `timeout` seconds in all (not per read: a server trickling bytes is cut off too), and
    ComfyRejected when it answers 4xx/5xx."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None, timeout: float = 10.0,
                 view_body_timeout: float = 300.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.view_body_timeout = view_body_timeout
        self.session = requests.Session()
        if auth:
            self.session.auth = auth
        self.features = Features()
        self._bad: dict[str, str] = {}          # endpoint -> problem already logged (until it answers well)
        self._skipped: dict[str, None] = {}     # prompt ids of /queue entries already logged as skipped
        self._deep_noted: set[str] = set()      # endpoints whose too-deep parts were logged
        self._pruned = 0                        # too-deep parts the last parsed answer had replaced

    # --- plumbing -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, timeout: float | None = None, **kw) -> requests.Response:
        limit = timeout or self.timeout
        # requests' timeout bounds each socket read, not the call: a server sending a byte a second would
        # hold us for as long as it likes. The gevent timer bounds the whole call (headers and, unless
        # streamed, the body).
        timer = gevent.Timeout(limit)
        timer.start()
        try:
            return self.session.request(method, self.base + path, timeout=limit, **kw)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise ComfyUnavailable(f"{method} {path}: no complete answer within {limit:g} s") from None
        except requests.RequestException as exc:
            raise ComfyUnavailable(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            timer.close()

    def _json(self, method: str, path: str, resp: requests.Response | None = None, **kw):
        """The JSON of a 2xx answer (too-deep parts replaced by protocol.TOO_DEEP)."""
        resp = resp if resp is not None else self._request(method, path, **kw)
        if resp.status_code >= 400:
            body = _safe_json(resp)
            raise ComfyRejected(resp.status_code, body, f"{method} {path} answered {resp.status_code}")
        try:
            value, pruned = protocol.load_json(resp.content, prune=True)
        except protocol.ProtocolError:
            raise self._bad_answer(method, path, "not JSON", resp) from None
        self._pruned = pruned
        key = f"{method} {_endpoint(path)}"
        if pruned and key != "GET /queue" and key not in self._deep_noted:   # /queue logs the entry it skips
            self._deep_noted.add(key)
            log.warning("ComfyUI %s %s: parts nested deeper than %d levels were ignored (logged once)",
                        method, path, protocol.MAX_JSON_DEPTH)
        return value

    def _object(self, method: str, path: str, **kw) -> dict:
        value = self._json(method, path, **kw)
        if not isinstance(value, dict):
            raise self._bad_answer(method, path, f"JSON {type(value).__name__}, not an object")
        return value

    def _bad_answer(self, method: str, path: str, problem: str, resp: requests.Response | None = None):
        if resp is not None:
            ctype = resp.headers.get("Content-Type") or "no content type"
            problem = f"{problem} ({resp.status_code}, {ctype}): {bytes(resp.content[:60])!r}"
        key = f"{method} {_endpoint(path)}"
        if self._bad.get(key) != problem.split(":")[0]:
            self._bad[key] = problem.split(":")[0]
            log.warning("ComfyUI answered %s %s with something unreadable: %s. Counted as no answer (state "
                        "kept, asked again later); logged once until it answers properly.", method, path, problem)
        return ComfyBadAnswer(f"{method} {path}: {problem}")

    def unreadable(self, method: str, path: str) -> str | None:
        """What was wrong with the last answer to this endpoint, while it keeps answering badly."""
        return self._bad.get(f"{method} {_endpoint(path)}")

    def _answered_well(self, method: str, path: str) -> None:
        if self._bad and self._bad.pop(f"{method} {_endpoint(path)}", None) is not None:
            log.info("ComfyUI answers %s %s properly again", method, path)

    # --- reads --------------------------------------------------------------------------------
    def get_queue(self) -> tuple[list[list], list[list]]:
        """(running, pending) entries, each [number, prompt_id, prompt, extra_data, outputs_to_execute].

        Pending entries come back in heap order: sorted here by number (lower runs first). An entry that is
        malformed or nested too deep is skipped (logged once per prompt id); an answer that is not a queue
        at all raises ComfyBadAnswer."""
        resp = self._request("GET", "/queue")
        data = _queue_in_steps(resp) if resp.status_code < 400 and len(resp.content) > STEPWISE_MIN else None
        self._pruned = 0   # stepwise parsing happens only for answers within the depth limit
        if data is None:
            data = self._object("GET", "/queue", resp=resp)
        deep = self._pruned > 0   # only then can an entry hold a replaced part (walking 40 MB costs ~1 s)
        lists = []
        for name in _QUEUE_LISTS:
            entries = data.get(name)
            if not isinstance(entries, list):
                raise self._bad_answer("GET", "/queue", f"'{name}' is {type(entries).__name__}, not a list")
            lists.append([e for e in entries if self._usable_entry(e, deep)])
        running, pending = lists
        pending.sort(key=lambda e: (e[0] if isinstance(e[0], (int, float)) else 0))
        self._answered_well("GET", "/queue")
        return running, pending

    def _usable_entry(self, entry, deep: bool = True) -> bool:
        problem = None
        if not _valid_entry(entry):
            problem = "not [number, prompt_id, prompt, extra_data, outputs]"
        elif deep and protocol.contains_too_deep(entry):
            problem = f"nested deeper than {protocol.MAX_JSON_DEPTH} levels"
        if problem is None:
            return True
        pid = entry[1] if isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], str) else "?"
        if pid not in self._skipped:
            if len(self._skipped) >= 1000:
                self._skipped.pop(next(iter(self._skipped)))
            self._skipped[pid] = None
            log.warning("GET /queue: skipping entry %s: %s", pid[:64], problem)
        return False

    def get_history(self, prompt_id: str) -> dict | None:
        """The history entry of a prompt; None when ComfyUI has none (pending, running, unknown, lost)."""
        path = f"/history/{requests.utils.quote(prompt_id, safe='')}"
        data = self._object("GET", path)
        entry = data.get(prompt_id)
        if entry is not None and not isinstance(entry, dict):
            raise self._bad_answer("GET", path, f"the entry is {type(entry).__name__}, not an object")
        self._answered_well("GET", path)
        return entry

    def get_history_recent(self, max_items: int) -> dict[str, dict]:
        """The newest `max_items` history entries, {prompt_id: entry} (entries that are not objects left out)."""
        data = self._object("GET", "/history", params={"max_items": int(max_items)})
        self._answered_well("GET", "/history")
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, dict)}

    def system_stats(self, timeout: float = 5.0) -> dict:
        stats = self._object("GET", "/system_stats", timeout=timeout)
        self._answered_well("GET", "/system_stats")
        return stats

    def get_object_info(self) -> dict:
        """Every node type the server has, with its inputs (the lists of models and other choices included)."""
        info = self._object("GET", "/object_info", timeout=max(self.timeout, 30.0))   # megabytes on a real server
        self._answered_well("GET", "/object_info")
        return info

    # --- the relay node (monitor/comfy_node), when installed in this ComfyUI ---------------------------
    def relay_info(self, timeout: float = 5.0) -> dict | None:
        """GET /monitor/relay: {"version", "subscribers"}, or None when the node is not installed (404)."""
        try:
            info = self._object("GET", "/monitor/relay", timeout=timeout)
        except ComfyRejected as exc:
            if exc.status in (404, 405):
                return None
            raise
        if not isinstance(info.get("version"), str):
            raise self._bad_answer("GET", "/monitor/relay", "no version")
        self._answered_well("GET", "/monitor/relay")
        return info

    def relay_subscribe(self, client_id: str, timeout: float = 5.0) -> dict:
        """POST /monitor/relay/subscribe: from now until this socket closes, the node relays to it."""
        answer = self._object("POST", "/monitor/relay/subscribe", json={"client_id": client_id}, timeout=timeout)
        self._answered_well("POST", "/monitor/relay/subscribe")
        return answer

    def relay_telemetry(self, timeout: float = 5.0) -> dict:
        """GET /monitor/telemetry: the GPU host's own gauges, in the shape of the monitor's snapshot."""
        snap = self._object("GET", "/monitor/telemetry", timeout=timeout)
        if not all(isinstance(snap.get(k), dict) for k in ("cpu", "ram", "disk", "gpu")):
            raise self._bad_answer("GET", "/monitor/telemetry", "not a telemetry snapshot")
        self._answered_well("GET", "/monitor/telemetry")
        return snap

    def probe_features(self) -> Features:
        """GET /api/jobs and POST /api/jobs/cancel with no ids have no side effects (NEWER_COMFYUI.md §4)."""
        feats = Features(probed=True)
        try:
            stats = self.system_stats()
            feats.version = (stats.get("system") or {}).get("comfyui_version")
        except (ComfyRejected, ComfyUnavailable, AttributeError):
            pass
        try:
            resp = self._request("GET", "/api/jobs", params={"limit": 1}, timeout=5)
            body = _safe_json(resp)
            feats.jobs_api = resp.status_code == 200 and isinstance(body, dict) and "jobs" in body
        except ComfyUnavailable:
            pass
        try:
            resp = self._request("POST", "/api/jobs/cancel", json={"job_ids": []}, timeout=5)
            body = _safe_json(resp)
            feats.cancel_api = resp.status_code == 200 and isinstance(body, dict) and "cancelled" in body
        except ComfyUnavailable:
            pass
        self.features = feats
        return feats

    # --- writes -------------------------------------------------------------------------------
    def post_prompt(self, body) -> dict:
        """POST /prompt. Raises ComfyRejected (with ComfyUI's JSON body) on 4xx/5xx. `body`: a dict, or
        its JSON text already made (a str)."""
        if isinstance(body, str):
            answer = self._object("POST", "/prompt", data=body.encode("utf-8"),
                                  headers={"Content-Type": "application/json"})
        else:
            answer = self._object("POST", "/prompt", json=body)
        self._answered_well("POST", "/prompt")
        return answer

    def interrupt(self, prompt_id: str | None = None) -> None:
        self._empty("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def delete_pending(self, prompt_ids: list[str]) -> None:
        self._empty("POST", "/queue", json={"delete": list(prompt_ids)})

    def _empty(self, method: str, path: str, **kw) -> None:
        """POST /interrupt and POST /queue answer 200 with an empty body (PROTOCOL.md §9); anything else
        (an error status, a proxy's login page) means that nothing was done."""
        resp = self._request(method, path, **kw)
        if resp.status_code >= 400:
            raise ComfyRejected(resp.status_code, _safe_json(resp), f"{method} {path} answered {resp.status_code}")
        if resp.content.strip() and _safe_json(resp) is None:
            raise self._bad_answer(method, path, "a body where ComfyUI sends none", resp)
        self._answered_well(method, path)

    def cancel_job(self, prompt_id: str) -> bool:
        """Newer servers' cancel endpoint: True when ComfyUI interrupted or dequeued the job."""
        path = f"/api/jobs/{requests.utils.quote(prompt_id, safe='')}/cancel"
        body = self._object("POST", path)
        self._answered_well("POST", path)
        return bool(body.get("cancelled"))

    def view(self, params: dict, timeout: float = 30.0) -> requests.Response:
        """A streamed GET /view; the caller closes the response. `timeout` bounds the headers;
        `view_body_timeout` the whole body read through iter_content (ComfyUnavailable when exceeded)."""
        resp = self._request("GET", "/view", params=params, stream=True, timeout=timeout)
        resp.iter_content = _deadline_chunks(resp, resp.iter_content, self.view_body_timeout)
        return resp


STEPWISE_MIN = 1024 * 1024   # /queue answers above this are parsed an entry at a time
_SPACE = re.compile(r"[ \t\n\r]*")


def _queue_in_steps(resp: requests.Response) -> dict | None:
    """A large /queue answer (tens of MB: every queued graph in full) parsed one entry at a time, yielding
    to the loop between entries, instead of in one json.loads that would stall every request for a
    second. None when it is not a plain, well-formed, shallow {"queue_running": [...], ...}: the caller then
    takes the ordinary path, which reports what is wrong."""
    try:
        text = resp.content.decode("utf-8")
        return _object_in_steps(text, json.JSONDecoder())
    except (UnicodeDecodeError, ValueError, IndexError, RecursionError):
        return None


def _object_in_steps(text: str, decoder: json.JSONDecoder) -> dict | None:
    out: dict = {}
    i = _SPACE.match(text, 0).end()
    if text[i:i + 1] != "{":
        return None
    i = _SPACE.match(text, i + 1).end()
    if text[i:i + 1] == "}":
        return out
    while True:
        key, i = decoder.raw_decode(text, i)
        i = _SPACE.match(text, i).end()
        if not isinstance(key, str) or text[i:i + 1] != ":":
            return None
        i = _SPACE.match(text, i + 1).end()
        if key in _QUEUE_LISTS and text[i:i + 1] == "[":
            items: list = []
            i = _SPACE.match(text, i + 1).end()
            if text[i:i + 1] == "]":
                i += 1
            else:
                while True:
                    start = i
                    item, i = decoder.raw_decode(text, i)
                    # Each entry within the depth limit, checked at C speed (the whole answer at once
                    # would be one long stall); a deeper one sends the answer down the pruning path.
                    if protocol._depth_within(text[start:i].encode("utf-8", "surrogatepass"),
                                              protocol.MAX_JSON_DEPTH) != "ok":
                        return None
                    items.append(item)
                    gevent.sleep(0)
                    i = _SPACE.match(text, i).end()
                    sep, i = text[i:i + 1], i + 1
                    if sep == "]":
                        break
                    if sep != ",":
                        return None
                    i = _SPACE.match(text, i).end()
            out[key] = items
        else:
            out[key], i = decoder.raw_decode(text, i)
        i = _SPACE.match(text, i).end()
        sep, i = text[i:i + 1], i + 1
        if sep == "}":
            return out if not text[i:].strip() else None
        if sep != ",":
            return None
        i = _SPACE.match(text, i).end()


def _deadline_chunks(resp: requests.Response, inner, seconds: float):
    deadline = time.monotonic() + seconds

    def iter_content(chunk_size=1, decode_unicode=False):
        chunks = inner(chunk_size=chunk_size, decode_unicode=decode_unicode)
        while True:
            # Timed per chunk (the consumer runs between chunks), against one deadline for the body.
            timer = gevent.Timeout(max(0.001, deadline - time.monotonic()))
            timer.start()
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                resp.close()
                raise ComfyUnavailable(f"GET /view: body not complete within {seconds:g} s") from None
            finally:
                timer.close()
            yield chunk
    return iter_content


def _endpoint(path: str) -> str:
    """The endpoint of a path, for logging once per endpoint (/history/<id> -> /history)."""
    for prefix in ("/history/", "/api/jobs/"):
        if path.startswith(prefix):
            return prefix + "…"
    return path


def _safe_json(resp: requests.Response):
    """The JSON of a body if it is JSON (e.g. an error status's explanation), else None; never raises."""
    if not resp.content:
        return None
    try:
        return protocol.load_json(resp.content)
    except protocol.ProtocolError:
        return None


def _valid_entry(entry) -> bool:
    return (isinstance(entry, (list, tuple)) and len(entry) >= 5 and isinstance(entry[1], str)
            and isinstance(entry[2], dict))
