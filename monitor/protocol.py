"""Parse ComfyUI WebSocket frames: JSON text messages and binary previews/text (PROTOCOL.md §4-5)."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}
_HEADER = struct.Struct(">II")


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


def parse_text(raw: str) -> tuple[str, dict]:
    """(type, data) of one text frame; data is always a dict ({} when absent or null)."""
    try:
        msg = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError("text.bad_json", type(exc).__name__) from None
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
        value = json.loads(str(view, "utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ProtocolError("binary.bad_metadata", "not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("binary.bad_metadata", "not an object")
    return value
