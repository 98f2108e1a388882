"""protocol.py against every frame of the ComfyUI 0.3.64 recordings, hand-made broken frames and fuzzing."""
import base64
import json
import struct

import pytest
from hypothesis import given, settings, strategies as st

from monitor.protocol import BinaryFrame, ProtocolError, parse_binary, parse_text
from recordings import load, scenario_names

JPEG, PNG = b"\xff\xd8", b"\x89PNG"
MIMES = {"JPEG": "image/jpeg", "PNG": "image/png"}


def _lines(kind):
    return [(name, line) for name in scenario_names() for line in load(name) if line["kind"] == kind]


BINARY = _lines("ws_binary")
TEXT = _lines("ws_text")


def test_recordings_have_every_binary_type():
    assert {line["event_type"] for _, line in BINARY} == {1, 3, 4}


@pytest.mark.parametrize("name,line", BINARY, ids=[f"{n}-{l['seq']}" for n, l in BINARY])
def test_every_recorded_binary_frame(name, line):
    raw = base64.b64decode(line["b64"])
    assert len(raw) == line["len"]
    frame = parse_binary(raw)
    decoded = line["decoded"]
    assert frame.event == line["event_type"]
    if frame.event == 3:
        assert (frame.node_id, frame.text) == (decoded["node_id"], decoded["text"])
        assert frame.image is None and frame.mime is None
        return
    # Previews: the image is a zero-copy view of the frame, cut at the recorder's offset.
    assert isinstance(frame.image, memoryview) and frame.image.obj is raw
    assert bytes(frame.image) == raw[decoded["image_offset"]:]
    assert len(frame.image) == decoded["image_len"]
    assert bytes(frame.image[:4]).hex() == decoded["image_magic_hex"]
    head = bytes(frame.image[:4])
    assert head.startswith(JPEG if frame.mime == "image/jpeg" else PNG)
    if frame.event == 1:
        assert frame.mime == MIMES[decoded["image_format"]]
        assert frame.prompt_id is frame.node_id is frame.metadata is None
    else:
        assert line["image_type"] == decoded["metadata_len"] == decoded["image_offset"] - 8
        assert frame.metadata == decoded["metadata"]
        assert frame.mime == decoded["metadata"]["image_type"]
        assert frame.prompt_id == decoded["metadata"]["prompt_id"]
        assert frame.node_id == decoded["metadata"]["node_id"]


@pytest.mark.parametrize("name", scenario_names())
def test_every_recorded_text_frame(name):
    for line in load(name):
        if line["kind"] == "ws_text":
            msg_type, data = parse_text(json.dumps(line["msg"]))
            assert msg_type == line["msg"]["type"]
            assert data == line["msg"]["data"]


def _frame(event: int, word: int, body: bytes = b"") -> bytes:
    return struct.pack(">II", event, word) + body


META = json.dumps({"node_id": "3", "prompt_id": "p1", "image_type": "image/png"}).encode()
BAD_IDS = json.dumps({"prompt_id": 5, "image_type": "image/png"}).encode()


def test_type4_ids_and_mime_from_metadata():
    frame = parse_binary(_frame(4, len(META), META + PNG + b"rest"))
    assert (frame.event, frame.prompt_id, frame.node_id, frame.mime) == (4, "p1", "3", "image/png")
    assert bytes(frame.image) == PNG + b"rest"


def test_accepts_bytearray_and_memoryview():
    raw = _frame(1, 1, JPEG + b"x")
    for value in (bytearray(raw), memoryview(raw)):
        assert bytes(parse_binary(value).image) == JPEG + b"x"


def test_type3_with_empty_text():
    assert parse_binary(_frame(3, 1, b"7")) == BinaryFrame(3, node_id="7", text="")


@pytest.mark.parametrize("raw,kind", [
    (b"", "binary.truncated"),
    (b"\x00\x00\x00\x01\x00\x00", "binary.truncated"),
    (_frame(2, 1, JPEG), "binary.unknown_type"),
    (_frame(9, 0, b"x"), "binary.unknown_type"),
    (_frame(1, 3, JPEG), "binary.unknown_format"),
    (_frame(1, 1), "binary.empty_image"),
    (_frame(4, 0xFFFFFFFF, META), "binary.bad_length"),
    (_frame(4, len(META) + 1, META), "binary.bad_length"),
    (_frame(4, len(META), META), "binary.empty_image"),
    (_frame(4, 5, b"{nope" + JPEG), "binary.bad_metadata"),
    (_frame(4, 2, b"[]" + JPEG), "binary.bad_metadata"),
    (_frame(4, 2, b"\xff\xfe" + JPEG), "binary.bad_metadata"),
    (_frame(4, 2, b"{}" + JPEG), "binary.bad_metadata"),  # no image_type
    (_frame(4, len(BAD_IDS), BAD_IDS + JPEG), "binary.bad_metadata"),
    (_frame(3, 40, b"3"), "binary.bad_length"),
    (_frame(3, 1, b"\xff"), "binary.bad_text"),
    (_frame(3, 1, b"3\xc3"), "binary.bad_text"),
    ("text, not bytes", "binary.bad_input"),
])
def test_malformed_binary(raw, kind):
    with pytest.raises(ProtocolError) as info:
        parse_binary(raw)
    assert info.value.kind == kind


@pytest.mark.parametrize("raw,kind", [
    ("", "text.bad_json"),
    ("{", "text.bad_json"),
    ("[" * 100000, "text.bad_json"),
    ('"status"', "text.bad_shape"),
    ("[1, 2]", "text.bad_shape"),
    ('{"data": {}}', "text.bad_shape"),
    ('{"type": 3, "data": {}}', "text.bad_shape"),
    ('{"type": "progress", "data": [1]}', "text.bad_shape"),
    ('{"type": "progress", "data": "x"}', "text.bad_shape"),
])
def test_malformed_text(raw, kind):
    with pytest.raises(ProtocolError) as info:
        parse_text(raw)
    assert info.value.kind == kind


def test_text_without_data_gives_empty_dict():
    assert parse_text('{"type": "x"}') == ("x", {})
    assert parse_text('{"type": "x", "data": null}') == ("x", {})


def _prefixed(event: int):
    return st.tuples(st.integers(0, 2 ** 32 - 1), st.binary(max_size=64)).map(
        lambda t: struct.pack(">II", event, t[0] % 80) + t[1])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=96), _prefixed(1), _prefixed(3), _prefixed(4)))
def test_fuzz_parse_binary_raises_only_protocol_error(raw):
    try:
        frame = parse_binary(raw)
    except ProtocolError as exc:
        assert exc.kind.startswith("binary.")
    else:
        assert frame.event in (1, 3, 4)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=64), JSON.map(json.dumps),
                 st.fixed_dictionaries({"type": JSON, "data": JSON}).map(json.dumps)))
def test_fuzz_parse_text_raises_only_protocol_error(raw):
    try:
        msg_type, data = parse_text(raw)
    except ProtocolError as exc:
        assert exc.kind.startswith("text.")
    else:
        assert isinstance(msg_type, str) and isinstance(data, dict)
