"""Can a host run a graph? Checked the way ComfyUI validates it, against that host's GET /object_info: every
class_type exists, and every value given for a list-type (COMBO) input is among the host's options. Pure."""
from __future__ import annotations

from . import graph as graphs

MAX_SHOWN = 3   # what a host lacks, at most this many items in a message


def combo_options(spec) -> list | None:
    """The allowed values of an input spec from /object_info, or None when it is not a list input.
    Older ComfyUI: `[["a.safetensors", "b.safetensors"], {...}]`; newer: `["COMBO", {"options": [...]}]`."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    head = spec[0]
    if isinstance(head, list):
        return head
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict) and isinstance(spec[1].get("options"), list):
        return spec[1]["options"]
    return None


def _input_specs(info: dict) -> dict:
    specs = {}
    inputs = info.get("input") if isinstance(info, dict) else None
    if isinstance(inputs, dict):
        for group in ("required", "optional"):
            if isinstance(inputs.get(group), dict):
                specs.update(inputs[group])
    return specs


def lacks(prompt: dict, object_info: dict) -> list[str]:
    """What `object_info` lacks to run `prompt`, one short phrase each (empty: it can run it)."""
    missing = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            continue
        class_type = node.get("class_type")
        where = f'node "{graphs.node_title(prompt, node_id)}" (#{node_id})'
        info = object_info.get(class_type)
        if not isinstance(info, dict):
            missing.append(f"no node type {class_type!r} for {where}")
            continue
        specs = _input_specs(info)
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        for name, value in inputs.items():
            if isinstance(value, list):   # a link to another node's output
                continue
            options = combo_options(specs.get(name))
            if options is not None and value not in options:
                missing.append(f"no {name} {value!r} for {where}")
    return missing


def describe(missing: list[str]) -> str:
    shown = "; ".join(missing[:MAX_SHOWN])
    return shown + (f" (and {len(missing) - MAX_SHOWN} more)" if len(missing) > MAX_SHOWN else "")
