"""Workflow templates: API-format graphs with {{name}} placeholders, loaded from a folder, validated and filled."""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
TYPES = ("int", "float", "string", "bool", "seed", "choice")
SEED_RANDOM_LIMIT = 2 ** 53          # random seeds stay exact in JavaScript numbers
SEED_MAX = 2 ** 64 - 1               # ComfyUI's own limit for seed inputs
_SPEC_KEYS = {"type", "default", "min", "max", "choices", "description"}
_MISSING = object()


class ParamError(ValueError):
    """Bad job parameters; the message is meant for the user who sent them."""


class WorkflowError(ValueError):
    """A workflow file that cannot be used."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any = _MISSING
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def spec(self) -> dict:
        out: dict[str, Any] = {"type": self.type, "required": self.required}
        if not self.required:
            out["default"] = self.default
        for key in ("min", "max"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.description:
            out["description"] = self.description
        return out

    def coerce(self, value: Any) -> Any:
        """The typed value, or ParamError. Strings from the CLI are accepted for numbers and booleans."""
        kind = self.type
        if kind in ("int", "seed"):
            number = _to_int(value)
            if number is None:
                raise ParamError(f"{self.name}: expected an integer, got {value!r}")
            if kind == "seed":
                if number != -1 and not 0 <= number <= SEED_MAX:
                    raise ParamError(f"{self.name}: a seed must be -1 (random) or between 0 and {SEED_MAX}")
                return number
            return self._check_range(number)
        if kind == "float":
            number = _to_float(value)
            if number is None:
                raise ParamError(f"{self.name}: expected a number, got {value!r}")
            return self._check_range(number)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise ParamError(f"{self.name}: expected true or false, got {value!r}")
        if kind == "string":
            if not isinstance(value, str):
                raise ParamError(f"{self.name}: expected a string, got {value!r}")
            return value
        # choice: exact match first, then the CLI's string form of a numeric choice
        for choice in self.choices or ():
            if value == choice and type(value) is type(choice):
                return choice
        for choice in self.choices or ():
            if isinstance(value, str) and not isinstance(choice, str) and value == _text(choice):
                return choice
        allowed = ", ".join(_text(c) for c in self.choices or ())
        raise ParamError(f"{self.name}: {value!r} is not one of: {allowed}")

    def _check_range(self, number):
        if self.min is not None and number < self.min:
            raise ParamError(f"{self.name}: {number} is below the minimum {_text(self.min)}")
        if self.max is not None and number > self.max:
            raise ParamError(f"{self.name}: {number} is above the maximum {_text(self.max)}")
        return number


@dataclass
class Rendered:
    prompt: dict
    params: dict
    seeds: list[int] = field(default_factory=list)


@dataclass
class Workflow:
    id: str
    name: str
    description: str
    parameters: dict[str, Param]
    prompt: dict
    path: str | None = None

    def summary(self) -> dict:
        return {"id": self.id, "name": self.name, "description": self.description,
                "parameters": {name: p.spec() for name, p in self.parameters.items()}}

    def resolve(self, params: dict | None, rng=random) -> dict:
        """Validated, typed values for every declared parameter; seed -1 becomes a concrete random seed."""
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ParamError("params must be an object of name: value")
        problems = []
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            known = ", ".join(self.parameters) or "none"
            problems.append(f"unknown parameter(s): {', '.join(map(str, unknown))} (known: {known})")
        values = {}
        for name, param in self.parameters.items():
            raw = params.get(name)
            if raw is None:  # absent or null: take the default
                if param.required:
                    problems.append(f"{name}: required")
                    continue
                raw = param.default
            try:
                value = param.coerce(raw)
            except ParamError as exc:
                problems.append(str(exc))
                continue
            if param.type == "seed" and value == -1:
                value = rng.randrange(SEED_RANDOM_LIMIT)
            values[name] = value
        if problems:
            raise ParamError("; ".join(problems))
        return values

    def render(self, params: dict | None, job_folder: str, rng=random) -> Rendered:
        values = self.resolve(params, rng)
        prompt = _fill(copy.deepcopy(self.prompt), values)
        point_outputs(prompt, job_folder)
        seeds = [values[n] for n, p in self.parameters.items() if p.type == "seed"]
        return Rendered(prompt=prompt, params=values, seeds=seeds)


# --- loading -------------------------------------------------------------------------------------

def load_workflows(directory: str | None) -> dict[str, Workflow]:
    """Every valid `<id>.json` in `directory`, by id. Bad files are logged and skipped; no folder gives {}."""
    if not directory or not os.path.isdir(directory):
        return {}
    found: dict[str, Workflow] = {}
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if not entry.endswith(".json") or not os.path.isfile(path):
            continue
        try:
            workflow = load_workflow(path)
        except WorkflowError as exc:
            log.warning("workflow %s not loaded: %s", path, exc)
            continue
        found[workflow.id] = workflow
    return found


def load_workflow(path: str) -> Workflow:
    workflow_id = os.path.basename(path)[:-len(".json")] if path.endswith(".json") else os.path.basename(path)
    if not WORKFLOW_ID_RE.match(workflow_id):
        raise WorkflowError(f"file name {workflow_id!r} is not a valid workflow id (letters, digits, _ and -, "
                            "at most 64)")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkflowError(f"cannot read JSON: {exc}") from None
    return parse_workflow(workflow_id, doc, path)


def parse_workflow(workflow_id: str, doc: Any, path: str | None = None) -> Workflow:
    if not isinstance(doc, dict):
        raise WorkflowError("the file must hold a JSON object")
    prompt = doc.get("prompt")
    if not isinstance(prompt, dict) or not prompt:
        raise WorkflowError('"prompt" must be a non-empty API-format graph (an object of nodes)')
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) \
                or not isinstance(node.get("inputs"), dict):
            raise WorkflowError(f"node {node_id!r} needs a class_type string and an inputs object")
    raw_params = doc.get("parameters", {})
    if not isinstance(raw_params, dict):
        raise WorkflowError('"parameters" must be an object')
    parameters = {name: _parse_param(name, spec) for name, spec in raw_params.items()}
    undeclared = sorted(set(_placeholders(prompt)) - set(parameters))
    if undeclared:
        raise WorkflowError(f"placeholder(s) not declared in parameters: {', '.join(undeclared)}")
    name, description = doc.get("name", workflow_id), doc.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise WorkflowError('"name" and "description" must be strings')
    return Workflow(workflow_id, name or workflow_id, description, parameters, prompt, path)


def _parse_param(name: str, spec: Any) -> Param:
    if not PARAM_NAME_RE.match(str(name)):
        raise WorkflowError(f"parameter name {name!r} must be letters, digits and _ (not starting with a digit)")
    if not isinstance(spec, dict):
        raise WorkflowError(f"parameter {name}: its spec must be an object")
    extra = set(spec) - _SPEC_KEYS
    if extra:
        raise WorkflowError(f"parameter {name}: unknown key(s) {', '.join(sorted(extra))}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise WorkflowError(f"parameter {name}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    bounds = {k: spec.get(k) for k in ("min", "max")}
    for key, bound in bounds.items():
        if bound is None:
            continue
        if kind not in ("int", "float"):
            raise WorkflowError(f"parameter {name}: {key} only applies to int and float")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise WorkflowError(f"parameter {name}: {key} must be a number")
    choices = spec.get("choices")
    if kind == "choice":
        if not isinstance(choices, list) or not choices or \
                not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in choices):
            raise WorkflowError(f"parameter {name}: choices must be a non-empty list of strings or numbers")
        choices = tuple(choices)
    elif choices is not None:
        raise WorkflowError(f"parameter {name}: choices only apply to type choice")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise WorkflowError(f"parameter {name}: description must be a string")
    default = spec.get("default", -1 if kind == "seed" else _MISSING)
    param = Param(name, kind, _MISSING, bounds["min"], bounds["max"], choices, description)
    if default is not _MISSING:
        try:
            default = param.coerce(default)
        except ParamError as exc:
            raise WorkflowError(f"bad default: {exc}") from None
        param = Param(name, kind, default, bounds["min"], bounds["max"], choices, description)
    return param


# --- filling -------------------------------------------------------------------------------------

def _placeholders(value: Any):
    if isinstance(value, str):
        yield from PLACEHOLDER_RE.findall(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _placeholders(item)
    elif isinstance(value, list):
        for item in value:
            yield from _placeholders(item)


def _fill(value: Any, values: dict) -> Any:
    if isinstance(value, str):
        whole = PLACEHOLDER_RE.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return PLACEHOLDER_RE.sub(lambda m: _text(values[m.group(1)]), value)
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    return value


def point_outputs(prompt: dict, job_folder: str) -> None:
    """Point every node's `filename_prefix` into `job_folder`, keeping the original base name."""
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict) or "filename_prefix" not in inputs:
            continue
        original = inputs["filename_prefix"]
        # A linked prefix ([node, index]) could point anywhere, so it is replaced too.
        base = re.split(r"[\\/]", original)[-1].strip() if isinstance(original, str) else ""
        inputs["filename_prefix"] = f"{job_folder}/{base if base not in ('', '.', '..') else 'output'}"


def new_job_folder(workflow_id: str | None, prompt_id: str) -> str:
    """The job's output folder, relative to ComfyUI's output directory: `monitor/<workflow_id>/<prompt_id[:8]>`.

    Both parts are reduced to letters, digits, `_` and `-`, so the result never climbs out (`..`) and is never
    absolute; a missing workflow id (raw prompts) becomes `raw`.
    """
    def clean(text: str | None, fallback: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", text or "")[:64] or fallback

    return f"monitor/{clean(workflow_id, 'raw')}/{clean((prompt_id or '')[:8], 'job')}"


# --- small helpers -------------------------------------------------------------------------------

def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    """How a value reads inside a longer string (and in messages): JSON-style booleans, no '.0' on whole floats."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
