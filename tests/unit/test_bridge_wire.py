"""Decoding Backend.AI's bus safely (gateway.bridge.wire, .lifecycle): any bytes in, a message
or a counted refusal out, never an exception of another kind, never a pickle run. The golden
bytes of each generation: tests/unit/test_backendai_fixtures.py."""

from __future__ import annotations

import base64
import enum
import pickle
import sys
import types
import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bridge.lifecycle import SCHEDULING_NAMES, Step, interpret
from gateway.bridge.wire import (
    MAX_ARGS_BYTES,
    Malformed,
    Opaque,
    PickledEnum,
    SourceMessage,
    decode_args,
    decode_broadcast,
    decode_stream_entry,
    enum_value,
)
from publisher.schema import EVENT_NAMES

K = "6f1c3a52-2c64-4d0e-9d1e-3a0f3b7d9a01"
S = "0b4c1e9a-77e5-4c4a-8f0e-5b2d4f1c2a10"


def _pickled_member(module: str, cls: str, value: str) -> bytes:
    """``pickle.dumps(member, protocol=5)`` of a stand-in enum registered as ``module.cls``
    only while pickling (what Backend.AI's msgpack wrapper writes for a reason)."""
    kind = enum.Enum(cls, {"X": value}, type=str, module=module)
    parts = module.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:  # pickle imports the module (and so its parents) to check the name
        sys.modules[name] = types.ModuleType(name)
    setattr(sys.modules[module], cls, kind)
    try:
        return pickle.dumps(kind.X, protocol=5)
    finally:
        for name, before in saved.items():
            if before is None:
                del sys.modules[name]
            else:
                sys.modules[name] = before


def _ext6(data: bytes) -> PickledEnum:
    return PickledEnum(data)


@pytest.mark.parametrize(
    "module",
    ["ai.backend.common.events", "ai.backend.common.events.event_types.kernel.types"],
)
def test_an_allowed_enum_reads_as_its_value(module: str) -> None:
    data = _pickled_member(module, "KernelLifecycleEventReason", "user-requested")
    assert enum_value(PickledEnum(data)) == "user-requested"


@pytest.mark.parametrize(
    ("module", "cls"),
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("ai.backend.common.events", "Other"),
        ("ai.backend.common.events.x", "KernelLifecycleEventReason"),
    ],
)
def test_any_other_global_is_refused_without_running_it(module: str, cls: str) -> None:
    # hand-assembled: the very shape of a reason's pickle, naming another global
    core = bytearray(b"\x80\x05")
    for text in (module, cls):
        core += b"\x8c" + bytes([len(text)]) + text.encode() + b"\x94"
    core += b"\x93\x94\x8c\x02ls\x94\x85\x94R\x94."
    with pytest.raises(Malformed) as info:
        enum_value(PickledEnum(bytes(core)))
    assert info.value.kind == "pickle"


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty
        b"\x80\x05\x8c",  # truncated
        b"cos\nsystem\n(S'ls'\ntR.",  # protocol 0 GLOBAL form
        pickle.dumps(("a", "b"), protocol=5),  # no global at all
        b"\x80\x05" + b"\x8c\x01a" * 400,  # oversized
    ],
)
def test_malformed_pickles_are_refused(payload: bytes) -> None:
    with pytest.raises(Malformed) as info:
        enum_value(PickledEnum(payload))
    assert info.value.kind == "pickle"


def test_a_reason_with_two_arguments_is_refused() -> None:
    data = _pickled_member("ai.backend.common.events", "KernelLifecycleEventReason", "x")
    two = data.replace(b"\x85", b"\x8c\x01y\x86")  # TUPLE1 -> another string, TUPLE2
    with pytest.raises(Malformed, match="shape"):
        enum_value(PickledEnum(two))


def test_pickle_loads_is_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was run")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    evil = b"\x80\x05\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x02ls\x94\x85\x94R\x94."
    args = msgpack.packb([K, S, msgpack.ExtType(6, evil), 0], use_bin_type=True)
    message = decode_stream_entry({b"name": b"kernel_terminated", b"source": b"i-1", b"args": args})
    with pytest.raises(Malformed, match="pickle"):
        interpret(message)


def test_extension_types_outside_the_reason_are_never_opened() -> None:
    info = {"x": msgpack.ExtType(3, b"\x80\x05evil"), "y": msgpack.ExtType(16, b"junk")}
    raw = msgpack.packb([K, S, "", info], use_bin_type=True)
    args = decode_args(raw)
    assert args[3] == {"x": Opaque(3), "y": Opaque(16)}
    step = interpret(SourceMessage("kernel_started", "i-1", args))
    assert step == Step("kernel_started", "kernel", uuid.UUID(K), "")


@pytest.mark.parametrize(
    ("name", "args", "kind"),
    [
        ("kernel_started", [K], "shape"),
        ("kernel_started", ["not-a-uuid", S, "", {}], "uuid"),
        ("kernel_terminated", [K, S, "r", "zero"], "shape"),
        ("kernel_terminated", [K, S, "r", 2**40], "shape"),
        ("session_terminated", [S, "r", "extra"], "shape"),
        ("session_success", [S, b"bytes", 0], "shape"),
        ("session_enqueued", [12, "cid", ""], "uuid"),
        ("scheduling", [S, "cid", "EXPLODED", "r"], "shape"),
        ("scheduling", [S, "cid", 5, "r"], "shape"),
        ("session_started", [S, "cid", "x" * 5000], "shape"),
    ],
)
def test_lifecycle_tuples_of_the_wrong_shape_are_refused(
    name: str, args: list[Any], kind: str
) -> None:
    with pytest.raises(Malformed) as info:
        interpret(SourceMessage(name, "src", tuple(args)))
    assert info.value.kind == kind


