"""Parse ComfyUI WebSocket frames: JSON text messages and binary previews/text (PROTOCOL.md §4-5); and the
depth-limited JSON reading that every answer from ComfyUI goes through (frames and HTTP bodies alike)."""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass

PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}
_HEADER = struct.Struct(">II")

# Deeper than any real ComfyUI message or answer (a /queue entry's workflow is ~15 levels), and shallow
# enough that code walking a parsed value recursively stays far below Python's recursion limit (1,000).
MAX_JSON_DEPTH = 100
# Stands in for a value that was nested deeper than MAX_JSON_DEPTH (load_json(..., prune=True)).
TOO_DEEP = "\u0000(nested too deep)"
_TOO_DEEP_JSON = json.dumps(TOO_DEEP)
_JSON_START = frozenset(bytes([c]) for c in b'{["-0123456789tfn')
_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")
# Bracket kinds do not matter for depth: {} become [], and all but brackets and quotes go.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b'[]{}"')
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class ProtocolError(ValueError):
    """A frame that does not follow the protocol. `kind` is short and stable (log once per kind)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class BinaryFrame:
    event: int                          # 1 preview, 3 text, 4 preview with metadata
    mime: str | None = None             # "image/jpeg" | "image/png" for previews
    image: memoryview | None = None     # the image bytes, sliced by offset
    prompt_id: str | None = None        # type 4 metadata
    node_id: str | None = None          # type 4 metadata / type 3
    metadata: dict | None = None
    text: str | None = None             # type 3


def load_json(raw, *, max_depth: int = MAX_JSON_DEPTH, prune: bool = False):
    """json.loads that never recurses past `max_depth` nested arrays/objects, whatever it is given.

    `raw`: UTF-8 bytes (or str). Raises ProtocolError "json.not_utf8", "json.invalid" or "json.too_deep".
    With `prune`, a value nested deeper is replaced by TOO_DEEP instead and (value, how many) returned,
    so that one hostile part of a large answer does not cost the rest (see `contains_too_deep`)."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = str(raw, "utf-8")
        except (UnicodeDecodeError, TypeError):
            raise ProtocolError("json.not_utf8", "not UTF-8 text") from None
    pruned = 0
    verdict = "ok" if text.count("[") + text.count("{") <= max_depth else _depth_within(
        raw if not isinstance(raw, str) else raw.encode("utf-8", "surrogatepass"), max_depth)
    if verdict == "unbalanced":
        raise ProtocolError("json.invalid", "unbalanced brackets")
    if verdict == "deep":
        if not prune:
            raise ProtocolError("json.too_deep", f"nested deeper than {max_depth} levels")
        text, pruned = _prune(text, max_depth)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:   # RecursionError: only for a stack already deep
        raise ProtocolError("json.invalid", f"{type(exc).__name__}: {exc}"[:120]) from None
    return (value, pruned) if prune else value


