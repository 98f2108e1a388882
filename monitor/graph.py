"""Helpers for API-format ComfyUI graphs: {node_id: {"class_type", "inputs", "_meta": {"title"}}}."""
from __future__ import annotations

import re

# Nodes that finish in no measurable time: routing, constants, math, notes, size queries. They are
# left out of the node count (numerator and denominator). Config can add more class types.
DEFAULT_INSTANT_TYPES: frozenset[str] = frozenset({
    # ComfyUI core
    "Reroute", "PrimitiveNode", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
    "PrimitiveStringMultiline", "PrimitiveBoolean", "Note", "MarkdownNote", "GetImageSize",
    "StringConcatenate", "StringSubstring", "StringLength", "StringReplace", "StringTrim",
    "StringCompare", "StringContains", "CaseConverter", "RegexMatch", "RegexExtract", "RegexReplace",
    # ComfyUI_essentials
    "SimpleMath+", "SimpleMathFloat+", "SimpleMathInt+", "SimpleMathSlider+", "SimpleMathSliderLowRes+",
    "SimpleMathPercent+", "SimpleMathBoolean+", "SimpleMathDual+", "SimpleMathCondition+",
    "SimpleCondition+", "SimpleComparison+", "GetImageSize+", "ConsoleDebug+", "DebugTensorShape+",
    # KJNodes
    "INTConstant", "FloatConstant", "StringConstant", "StringConstantMultiline", "GetImageSizeAndCount",
    # Impact Pack
    "ImpactInt", "ImpactFloat", "ImpactBoolean", "ImpactString",
    # rgthree
    "Seed (rgthree)", "Context (rgthree)", "Context Big (rgthree)", "Context Switch (rgthree)",
    "Any Switch (rgthree)",
    # WAS Node Suite
    "Constant Number", "Number Operation", "Number to Int", "Number to Float", "Number to String",
    "Text String", "Text Multiline", "Text Concatenate",
    # Comfyroll
    "CR Seed", "CR Integer To String", "CR Float To Integer",
    # Easy-Use
    "easy int", "easy float", "easy string", "easy boolean", "easy seed",
    "easy mathInt", "easy mathFloat", "easy mathString",
    # ComfyUI-Custom-Scripts (pysssss)
    "MathExpression|pysssss",
})

SEED_INPUTS = ("seed", "noise_seed")
TEXT_INPUTS = ("text", "prompt", "positive", "text_g", "text_l")
_NOTE_TYPES = frozenset({"Note", "MarkdownNote"})


def _node(graph, node_id) -> dict | None:
    node = graph.get(node_id) if isinstance(graph, dict) else None
    return node if isinstance(node, dict) else None


def class_type(graph, node_id) -> str | None:
    node = _node(graph, node_id)
    value = node.get("class_type") if node else None
    return value if isinstance(value, str) else None


def node_title(graph, node_id) -> str:
    """_meta.title, else class_type, else the node id."""
    node = _node(graph, node_id)
    if node:
        meta = node.get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        if isinstance(title, str) and title.strip():
            return title
    return class_type(graph, node_id) or str(node_id)


# UI output keys that name files ComfyUI's /view serves (PROTOCOL.md §4.7).
FILE_OUTPUT_KEYS = ("images", "gifs", "videos", "audio")


def node_output(graph, node_id, ui, title: str | None = None) -> dict:
    """One node's UI output (an `executed` message's `output`, or a /history outputs entry) as the job
    records and the page keep it: {node_id, title, images: [{filename, subfolder, type, kind}], text}."""
    ui = ui if isinstance(ui, dict) else {}
    files = [{"filename": item["filename"], "subfolder": item.get("subfolder") or "",
              "type": item.get("type") or "output", "kind": key}
             for key in FILE_OUTPUT_KEYS for item in ui.get(key) or []
             if isinstance(item, dict) and isinstance(item.get("filename"), str)]
    text = [t for t in ui["text"] if isinstance(t, str)] if isinstance(ui.get("text"), list) else []
    return {"node_id": str(node_id), "title": title or node_title(graph, node_id), "images": files, "text": text}


