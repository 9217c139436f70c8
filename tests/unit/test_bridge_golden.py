"""The bridge's decoder (gateway.bridge.wire, .lifecycle) on the checked-in bytes of every
wire generation (tests/fixtures/backendai: golden messages built from Backend.AI's published
formats, and hostile ones): each lifecycle message reads as the step it is, with the ids,
reason and exit code a second, independent reader (msgpack-python, pickle opcodes read
with pickletools) finds in it; every hostile one is refused by kind, and none runs."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

from devtools.backendai_bus import KERNEL_ID, SESSION_ID, Fixture, fixtures, pickle_opcodes
from gateway.bridge.lifecycle import KERNEL_STEPS, SESSION_STEPS, interpret
from gateway.bridge.wire import Malformed, SourceMessage, decode_args, decode_broadcast

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "backendai"


@pytest.fixture(autouse=True)
def _no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something unpickled a fixture")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


def _reference_args(data: bytes) -> tuple[Any, ...]:
    """The tuple as msgpack-python reads it, a reason's pickle read by its opcodes."""

    def ext(code: int, payload: bytes) -> Any:
        if code == 6:
            texts = [arg for op, arg in pickle_opcodes(payload) if op == "SHORT_BINUNICODE"]
            return texts[-1]  # module, class, value
        if code == 1:
            return uuid.UUID(bytes=payload)
        return ("ext", code)

    value = msgpack.unpackb(data, ext_hook=ext, raw=False, strict_map_key=False, use_list=False)
    return tuple(value)


def _message(fixture: Fixture, data: bytes) -> SourceMessage:
    if fixture.path.endswith(".json"):
        return decode_broadcast(data)
    return SourceMessage(str(fixture.event), "agent", decode_args(data))


def _golden() -> list[Fixture]:
    return [f for f in fixtures() if f.kind == "golden" and f.path.endswith((".args.bin", ".json"))]


@pytest.mark.parametrize("fixture", _golden(), ids=lambda f: f.path)
def test_every_golden_message_reads_as_its_step(fixture: Fixture) -> None:
    data = (ROOT / fixture.path).read_bytes()
    step = interpret(_message(fixture, data))
    event = str(fixture.event)
    if event not in KERNEL_STEPS | SESSION_STEPS | {"scheduling"}:
        assert step is None  # not a step the stream shows (bgtask, pull progress, commands)
        return
    assert step is not None
    if fixture.path.endswith(".json"):
        data = base64.b64decode(json.loads(data)["args"])
    ref = _reference_args(data)
    if event in KERNEL_STEPS:
        assert (step.lookup, step.key) == ("kernel", KERNEL_ID)
    else:
        assert (step.lookup, step.key) == ("session", SESSION_ID)
    texts = [a for a in ref if isinstance(a, str)]
    if event == "scheduling":
        status, reason = ref[2], ref[3]
        assert step.name == (
            "session_started" if status == "RUNNING" else f"session_{status.lower()}"
        )
        assert step.reason == reason
    else:
        assert step.name == event
        assert step.reason in texts  # the reason the reference reads, not another field
    ints = [a for a in ref if isinstance(a, int) and not isinstance(a, bool)]
    if event in ("kernel_terminating", "kernel_terminated", "session_success", "session_failure"):
        assert step.exit_code == ints[-1]
    else:
        assert step.exit_code is None


#: hostile fixture -> the kind it is refused as (None: a valid message after all)
HOSTILE = {
    "ext6-os-system.args.bin": "pickle",
    "ext6-posix-system.args.bin": "pickle",
    "ext6-builtins-eval.args.bin": "pickle",
    "ext6-subprocess-popen.args.bin": "pickle",
    "ext6-protocol0-global.args.bin": "pickle",
    "ext6-tuple2.args.bin": "pickle",
    "ext6-nested-global.args.bin": "pickle",
    "ext6-build.args.bin": "pickle",
    "ext6-truncated.args.bin": "pickle",
    "ext6-other-class.args.bin": "pickle",
    "ext6-no-memo.args.bin": "pickle",
    "ext6-1mb.args.bin": "oversized",
    "not-an-array-map.args.bin": "msgpack",
    "not-an-array-str.args.bin": "msgpack",
    "not-an-array-int.args.bin": "msgpack",
    "truncated-msgpack.args.bin": "msgpack",
    "bad-utf8.args.bin": "msgpack",
    "wrong-length-short.args.bin": "shape",
    "wrong-length-long.args.bin": "shape",
    "wrong-length-empty.args.bin": "shape",
    "wrong-types.args.bin": "shape",
    "bad-uuid.args.bin": "uuid",
    "25.11-bad-base64.json": "encoding",
    "25.11-not-json.json": "encoding",
    "25.11-not-an-object.json": "envelope",
    "25.11-missing-args.json": "envelope",
    # valid: a UUID packed as ExtType 1, metadata as an object, and extension types inside
    # creation_info that are never opened (a Decimal's and a BinarySize's pickles)
    "ext1-uuid-kernel-id.args.bin": None,
    "26.8-metadata-object.json": None,
    "ext3-decimal-in-creation-info.args.bin": None,
    "ext16-binarysize-in-creation-info.args.bin": None,
}


def test_every_hostile_fixture_is_listed() -> None:
    on_disk = {p.name for p in (ROOT / "hostile").iterdir() if not p.name.endswith(".pickle")}
    assert on_disk == set(HOSTILE)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_messages_are_refused_by_kind(name: str) -> None:
    data = (ROOT / "hostile" / name).read_bytes()
    event = "kernel_started" if "creation-info" in name else "kernel_terminated"
    try:
        if name.endswith(".json"):
            message = decode_broadcast(data)
        else:
            message = SourceMessage(event, "agent", decode_args(data))
        step = interpret(message)
    except Malformed as exc:
        assert exc.kind == HOSTILE[name], exc
        return
    assert HOSTILE[name] is None, f"{name} was not refused"
    assert step is not None and step.key == KERNEL_ID
