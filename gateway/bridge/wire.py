"""Backend.AI's event bus, decoded safely: one message in, its name, source and argument tuple
out, or :class:`Malformed` saying why not. Never ``pickle.loads``: anyone who can reach that
Redis (every agent) can write to it.

Two envelopes (``../shared/BACKENDAI.md`` §1.1, checked against Backend.AI's source):

* the stream generation (22.09 … 25.10): an entry of the ``events`` stream with the fields
  ``name``, ``source`` and ``args``, ``args`` being the event's ``serialize()`` tuple packed
  by ``ai.backend.common.msgpack.packb`` (``EventProducer.produce_event``,
  ``src/ai/backend/common/events.py`` 23.09.0 L1038-1055);
* the Pub/Sub generation (25.11 … 26.8): a JSON object ``{"name", "source", "args",
  "metadata"?}`` on the ``events_all`` channel, ``args`` the same msgpack bytes in base64
  (``MessagePayload.serialize_broadcast``, ``src/ai/backend/common/message_queue/types.py``
  26.8.1 L136-149).

The msgpack is Backend.AI's wrapper's (``src/ai/backend/common/msgpack.py`` 23.09.0 L21-89,
26.8.1 L31-137): arrays, strings as UTF-8, binaries, and extension types ``UUID = 1`` (16
bytes), ``ENUM = 6`` (``pickle.dumps(member, protocol=5)``), and others the lifecycle
arguments do not use (a datetime, a decimal, a path, a binary size). Here an ``ENUM`` becomes
a :class:`PickledEnum`, read only where a reason is expected (:func:`enum_value`, an
allow-list over the pickle's opcodes); any other extension type an :class:`Opaque`, never
looked into.
"""

from __future__ import annotations

import base64
import binascii
import pickletools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "ALLOWED_ENUMS",
    "MAX_ARGS_BYTES",
    "Malformed",
    "MalformedKind",
    "Opaque",
    "PickledEnum",
    "SourceMessage",
    "decode_args",
    "decode_broadcast",
    "decode_stream_entry",
    "enum_value",
]

#: why a message was dropped (the bridge counts each kind, and logs each once)
MalformedKind = Literal[
    "envelope",  # fields or JSON keys missing, or not text
    "encoding",  # not UTF-8, not JSON, not base64
    "msgpack",  # args that do not decode
    "oversized",  # args over MAX_ARGS_BYTES
    "shape",  # a lifecycle event whose tuple is not the one its name has
    "uuid",  # a kernel or session id that is not a UUID
    "pickle",  # a reason packed as ExtType 6 outside the allow-list
    "error",  # anything else a message made decoding raise (logged with its traceback)
]


