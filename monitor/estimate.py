"""Learned durations: per-node timings of past runs → how long a graph (or what is left of it) will take.
Pure: no I/O; the fleet loads recorded rows into an Estimator and adds each completed run's rows.

A node's estimate is the median of its closest match, tried in this order: the same node in past runs of the
same workflow on the same host (workflow = graph structure and cost inputs; seeds and texts ignored), the same
class with the same cost inputs on that host, the class on that host scaled by steps and pixels; else unknown,
and then the whole estimate is unknown: the monitor says nothing rather than guess.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from collections import deque

SAMPLES = 15          # newest samples kept per key; medians over these
STEP_INPUTS = ("steps",)
SIZE_INPUTS = ("width", "height")
BATCH_INPUTS = ("batch_size", "amount")
FRAME_INPUTS = ("length", "frames", "frame_count", "num_frames", "video_frames")
SCALE_INPUTS = ("scale_by", "upscale_by", "denoise")
MODEL_SUFFIX = "_name"   # ckpt_name, unet_name, lora_name, vae_name, model_name... (not sampler/scheduler)
NOT_MODELS = frozenset({"sampler_name", "scheduler_name"})


def _link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def cost_inputs(graph: dict, node_id: str, _memo: dict | None = None) -> dict:
    """The literal inputs that drive a node's cost (steps, size, batch, frames, scale, model names), plus
    "pixels": width × height × batch × frames, its own or, when it has none, the first found upstream
    (a sampler's latent comes from EmptyLatentImage)."""
    memo = {} if _memo is None else _memo
    node = graph.get(node_id) if isinstance(graph, dict) else None
    inputs = node.get("inputs") if isinstance(node, dict) and isinstance(node.get("inputs"), dict) else {}
    cost: dict = {}
    for name, value in inputs.items():
        if _link(value):
            continue
        if name in STEP_INPUTS + SIZE_INPUTS + BATCH_INPUTS + FRAME_INPUTS + SCALE_INPUTS:
            if _number(value) is not None:
                cost[name] = _number(value)
        elif name.endswith(MODEL_SUFFIX) and name not in NOT_MODELS and isinstance(value, str):
            cost[name] = value
    pixels = _pixels(graph, node_id, memo, set())
    if pixels is not None:
        cost["pixels"] = pixels
    return cost


def _pixels(graph: dict, node_id: str, memo: dict, seen: set) -> float | None:
    if node_id in memo:
        return memo[node_id]
    if node_id in seen:
        return None
    seen.add(node_id)
    node = graph.get(node_id)
    inputs = node.get("inputs") if isinstance(node, dict) and isinstance(node.get("inputs"), dict) else {}
    width, height = _number(inputs.get("width")), _number(inputs.get("height"))
    result = None
    if width and height:
        result = width * height
        for names in (BATCH_INPUTS, FRAME_INPUTS):
            factor = next((_number(inputs[n]) for n in names if _number(inputs.get(n))), None)
            if factor:
                result *= factor
    else:
        for value in inputs.values():
            if _link(value):
                result = _pixels(graph, value[0], memo, seen)
                if result is not None:
                    break
    memo[node_id] = result
    return result


def signature(graph: dict) -> str:
    """A workflow's identity: its nodes, their classes, links and cost inputs (seeds, texts, file name prefixes
    and other literals ignored)."""
    memo: dict = {}
    parts = []
    for node_id in sorted(graph, key=str):
        node = graph[node_id]
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        links = sorted((k, v[0], v[1]) for k, v in inputs.items() if _link(v))
        parts.append([node_id, node.get("class_type"), links, cost_inputs(graph, node_id, memo)])
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def timing_rows(graph: dict, timings: dict, host: str) -> list[dict]:
    """Rows to record for a completed run: one per timed node plus one per cached node (0 s, cached)."""
    sig = signature(graph)
    memo: dict = {}
    rows = []
    cached = [n for n in timings.get("cached") or () if n in graph]
    for node_id, seconds, was_cached in ([(n, s, False) for n, s in (timings.get("nodes") or {}).items()]
                                         + [(n, 0.0, True) for n in cached]):
        node = graph.get(node_id)
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            continue
        cost = cost_inputs(graph, node_id, memo)
        rows.append({"host": host, "node_id": node_id, "class_type": node["class_type"],
                     "cost": json.dumps(cost, sort_keys=True), "signature": sig, "seconds": round(seconds, 4),
                     "cached": was_cached, "steps": cost.get("steps"), "pixels": cost.get("pixels")})
    return rows


def _median(values) -> float:
    return statistics.median(values)


class Estimator:
    """In-memory index of recorded node timings (newest SAMPLES per key)."""

    def __init__(self):
        self.version = 0      # bumped by every add: cached estimates are valid while unchanged
        self._by_node: dict[tuple, deque] = {}     # (host, signature, node id) → (seconds, cached)
        self._by_cost: dict[tuple, deque] = {}     # (host, class, cost json) → seconds, uncached runs
        self._by_class: dict[tuple, deque] = {}    # (host, class) → (seconds, steps, pixels), uncached runs
        self._runs: dict[tuple, set] = {}          # (host, signature) → job ids recorded (newest SAMPLES)
        self.hosts: set[str] = set()               # hosts with any recorded timing

    def add(self, rows: list[dict], job_id: str | None = None) -> None:
        for row in rows:
            host, cls = row["host"], row["class_type"]
            self.hosts.add(host)
            _push(self._by_node, (host, row["signature"], row["node_id"]), (row["seconds"], bool(row["cached"])))
            runs = self._runs.setdefault((host, row["signature"]), set())
            if len(runs) < 1000:
                runs.add(job_id or row.get("job_id"))
            if not row["cached"]:
                _push(self._by_cost, (host, cls, row["cost"]), row["seconds"])
                _push(self._by_class, (host, cls), (row["seconds"], row.get("steps"), row.get("pixels")), 2 * SAMPLES)
        self.version += 1

    def node(self, graph: dict, node_id: str, host: str, sig: str, cached_known: bool,
             memo: dict | None = None) -> tuple[float | None, int, str]:
        """(seconds or None, tier 1-3 (0 = unknown), class) for one node. `cached_known` False (a queued
        job): past cached runs of the node count as 0 s, the expected cost; True: uncached runs only."""
        node = graph.get(node_id) if isinstance(graph, dict) else None
        cls = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(cls, str):
            return None, 0, str(cls)
        samples = self._by_node.get((host, sig, node_id))
        if samples:
            values = [s for s, cached in samples if not cached_known or not cached]
            if values:
                return _median(values), 1, cls
        cost = cost_inputs(graph, node_id, memo)
        same = self._by_cost.get((host, cls, json.dumps(cost, sort_keys=True)))
        if same:
            return _median(same), 2, cls
        scaled = []
        for seconds, steps, pixels in self._by_class.get((host, cls), ()):
            ratio = 1.0
            for mine, theirs in ((cost.get("steps"), steps), (cost.get("pixels"), pixels)):
                if (mine is None) != (theirs is None):
                    ratio = None
                    break
                if mine is not None:
                    ratio *= mine / theirs if theirs else 1.0
            if ratio is not None:
                scaled.append(seconds * ratio)
        if scaled:
            return _median(scaled), 3, cls
        return None, 0, cls

    def runs(self, host: str, sig: str) -> int:
        return len(self._runs.get((host, sig), ()))

    def remaining(self, graph: dict, host: str, nodes, *, cached_known: bool = True,
                  current: str | None = None, current_s: float = 0.0,
                  step_eta_s: float | None = None) -> tuple[float | None, str]:
        """(seconds, basis) for the given nodes still to run plus the running one (its live steps when known,
        else its estimate less the time it has run); (None, why) when any of them is unknown."""
        if not isinstance(graph, dict):
            return None, "graph unknown"
        sig = signature(graph)
        memo: dict = {}
        total, tiers, weakest = 0.0, {}, None
        for node_id in nodes:
            seconds, tier, cls = self.node(graph, node_id, host, sig, cached_known, memo)
            if seconds is None:
                weakest = cls
                break
            total += seconds
            if tier > 1:
                tiers[tier] = max(tiers.get(tier, (0.0, cls)), (seconds, cls))
            else:
                tiers.setdefault(1, (0.0, cls))
        if weakest is not None:
            known = any(k[0] == host for k in self._by_class) or any(k[0] == host for k in self._by_node)
            return None, f"no history yet for {weakest} on {host}" if known else "no history yet"
        live = False
        if current is not None:
            if step_eta_s is not None:
                total += step_eta_s
                live = True
            else:
                seconds, tier, cls = self.node(graph, current, host, sig, True, memo)
                if seconds is None:
                    return None, f"no history yet for {cls} on {host}"
                total += max(seconds - current_s, 0.0)
                if tier > 1:
                    tiers[tier] = max(tiers.get(tier, (0.0, cls)), (seconds, cls))
                else:
                    tiers.setdefault(1, (0.0, cls))
        if 3 in tiers:
            basis = f"{tiers[3][1]} rate on {host}"
        elif 2 in tiers:
            basis = f"past {tiers[2][1]} runs on {host}"
        elif 1 in tiers:
            runs = self.runs(host, sig)
            basis = f"{runs} past run{'s' if runs != 1 else ''} of this workflow"
        else:
            basis = "live sampler rate" if live else "nothing left to run"
        if live and tiers:
            basis += " and the live sampler rate"
        return round(total, 1), basis


def _push(index: dict, key: tuple, value, size: int = SAMPLES) -> None:
    samples = index.get(key)
    if samples is None:
        samples = index[key] = deque(maxlen=size)
    samples.append(value)
