"""Reconciliation with ComfyUI's own view: GET /queue adopts foreign prompts and finds positions,
GET /history/{id} settles jobs whose terminal message never reached us."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from . import graph as graphs
from .comfy import ComfyRejected, ComfyUnavailable

log = logging.getLogger(__name__)

LOST_REASON = "ComfyUI no longer knows this job (not in its queue or history)"
RESTART_REASON = "ComfyUI restarted; it no longer knows this job"
REMOVED_REASON = "removed from ComfyUI's queue outside the monitor"


@dataclass
class QueueView:
    """One GET /queue, sorted: the running prompt (0 or 1) and the pending ones in run order."""
    running: list[list] = field(default_factory=list)
    pending: list[list] = field(default_factory=list)

    @functools.cached_property
    def ids(self) -> set[str]:
        return {e[1] for e in self.running} | {e[1] for e in self.pending}

    def positions(self) -> dict[str, int]:
        pos = {e[1]: 0 for e in self.running}
        pos.update({e[1]: i + 1 for i, e in enumerate(self.pending)})
        return pos


def settlement_from_history(entry: dict) -> tuple[str, dict]:
    """Map a /history entry to (status, fields). status_str "error" covers failures and interrupts:
    the last status message tells them apart (PROTOCOL.md §6.5). fields also carry what the run's
    record needs: start/end times (epoch ms), the cached node ids (None if the entry does not say)
    and the nodes that ran to completion (known for errors and interrupts)."""
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    messages = [m for m in status.get("messages") or [] if isinstance(m, (list, tuple)) and len(m) == 2
                and isinstance(m[1], dict)]
    last_kind, last_data = (messages[-1][0], messages[-1][1]) if messages else (None, {})
    start = next((m[1].get("timestamp") for m in messages if m[0] == "execution_start"), None)
    cached = next((m[1].get("nodes") for m in messages if m[0] == "execution_cached"), None)
    end = last_data.get("timestamp")
    executed = last_data.get("executed") if last_kind in ("execution_error", "execution_interrupted") else None
    fields = {"outputs": outputs_from_history(entry), "graph": _graph_of(entry),
              "started_ms": start if isinstance(start, (int, float)) else None,
              "finished_ms": end if isinstance(end, (int, float)) else None,
              "cached": [str(n) for n in cached] if isinstance(cached, list) else None,
              "executed": [str(n) for n in executed] if isinstance(executed, list) else None}
    if status.get("status_str") == "success" or status.get("completed") is True:
        return "completed", fields
    if last_kind == "execution_interrupted":
        return "interrupted", fields
    if last_kind == "execution_error":
        fields["error"] = error_from_payload(last_data, _graph_of(entry))
        return "failed", fields
    if status.get("status_str") == "error":
        fields["error"] = {"message": "ComfyUI reported an error without details"}
        return "failed", fields
    # No status at all: ComfyUI treats that as done; so do we (NEWER_COMFYUI.md §2.1).
    return "completed", fields


def error_from_payload(data: dict, graph: dict | None) -> dict:
    node_id = data.get("node_id")
    message = str(data.get("exception_message") or "").rstrip("\n")
    return {
        "node_id": node_id,
        "node_type": data.get("node_type"),
        "node_title": graphs.node_title(graph, node_id) if graph and node_id else data.get("node_type"),
        "exception_type": data.get("exception_type"),
        "message": message,
        "traceback": data.get("traceback") if isinstance(data.get("traceback"), list) else None,
    }


def outputs_from_history(entry: dict) -> list[dict]:
    graph = _graph_of(entry)
    out = []
    for node_id, ui in (entry.get("outputs") or {}).items():
        if isinstance(ui, dict):
            out.append(graphs.node_output(graph, node_id, ui))
    return out


def _graph_of(entry: dict) -> dict | None:
    prompt = entry.get("prompt")
    if isinstance(prompt, (list, tuple)) and len(prompt) >= 3 and isinstance(prompt[2], dict):
        return prompt[2]
    return None


def fetch_queue(comfy) -> QueueView | None:
    try:
        running, pending = comfy.get_queue()
    except (ComfyUnavailable, ComfyRejected) as exc:
        log.debug("reconcile: GET /queue failed: %s", exc)   # comfy.py logs an outage once
        return None
    return QueueView(running=running, pending=pending)


def fetch_history(comfy, prompt_id: str) -> tuple[bool, dict | None]:
    """(reached, entry): reached is False when ComfyUI could not be asked."""
    try:
        return True, comfy.get_history(prompt_id)
    except (ComfyUnavailable, ComfyRejected) as exc:
        log.debug("reconcile: GET /history/%s failed: %s", prompt_id, exc)
        return False, None