class Malformed(ValueError):
    """A message the bridge cannot use; ``kind`` is one of :data:`MalformedKind`."""

    def __init__(self, kind: MalformedKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: MalformedKind = kind


#: larger ``args`` are dropped unread (a lifecycle tuple is a few hundred bytes; a kernel's
#: creation_info a few kilobytes)
MAX_ARGS_BYTES: Final = 256 * 1024
#: larger ExtType 6 payloads are refused unparsed (a reason's pickle is about 90 bytes)
_MAX_PICKLE: Final = 512
_MAX_ENUM_VALUE: Final = 256

# Backend.AI's extension type codes (common/msgpack.py 23.09.0 L21-30, ExtTypes)
_EXT_UUID: Final = 1
_EXT_ENUM: Final = 6

#: (module, class) pairs whose pickled members are read as their string value: Backend.AI's
#: KernelLifecycleEventReason, in common/events.py up to 25.7 (22.09.5 … 25.6.0 L339), in
#: common/events/kernel.py in 25.8-25.9, and in common/events/event_types/kernel/types.py
#: from 25.10 (25.11.0, 25.13.0, 26.8.1 L5)
ALLOWED_ENUMS: Final = frozenset(
    {
        ("ai.backend.common.events", "KernelLifecycleEventReason"),
        ("ai.backend.common.events.kernel", "KernelLifecycleEventReason"),
        ("ai.backend.common.events.event_types.kernel.types", "KernelLifecycleEventReason"),
    }
)

#: exactly what ``pickle.dumps(member, protocol=5)`` writes for an Enum member (CPython's C
#: and Python picklers alike): the class by name (module, class, STACK_GLOBAL), its one
#: string argument, the call; "text" is SHORT_BINUNICODE (every name and value < 256 bytes)
_ENUM_SHAPE: Final = (
    "PROTO", "FRAME", "text", "MEMOIZE", "text", "MEMOIZE", "STACK_GLOBAL", "MEMOIZE",
    "text", "MEMOIZE", "TUPLE1", "MEMOIZE", "REDUCE", "MEMOIZE", "STOP",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PickledEnum:
    """An ExtType 6 as it came: a pickled enum member, not yet (and maybe never) read."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Opaque:
    """An extension type the lifecycle arguments do not use; never looked into."""

    code: int


def enum_value(item: PickledEnum) -> str:
    """The string value of an allow-listed enum member (:data:`ALLOWED_ENUMS`), read from the
    pickle's opcodes without running it. Raises :class:`Malformed` (``pickle``) for anything
    else: another module or class, another opcode shape, a value that is not a short string,
    a truncated or oversized pickle."""
    data = item.data
    if len(data) > _MAX_PICKLE:
        raise Malformed("pickle", f"an ExtType 6 of {len(data)} bytes")
    shape: list[str] = []
    texts: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name == "SHORT_BINUNICODE" and isinstance(arg, str):
                shape.append("text")
                texts.append(arg)
            elif name == "PROTO" and arg != 5:
                shape.append(f"PROTO{arg}")
            else:
                shape.append(name)
            if len(shape) > len(_ENUM_SHAPE):
                break
    except Exception as exc:  # genops reports a malformed pickle in several ways
        raise Malformed("pickle", f"an unreadable pickle ({type(exc).__name__})") from None
    if tuple(shape) != _ENUM_SHAPE:
        raise Malformed("pickle", f"a pickle of another shape: {' '.join(shape[:16])}")
    module, cls, value = texts
    if (module, cls) not in ALLOWED_ENUMS:
        raise Malformed("pickle", f"a pickle naming {module[:80]}.{cls[:80]}")
    if len(value) > _MAX_ENUM_VALUE or not value.isprintable():
        raise Malformed("pickle", f"an enum value that is not a short string: {value[:40]!r}")
    return value


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == _EXT_ENUM:
        return PickledEnum(bytes(data))
    if code == _EXT_UUID and len(data) == 16:
        return uuid.UUID(bytes=bytes(data))
    return Opaque(code)


_args_decoder: Final = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def decode_args(raw: bytes) -> tuple[Any, ...]:
    """An event's argument tuple from Backend.AI's msgpack; :class:`Malformed` (``msgpack``,
    ``oversized``) when it is not one."""
    if len(raw) > MAX_ARGS_BYTES:
        raise Malformed("oversized", f"args of {len(raw)} bytes")
    try:
        value = _args_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise Malformed("msgpack", str(exc)[:120]) from None
    except RecursionError:  # arrays or maps nested past the interpreter's limit (1 KB does it)
        raise Malformed("msgpack", "nested too deep") from None
    if not isinstance(value, list):
        raise Malformed("msgpack", f"args are a {type(value).__name__}, not an array")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """One message of Backend.AI's bus: the event's name, who produced it (an agent id or a
    manager's), and its arguments (``serialize()``'s tuple, decoded)."""

    name: str
    source: str
    args: tuple[Any, ...]


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise Malformed("encoding", f"{what} is not UTF-8") from None
    if isinstance(value, str):
        return value
    raise Malformed("envelope", f"{what} is a {type(value).__name__}")


def decode_stream_entry(fields: Mapping[Any, Any]) -> SourceMessage:
    """One entry of the ``events`` stream (its field map, as redis-py returns it: bytes)."""
    name = fields.get(b"name", fields.get("name"))
    args = fields.get(b"args", fields.get("args"))
    source = fields.get(b"source", fields.get("source", b""))
    if name is None or args is None:
        raise Malformed("envelope", "an entry without name or args")
    if not isinstance(args, bytes):
        raise Malformed("envelope", "args are not bytes")
    return SourceMessage(
        _text(name, "name")[:128], _text(source, "source")[:128], decode_args(args)
    )


class _Broadcast(msgspec.Struct):
    name: str
    args: str
    source: str = ""


_broadcast_decoder: Final = msgspec.json.Decoder(_Broadcast)


def decode_broadcast(data: bytes) -> SourceMessage:
    """One message of the ``events_all`` channel (JSON, args in base64)."""
    if len(data) > 2 * MAX_ARGS_BYTES:
        raise Malformed("oversized", f"a message of {len(data)} bytes")
    try:
        message = _broadcast_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise Malformed("envelope", str(exc)[:120]) from None
    except msgspec.DecodeError as exc:
        raise Malformed("encoding", f"not JSON: {str(exc)[:100]}") from None
    except RecursionError:
        raise Malformed("encoding", "JSON nested too deep") from None
    try:
        raw = base64.b64decode(message.args, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("encoding", "args are not base64") from None
    return SourceMessage(message.name[:128], message.source[:128], decode_args(raw))