def _inputs(node: dict) -> dict:
    inputs = node.get("inputs")
    return inputs if isinstance(inputs, dict) else {}


def _link_source(value) -> str | None:
    """The source node id of a link input `[src_id, output_index]`, else None."""
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
            and not isinstance(value[1], bool) and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool)):
        return str(value[0])
    return None


def _id_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _node_ids(graph) -> list[str]:
    if not isinstance(graph, dict):
        return []
    return sorted((k for k in graph if isinstance(k, str) and _node(graph, k)), key=_id_key)


def output_nodes_guess(graph) -> list[str]:
    """Nodes that no other node links from (the fallback when the outputs to execute are unknown)."""
    ids = _node_ids(graph)
    linked = {_link_source(v) for nid in ids for v in _inputs(graph[nid]).values()}
    return [nid for nid in ids if nid not in linked]


def effective_nodes(graph, outputs_to_execute) -> set[str]:
    """Every node the outputs depend on, found by walking links backwards. None = guess the outputs."""
    if not isinstance(graph, dict):
        return set()
    if outputs_to_execute is None:
        outputs_to_execute = output_nodes_guess(graph)
    stack = [str(o) for o in outputs_to_execute if _node(graph, str(o))]
    seen: set[str] = set()
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        for value in _inputs(graph[nid]).values():
            src = _link_source(value)
            if src is not None and src not in seen and _node(graph, src):
                stack.append(src)
    return seen


def workflow_name(graph, extra_data) -> str | None:
    """The name the UI workflow carries in extra_data.extra_pnginfo.workflow, if any."""
    pnginfo = extra_data.get("extra_pnginfo") if isinstance(extra_data, dict) else None
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    if not isinstance(workflow, dict):
        return None
    extra = workflow.get("extra") if isinstance(workflow.get("extra"), dict) else {}
    for value in (workflow.get("name"), workflow.get("title"), extra.get("name"), extra.get("title")):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _shorten(text: str, limit: int) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:max(limit - 1, 0)].rstrip() + "…"


def prompt_excerpt(graph, limit: int = 160) -> str | None:
    """The first positive text prompt: nodes wired into a `positive` input first, then any text node
    not wired into a `negative` one (in node id order)."""
    ids = _node_ids(graph)
    positive, negative = set(), set()
    for nid in ids:
        for name, value in _inputs(graph[nid]).items():
            src = _link_source(value)
            if src is not None and name in ("positive", "negative"):
                (positive if name == "positive" else negative).add(src)
    ordered = [n for n in ids if n in positive] + [n for n in ids if n not in positive and n not in negative]
    for nid in ordered:
        if class_type(graph, nid) in _NOTE_TYPES:
            continue
        inputs = _inputs(graph[nid])
        for name in TEXT_INPUTS:
            value = inputs.get(name)
            if isinstance(value, str) and value.strip():
                return _shorten(value, limit)
    return None


def with_new_seeds(graph: dict, rng=None) -> dict:
    """A copy of the graph whose literal seed / noise_seed inputs are random (each its own)."""
    import copy
    import random
    rng = rng or random.SystemRandom()
    out = copy.deepcopy(graph)
    for nid in _node_ids(out):
        inputs = _inputs(out[nid])
        for name in SEED_INPUTS:
            value = inputs.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                inputs[name] = rng.randrange(2 ** 48)
    return out


def seeds(graph) -> list[int]:
    """Values of inputs named seed / noise_seed (literal integers, not links), in node order, unique."""
    found: list[int] = []
    for nid in _node_ids(graph):
        inputs = _inputs(graph[nid])
        for name in SEED_INPUTS:
            value = inputs.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value not in found:
                found.append(value)
    return found