def test_every_generation_s_tuples_are_read() -> None:
    k, s = uuid.UUID(K), uuid.UUID(S)
    cases = [
        # 23.03+: (K, S, reason, creation_info); 22.09: (K, creation_id, reason)
        ("kernel_pulling", (K, S, "cr.io/python:3.11", {}), ("kernel", k, "cr.io/python:3.11")),
        ("kernel_started", (K, "abc123", ""), ("kernel", k, "")),
        ("kernel_cancelled", (K, S, "no-resource"), ("kernel", k, "no-resource")),
        ("kernel_terminated", (K, S, "self-terminated", 0), ("kernel", k, "self-terminated", 0)),
        ("kernel_terminated", (K, "user-requested", 137), ("kernel", k, "user-requested", 137)),
        ("kernel_terminating", (K, S, "", None), ("kernel", k, "")),
        ("session_enqueued", (S, "cid", ""), ("session", s, "")),
        ("session_terminated", (S, "user-requested"), ("session", s, "user-requested")),
        ("session_failure", (S, "task-failed", 1), ("session", s, "task-failed", 1)),
    ]
    for name, args, expected in cases:
        step = interpret(SourceMessage(name, "src", args))
        assert step == Step(name, *expected), name  # type: ignore[arg-type]


def test_scheduling_transitions_become_the_manager_s_names() -> None:
    assert SCHEDULING_NAMES["RUNNING"] == "session_started"
    assert SCHEDULING_NAMES["PREPARING"] == "session_preparing"
    assert set(SCHEDULING_NAMES.values()) <= EVENT_NAMES
    step = interpret(SourceMessage("scheduling", "m", (S, "cid", "RUNNING", "triggered")))
    assert step is not None and step.name == "session_started" and step.reason == "triggered"


def test_other_events_on_the_bus_are_not_steps() -> None:
    for name in ("kernel_pull_progress", "bgtask_updated", "do_terminate_session", "x"):
        assert interpret(SourceMessage(name, "m", (K, 1, 2, "x"))) is None
    # before 25.13 the manager did not show session_preparing
    assert interpret(SourceMessage("session_preparing", "m", (S, "c", ""))) is None


def test_envelopes_are_checked() -> None:
    with pytest.raises(Malformed, match="envelope"):
        decode_stream_entry({b"name": b"kernel_started"})
    with pytest.raises(Malformed, match="encoding"):
        decode_stream_entry({b"name": b"\xff\xfe", b"args": msgpack.packb([K])})
    with pytest.raises(Malformed, match="oversized"):
        decode_args(b"\x90" * (MAX_ARGS_BYTES + 1))
    with pytest.raises(Malformed, match="msgpack"):
        decode_args(msgpack.packb({"not": "an array"}))
    for data in (b"not json", b"[1, 2]", b'{"name": "x"}', b'{"name": "x", "args": "!!!"}'):
        with pytest.raises(Malformed):
            decode_broadcast(data)
    good = b'{"name":"session_terminated","source":"m","args":"%s"}' % base64.b64encode(
        msgpack.packb([S, "user-requested"])
    )
    assert decode_broadcast(good) == SourceMessage("session_terminated", "m", (S, "user-requested"))


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from([K, S, "user-requested", "RUNNING"])
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=120)),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_names = st.sampled_from(
    sorted(
        {"kernel_started", "kernel_terminated", "kernel_cancelled", "session_enqueued"}
        | {"session_terminated", "session_success", "scheduling", "bgtask_done", "x"}
    )
)


@settings(max_examples=400, deadline=None)
@given(_names, st.lists(_msgpack_values, max_size=6))
def test_any_argument_tuple_is_read_or_refused_never_raised(name: str, args: list[Any]) -> None:
    raw = msgpack.packb(args, use_bin_type=True)
    message = decode_stream_entry({b"name": name.encode(), b"source": b"s", b"args": raw})
    try:
        step = interpret(message)
    except Malformed:
        return
    if step is not None:
        assert step.name in EVENT_NAMES and isinstance(step.key, uuid.UUID)
        assert isinstance(step.reason, str)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_refused(data: bytes) -> None:
    for decode in (
        lambda: decode_args(data),
        lambda: decode_broadcast(data),
        lambda: enum_value(PickledEnum(data)),
        lambda: decode_stream_entry({b"name": data, b"args": data}),
    ):
        try:
            decode()
        except Malformed:
            pass


#: containers nested ``depth`` deep, as msgpack (array, map, ext-free) and as JSON
_nestings = st.tuples(
    st.integers(min_value=1, max_value=5_000),
    st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdd\x00\x00\x00\x01"]),
)


@settings(max_examples=60, deadline=None)
@given(_nestings)
def test_nesting_of_any_depth_is_read_or_refused_never_raised(nesting: tuple[int, bytes]) -> None:
    """A 1 KB args of arrays nested 1,000 deep made msgspec raise RecursionError, which ended
    the bridge's loop for good (every bridge stopped at that entry): the review's finding."""
    depth, opener = nesting
    raw = opener * depth + b"\xc0"
    text = ("[" * depth + "]" * depth).encode()
    wrapped = b'{"name": "kernel_started", "args": ' + text + b', "source": "s"}'
    for decode in (
        lambda: decode_args(raw),
        lambda: interpret(decode_stream_entry({b"name": b"kernel_started", b"args": raw})),
        lambda: decode_broadcast(text),
        lambda: decode_broadcast(wrapped),
    ):
        try:
            decode()
        except Malformed:
            pass