def contains_too_deep(value) -> bool:
    """Whether a value from load_json(..., prune=True) had a part replaced (iterative: no recursion)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and v == TOO_DEEP:
            return True
    return False


def _depth_within(data, max_depth: int) -> str:
    """"ok" if JSON `data` (bytes) nests at most max_depth deep, else "deep" or "unbalanced" (not JSON),
    in C-speed passes only: a 2 MB /queue answer costs about a quarter of its json.loads."""
    data = bytes(data)
    if data[_LEADING_SPACE.match(data).end():][:1] not in _JSON_START:
        return "ok"   # not JSON at all (an HTML page...): json.loads refuses it without recursing
    if b"\\" in data:   # escaped quotes and backslashes, so that every quote left opens or closes a string
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = data.translate(_BRACKETS, _NOT_BRACKETS).replace(b'""', b"")
    if b'"' in brackets:   # brackets inside strings do not nest: keep what is between strings
        brackets = b"".join(brackets.split(b'"')[::2])
    if brackets.count(b"[") != brackets.count(b"]"):
        return "unbalanced"
    for _ in range(max_depth):   # each pass removes the innermost level
        if not brackets:
            return "ok"
        brackets = brackets.replace(b"[]", b"")
    return "deep" if brackets else "ok"


def _prune(text: str, max_depth: int) -> tuple[str, int]:
    """`text` with every array/object that starts deeper than max_depth replaced by TOO_DEEP's JSON.
    A Python loop over every string and bracket: only ever run for an answer that is too deep."""
    out, last, depth, cut, pruned = [], 0, 0, -1, 0
    for m in _TOKENS.finditer(text):
        ch = text[m.start()]
        if ch == '"':
            continue
        if ch in "[{":
            depth += 1
            if depth == max_depth + 1:
                cut = m.start()
        else:
            if depth == max_depth + 1 and cut >= 0:
                out += (text[last:cut], _TOO_DEEP_JSON)
                last, cut = m.end(), -1
                pruned += 1
            depth -= 1
    out.append(text[last:])
    return "".join(out), pruned


def parse_text(raw: str | bytes) -> tuple[str, dict]:
    """(type, data) of one text frame (UTF-8 bytes or str); data is always a dict ({} when absent or null)."""
    try:
        msg = load_json(raw)
    except ProtocolError as exc:
        kind = {"json.too_deep": "text.too_deep", "json.not_utf8": "text.bad_utf8"}.get(exc.kind, "text.bad_json")
        raise ProtocolError(kind, str(exc)) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("text.bad_shape", "expected an object with a string 'type'")
    data = msg.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise ProtocolError("text.bad_shape", f"'data' of {msg['type']!r} is not an object")
    return msg["type"], data


def parse_binary(raw: bytes) -> BinaryFrame:
    """Split one binary frame by its length fields. The image is a zero-copy view into `raw`."""
    try:
        view = memoryview(raw).cast("B")
    except TypeError:
        raise ProtocolError("binary.bad_input", type(raw).__name__) from None
    if len(view) < _HEADER.size:
        raise ProtocolError("binary.truncated", f"{len(view)} bytes")
    event, word = _HEADER.unpack_from(view, 0)
    body = view[_HEADER.size:]
    if event == PREVIEW_IMAGE:
        mime = IMAGE_FORMATS.get(word)
        if mime is None:
            raise ProtocolError("binary.unknown_format", str(word))
        return BinaryFrame(event, mime=mime, image=_image(body))
    if event == PREVIEW_IMAGE_WITH_METADATA:
        meta = _json_object(_slice(body, word))
        prompt_id, node_id, mime = meta.get("prompt_id"), meta.get("node_id"), meta.get("image_type")
        if not all(v is None or isinstance(v, str) for v in (prompt_id, node_id)):
            raise ProtocolError("binary.bad_metadata", "ids must be strings")
        if not isinstance(mime, str) or not mime.startswith("image/"):
            raise ProtocolError("binary.bad_metadata", "image_type missing")
        return BinaryFrame(event, mime=mime, image=_image(body[word:]), prompt_id=prompt_id or None,
                           node_id=node_id or None, metadata=meta)
    if event == TEXT:
        node_id = _utf8(_slice(body, word))
        return BinaryFrame(event, node_id=node_id or None, text=_utf8(body[word:]))
    raise ProtocolError("binary.unknown_type", str(event))


def _slice(body: memoryview, length: int) -> memoryview:
    if length > len(body):
        raise ProtocolError("binary.bad_length", f"{length} > {len(body)}")
    return body[:length]


def _image(view: memoryview) -> memoryview:
    if not len(view):
        raise ProtocolError("binary.empty_image")
    return view


def _utf8(view: memoryview) -> str:
    try:
        return str(view, "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("binary.bad_text", "not UTF-8") from None


def _json_object(view: memoryview) -> dict:
    try:
        value = load_json(view)
    except ProtocolError as exc:
        raise ProtocolError("binary.bad_metadata", exc.kind) from None
    if not isinstance(value, dict):
        raise ProtocolError("binary.bad_metadata", "not an object")
    return value


# ComfyUI message types get their own label value; anything else a server sends counts as "other", so a
# misbehaving server cannot grow the label set without bound.
TEXT_KINDS = frozenset({
    "status", "progress", "progress_state", "executing", "executed", "execution_start", "execution_cached",
    "execution_success", "execution_error", "execution_interrupted", "crystools.monitor", "feature_flags", "logs",
})
_BINARY_KINDS = {1: "preview", 3: "text", 4: "preview_metadata"}


def text_kind(msg_type: str) -> str:
    return msg_type if msg_type in TEXT_KINDS else "other"


def binary_kind(event: int) -> str:
    return "binary." + _BINARY_KINDS.get(event, "other")
