"""Backend.AI's event bus, byte for byte: what an unmodified Backend.AI writes on its Redis,
for each wire generation, so the bridge's tests can play a manager and its agents.

Everything here was written from the wire format read in Backend.AI's source (a bare clone of
lablup/backend.ai, read with ``git show TAG:path``); nothing is copied from it and Backend.AI
is never imported. Citations are ``TAG path Lline``; ``common/`` is ``src/ai/backend/common/``.

**The envelope.** Every generation writes ``name`` (the event name), ``source`` (the agent id, or
``"manager"``: ``AGENTID_MANAGER``, common/types.py 26.8.1 L416) and ``args`` (the msgpack of the
event class's ``serialize()`` tuple), in DB 4 (``REDIS_STREAM_DB``, common/defs/__init__.py
26.8.1 L10):

* ≤ 25.5: ``XADD events * name <name> source <source> args <msgpack>`` without MAXLEN
  (``EventProducer.produce_event``: 22.09.0 common/events.py L858-874, 23.09.0 L1038-1054,
  24.09.0 L1118-1134; redis-py ``xadd(key, {b"name":…, b"source":…, b"args":…})``). Every
  process with an ``EventDispatcher`` trims with ``XTRIM events MAXLEN ~ 128`` after each read
  (common/redis_helper.py 22.09.0 L348-386, 23.09.0 L304-341, 25.5.0 L335-373):
  :func:`trim_like_manager`.
* 25.6 … 25.10: the same fields through ``RedisQueue.send`` =
  ``XADD events MAXLEN ~ 128 * …`` (common/message_queue/redis_queue.py 25.6.0 L22, L66-74:
  redis-py's ``xadd(maxlen=128)`` is approximate by default; the opt-in experimental
  ``HiRedisQueue`` sends an exact ``MAXLEN 128``, hiredis_queue.py 25.6.0 L77-87). In 25.10
  ``anycast_event`` and ``broadcast_event`` both XADD the same bytes
  (common/events/dispatcher.py 25.10.0 L635-686), so ``anycast_and_broadcast_event`` writes two
  identical entries. An un-acked entry is re-added with an extra ``_retry_count`` field
  (redis_queue.py 25.6.0 L158-162, common/message_queue/queue.py 25.6.0 L6-32): :meth:`requeue`.
* 25.11 …: anycast = ``XADD events MAXLEN ~ 128 * name … source … args … [metadata <json>]``
  (valkey_stream/client.py 26.8.1 L211-231, ``TrimByMaxLen(exact=False, threshold=128)``);
  broadcast = ``PUBLISH events_all <json>`` where the JSON is ``orjson.dumps`` (compact, UTF-8)
  of ``{"name", "source", "args": base64(msgpack), "metadata"?: <JSON text as a string>}``
  (common/message_queue/types.py 26.8.1 L136-149, common/json.py 26.8.1 L46-50,
  valkey_stream/client.py 26.8.1 L307-321); cached broadcasts are
  ``MULTI; SET <cache_id> <json> EX 300; PUBLISH events_all <json>; EXEC`` (client.py 26.8.1
  L324-348 and L369-401; EX 60 in 25.11-25.12, 25.11.0 L30). The channel and stream names come
  from the manager's ``RedisMQArgs`` (manager/server.py 25.11.0 L773-782,
  manager/dependencies/messaging/message_queue.py 26.8.1 L55-66).

**msgpack.** 22.09.0-22.09.4: ``msgpack.packb(data, use_bin_type=True)``, no ext types
(common/msgpack.py 22.09.0 L10-12). From 22.09.5: ``packb(data, default=_default,
use_bin_type=True, strict_types=True)`` (common/msgpack.py 23.09.0 L33-51 and L73-79, 26.8.1
L39-67 and L110-129): with ``strict_types`` a tuple and every ``str``/``int``/``dict`` subclass
reach ``_default``, which turns a tuple into a list, a UUID into ``ExtType(1, 16 bytes)``, an
``enum.Enum`` into ``ExtType(6, pickle.dumps(member, protocol=5))``, a ``Decimal`` into
``ExtType(3, pickle)``, a ``BinarySize`` into ``ExtType(16, pickle)``, … in that order
(:func:`packb`). So a ``KernelLifecycleEventReason`` member (a ``str`` subclass) is never a
msgpack string: it is a protocol-5 pickle naming its module and class.

Use :class:`BackendAIBus` (redis-py asyncio) or :class:`SyncBackendAIBus` (redis-py sync): one
method per event taking the event class's own arguments for that generation; the pure layer
is :class:`BusCodec`. ``python -m devtools.backendai_bus --write-fixtures`` rewrites the
golden files in ``tests/fixtures/backendai/{bus,hostile}/`` and ``bus/INDEX.md``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import enum
import functools
import inspect
import json
import os
import pickle
import pickletools
import struct
import sys
import types
import uuid
from collections import UserDict, UserString
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any, Generic, Literal, TypeVar, cast

import msgpack

__all__ = [
    "AGENT_ID",
    "BROADCAST_CHANNEL",
    "CREATION_ID",
    "FIXTURES",
    "GENERATIONS",
    "IMAGE",
    "KERNEL_ID",
    "MANAGER_SOURCE",
    "REASONS",
    "REDIS_STREAM_DB",
    "REQUEST_ID",
    "SESSION_ID",
    "STREAM_KEY",
    "TASK_ID",
    "USER_ID",
    "BackendAIBus",
    "BinarySize",
    "BusCodec",
    "Command",
    "Fixture",
    "Generation",
    "KernelLifecycleEventReason",
    "Message",
    "MountPermission",
    "MountTypes",
    "ResourceSlot",
    "Sent",
    "ServicePortProtocols",
    "SlotName",
    "SyncBackendAIBus",
    "fixtures",
    "generation",
    "global_pickle",
    "golden_source",
    "metadata",
    "packb",
    "pickle_opcodes",
    "render_commands",
    "render_index",
    "sample_creation_info",
    "standin_modules",
    "trim_like_manager",
    "trim_like_manager_sync",
    "user_data",
    "write_fixtures",
]

STREAM_KEY = "events"
BROADCAST_CHANNEL = "events_all"
REDIS_STREAM_DB = 4
MANAGER_SOURCE = "manager"
STREAM_MAXLEN = 128  # RedisQueue/valkey _DEFAULT_QUEUE_MAX_LEN / _MAX_STREAM_LENGTH
TRIM_MAXLEN = 128  # redis_helper.read_stream: xtrim(maxlen=128, approximate=True)

Delivery = Literal["anycast", "broadcast", "both"]

# ---------------------------------------------------------------------------------------------
# Stand-ins for the classes Backend.AI pickles, under their real module and class names.

MODULE_EVENTS = "ai.backend.common.events"  # events.py, 22.09.5 … 25.7.x
MODULE_EVENTS_KERNEL = "ai.backend.common.events.kernel"  # events/kernel.py, 25.8.x … 25.9.x
MODULE_KERNEL_TYPES = "ai.backend.common.events.event_types.kernel.types"  # 25.10.0 …
MODULE_TYPES = "ai.backend.common.types"

# Every KernelLifecycleEventReason member any release had (name, value), in the order of
# 26.8.1 common/events/event_types/kernel/types.py L5-35, TASK_DONE (≤ 24.09.0) in its old
# place (23.09.0 common/events.py L214-241).
_REASON_MEMBERS: tuple[tuple[str, str], ...] = (
    ("AGENT_TERMINATION", "agent-termination"),
    ("ALREADY_TERMINATED", "already-terminated"),
    ("ANOMALY_DETECTED", "anomaly-detected"),
    ("EXEC_TIMEOUT", "exec-timeout"),
    ("FAILED_TO_CREATE", "failed-to-create"),
    ("FAILED_TO_START", "failed-to-start"),
    ("FORCE_TERMINATED", "force-terminated"),
    ("BOOTSTRAP_TIMEOUT", "bootstrap-timeout"),
    ("HANG_TIMEOUT", "hang-timeout"),
    ("IDLE_TIMEOUT", "idle-timeout"),
    ("IDLE_SESSION_LIFETIME", "idle-session-lifetime"),
    ("IDLE_UTILIZATION", "idle-utilization"),
    ("KILLED_BY_EVENT", "killed-by-event"),
    ("SERVICE_SCALED_DOWN", "service-scaled-down"),
    ("NEW_CONTAINER_STARTED", "new-container-started"),
    ("PENDING_TIMEOUT", "pending-timeout"),
    ("RESTARTING", "restarting"),
    ("RESTART_TIMEOUT", "restart-timeout"),
    ("RESUMING_AGENT_OPERATION", "resuming-agent-operation"),
    ("SELF_TERMINATED", "self-terminated"),
    ("TASK_DONE", "task-done"),
    ("TASK_FAILED", "task-failed"),
    ("TASK_TIMEOUT", "task-timeout"),
    ("TASK_CANCELLED", "task-cancelled"),
    ("TASK_FINISHED", "task-finished"),
    ("TERMINATED_UNKNOWN_CONTAINER", "terminated-unknown-container"),
    ("UNKNOWN", "unknown"),
    ("USER_REQUESTED", "user-requested"),
    ("USER_PURGED", "user-purged"),
    ("NOT_FOUND_IN_MANAGER", "not-found-in-manager"),
    ("CONTAINER_NOT_FOUND", "container-not-found"),
)


def _reason_class(module: str, strenum: bool, absent: frozenset[str]) -> type[enum.Enum]:
    """A ``KernelLifecycleEventReason`` whose members are every value some tag of the range had
    (the union, so that no real value is refused) and whose pickle names ``module``."""
    members = [(n, v) for n, v in _REASON_MEMBERS if n not in absent]
    qualname = "KernelLifecycleEventReason"
    # the functional API: StrEnum (24.03.0+) or Enum with a str mixin, i.e. (str, enum.Enum)
    mixin: dict[str, Any] = {} if strenum else {"type": str}
    factory: Any = enum.StrEnum if strenum else enum.Enum
    cls: type[enum.Enum] = factory(qualname, members, module=module, qualname=qualname, **mixin)
    cls.backendai_reason = True  # type: ignore[attr-defined]
    return cls


class ServicePortProtocols(enum.StrEnum):
    """Stand-in: 26.8.1 common/types.py L577 (``(str, enum.Enum)`` in 23.09.0 L270; the pickle
    of a member is the same for both bases). Sent inside ``kernel_started``'s creation_info."""

    HTTP = "http"
    TCP = "tcp"
    PREOPEN = "preopen"
    INTERNAL = "internal"
    VNC = "vnc"
    RDP = "rdp"


class MountPermission(enum.StrEnum):
    """Stand-in: 26.8.1 common/types.py L708 (23.09.0 L355)."""

    READ_ONLY = "ro"
    READ_WRITE = "rw"
    RW_DELETE = "wd"


class MountTypes(enum.StrEnum):
    """Stand-in: 26.8.1 common/types.py L803 (23.09.0 L364)."""

    VOLUME = "volume"
    BIND = "bind"
    TMPFS = "tmpfs"
    OVERLAY = "overlay"
    K8S_GENERIC = "k8s-generic"
    K8S_HOSTPATH = "k8s-hostpath"


class BinarySize(int):
    """Stand-in: 26.8.1 common/types.py L935 (an ``int`` subclass: ExtType 16)."""


class ResourceSlot(UserDict[str, Decimal]):
    """Stand-in: 26.8.1 common/types.py L1114 (a ``UserDict`` with ``__slots__ = ("data",)``:
    ExtType 8, 24.09.0+). The pickle is [derived]: same shape, not checked against the real
    class's instance state."""

    __slots__ = ("data",)


class SlotName(UserString):
    """Stand-in: 26.8.1 common/types.py L422 (a ``UserString`` with slots: ExtType 9, 26.1.0+;
    it appears as a *map key* in ``resource_spec.allocations``). Pickle [derived] as above."""

    __slots__ = ("_device_name", "_major_type", "_minor_type", "_parsed")

    def __init__(self, value: str) -> None:
        self._parsed = False
        self._device_name = ""
        self._major_type = ""
        self._minor_type = ""
        super().__init__(value)


for _cls in (ServicePortProtocols, MountPermission, MountTypes, BinarySize, ResourceSlot, SlotName):
    _cls.__module__ = MODULE_TYPES


@contextlib.contextmanager
def standin_modules(*classes: type) -> Iterator[None]:
    """While open, ``sys.modules`` holds a synthetic module (and synthetic parent packages) for
    each class whose module is not importable, carrying the class under its qualified name, so
    that ``pickle.dumps`` writes the real ``module``/``class`` names. Only what this added is
    removed on exit; a module that was already there (``decimal``, ``builtins``) is untouched."""
    added: list[str] = []
    try:
        for cls in classes:
            module = cls.__module__
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    synthetic = types.ModuleType(name)
                    synthetic.__backendai_standin__ = True  # type: ignore[attr-defined]
                    sys.modules[name] = synthetic
                    added.append(name)
            if getattr(sys.modules[module], "__backendai_standin__", False):
                setattr(sys.modules[module], cls.__qualname__, cls)
        yield
    finally:
        for name in reversed(added):
            sys.modules.pop(name, None)


def _pickle5(obj: object) -> bytes:
    """``pickle.dumps(obj, protocol=5)`` as Backend.AI's ``_default`` does, with ``obj``'s class
    reachable under its real module name for the duration."""
    with standin_modules(type(obj)):
        return pickle.dumps(obj, protocol=5)


# ---------------------------------------------------------------------------------------------
# Generations.

_V1 = frozenset({1, 2, 3, 4, 5, 6, 16})  # 22.09.5 … 24.03.x (common/msgpack.py 23.09.0 L22-30)
_V2 = _V1 | {7, 8}  # 24.09.0 … 25.13.x: IMAGE_REF, RESOURCE_SLOT (24.09.0 L22-32)
_V3 = _V2 | {9, 17}  # 26.1.0 …: SLOT_NAME, AUTO_DIRECTORY_PATH (26.8.1 L24-36; 17 from 25.14.0)

_MSGPACK_CITE = {
    "none": "common/msgpack.py 22.09.0 L10-12 (packb: use_bin_type=True only)",
    "v1": "common/msgpack.py 23.09.0 L33-51 (_default), L73-79 (packb); the same file "
    "22.09.5 … 24.03.x",
    "v2a": "common/msgpack.py 24.09.0 L35-59 (_default), L85-104 (DEFAULT_PACK_OPTS, packb)",
    "v2": "common/msgpack.py 25.6.0 L36-60 (_default), L102-121 (DEFAULT_PACK_OPTS, packb)",
    "v3": "common/msgpack.py 26.8.1 L39-67 (_default), L110-129 (DEFAULT_PACK_OPTS, packb)",
}


@dataclasses.dataclass(frozen=True)
class Generation:
    """One wire generation: which tags it covers and everything that decides the bytes."""

    key: str
    tags: str  # the released tags it covers
    canonical: str  # the tag its citations and event shapes were read at
    ext_types: frozenset[int]  # empty: 22.09.0-22.09.4's plain packb
    reason_module: str | None  # the module KernelLifecycleEventReason pickles name
    reason_strenum: bool  # enum.StrEnum (24.03.0+) or (str, enum.Enum); same pickle bytes
    reason_absent: frozenset[str]
    maxlen: bool  # XADD MAXLEN ~ 128 (25.6.0+)
    pubsub: bool  # broadcast = PUBLISH events_all (25.11.0+)
    metadata_style: Literal["", "user_id", "user", "triggered_user"]
    cache_ttl: int  # SET <cache_id> … EX <ttl> of cached broadcasts (25.11.0+)
    msgpack_cite: str
    producer_cite: str
    shapes: str  # which serialize() shapes: "22.09", "22.09.5", "23.03", "23.09", "25.8"

    @functools.cached_property
    def reasons(self) -> type[enum.Enum] | None:
        """This generation's ``KernelLifecycleEventReason`` stand-in (None before 22.09.5)."""
        if self.reason_module is None:
            return None
        return _reason_class(self.reason_module, self.reason_strenum, self.reason_absent)

    @property
    def streams_only(self) -> bool:
        """Every event is one stream entry (no separate broadcast path on the wire)."""
        return not self.pubsub

    def kinds(self, event: str) -> tuple[str, ...]:
        """The delivery kinds Backend.AI has a class for: ``("stream",)`` before 25.10,
        else a subset of ``("anycast", "broadcast")``."""
        return tuple(
            k for k in ("stream", "anycast", "broadcast") if (self.key, event, k) in _CITES
        )

    def events(self) -> list[str]:
        return sorted({e for g, e, _ in _CITES if g == self.key})

    def cite(self, event: str, kind: str | None = None) -> str:
        """``TAG file Lclass Class; serialize() file Lline`` for the event's class."""
        kinds = self.kinds(event)
        if not kinds:
            raise KeyError(f"{event} does not exist in generation {self.key}")
        f, line, cls, sf, sline = _CITES[(self.key, event, kind or kinds[-1])]
        where = "" if sf == f else f"{sf} "
        return f"{self.canonical} {f} L{line} {cls}; serialize() {where}L{sline}"


def _gen(
    key: str,
    tags: str,
    canonical: str,
    shapes: str,
    *,
    ext: frozenset[int] = _V1,
    module: str | None = MODULE_EVENTS,
    strenum: bool = True,
    absent: Sequence[str] = (),
    maxlen: bool = False,
    pubsub: bool = False,
    meta: Literal["", "user_id", "user", "triggered_user"] = "",
    ttl: int = 300,
    mp: str = "v1",
    producer: str,
) -> Generation:
    return Generation(
        key,
        tags,
        canonical,
        ext,
        module,
        strenum,
        frozenset(absent),
        maxlen,
        pubsub,
        meta,
        ttl,
        _MSGPACK_CITE[mp],
        producer,
        shapes,
    )


_OLD = ("BOOTSTRAP_TIMEOUT", "CONTAINER_NOT_FOUND", "USER_PURGED")
GENERATIONS: dict[str, Generation] = {
    g.key: g
    for g in [
        _gen(
            "22.09",
            "22.09.0 … 22.09.4",
            "22.09.0",
            "22.09",
            ext=frozenset(),
            module=None,
            mp="none",
            producer="common/events.py 22.09.0 L858-874 (XADD, no MAXLEN)",
        ),
        _gen(
            "22.09.5",
            "22.09.5 … 22.09.23",
            "22.09.5",
            "22.09.5",
            strenum=False,
            absent=(*_OLD, "FAILED_TO_CREATE", "HANG_TIMEOUT", "SERVICE_SCALED_DOWN"),
            producer="common/events.py 22.09.5 L900-916 (XADD, no MAXLEN)",
        ),
        _gen(
            "23.03",
            "23.03.0",
            "23.03.0",
            "23.03",
            strenum=False,
            absent=(
                *_OLD,
                "FAILED_TO_CREATE",
                "HANG_TIMEOUT",
                "SERVICE_SCALED_DOWN",
                "NOT_FOUND_IN_MANAGER",
            ),
            producer="common/events.py 23.03.0 L895-911 (XADD, no MAXLEN)",
        ),
        _gen(
            "23.09",
            "23.03.1 … 23.09.x",
            "23.09.0",
            "23.09",
            strenum=False,
            absent=_OLD,
            producer="common/events.py 23.09.0 L1038-1054 (XADD, no MAXLEN)",
        ),
        _gen(
            "24.09",
            "24.03.0 … 25.5.x",
            "24.09.0",
            "23.09",
            ext=_V2,
            absent=("USER_PURGED",),
            mp="v2a",
            producer="common/events.py 24.09.0 L1118-1134 (XADD, no MAXLEN)",
        ),
        _gen(
            "25.6",
            "25.6.0 … 25.7.x",
            "25.6.0",
            "23.09",
            ext=_V2,
            absent=("TASK_DONE", "USER_PURGED"),
            maxlen=True,
            mp="v2",
            producer="common/events.py 25.6.0 L1450-1466; message_queue/redis_queue.py 25.6.0 "
            "L22, L66-74 (XADD MAXLEN ~ 128)",
        ),
        _gen(
            "25.8",
            "25.8.0 … 25.9.x",
            "25.8.0",
            "25.8",
            ext=_V2,
            module=MODULE_EVENTS_KERNEL,
            absent=("TASK_DONE", "USER_PURGED"),
            maxlen=True,
            mp="v2",
            producer="common/events/dispatcher.py 25.8.0 L633; message_queue/redis_queue.py "
            "25.8.0 L74 (XADD MAXLEN ~ 128)",
        ),
        _gen(
            "25.10",
            "25.10.x",
            "25.10.0",
            "25.8",
            ext=_V2,
            module=MODULE_KERNEL_TYPES,
            absent=("TASK_DONE", "USER_PURGED"),
            maxlen=True,
            mp="v2",
            producer="common/events/dispatcher.py 25.10.0 L635-686 (anycast and broadcast both "
            "XADD MAXLEN ~ 128)",
        ),
        _gen(
            "25.11",
            "25.11.x",
            "25.11.0",
            "25.8",
            ext=_V2,
            module=MODULE_KERNEL_TYPES,
            absent=("TASK_DONE",),
            maxlen=True,
            pubsub=True,
            ttl=60,
            mp="v2",
            producer="common/events/dispatcher.py 25.11.0 L662-715; message_queue/types.py "
            "25.11.0 L49-69; valkey_stream/client.py 25.11.0 L250, L338-365",
        ),
        _gen(
            "25.12",
            "25.12.x",
            "25.12.0",
            "25.8",
            ext=_V2,
            module=MODULE_KERNEL_TYPES,
            absent=("TASK_DONE",),
            maxlen=True,
            pubsub=True,
            meta="user_id",
            ttl=60,
            mp="v2",
            producer="common/message_queue/types.py 25.12.0 L49-57 (MessageMetadata), L91-116",
        ),
        _gen(
            "25.13",
            "25.13.0 … 26.1.x",
            "25.13.0",
            "25.8",
            ext=_V2,
            module=MODULE_KERNEL_TYPES,
            absent=("TASK_DONE",),
            maxlen=True,
            pubsub=True,
            meta="user",
            mp="v2",
            producer="common/message_queue/types.py 25.13.0 L58-66, L123-135",
        ),
        _gen(
            "26.2",
            "26.2.0 … 26.7.x",
            "26.2.0",
            "25.8",
            ext=_V3,
            module=MODULE_KERNEL_TYPES,
            absent=("TASK_DONE",),
            maxlen=True,
            pubsub=True,
            meta="user",
            mp="v3",
            producer="common/message_queue/types.py (as 25.13.0)",
        ),
        _gen(
            "26.8",
            "26.8.0 … 26.8.1",
            "26.8.1",
            "25.8",
            ext=_V3,
            module=MODULE_KERNEL_TYPES,
            absent=("TASK_DONE",),
            maxlen=True,
            pubsub=True,
            meta="triggered_user",
            mp="v3",
            producer="common/events/dispatcher.py 26.8.1 L682-815; message_queue/types.py "
            "26.8.1 L59-68, L123-149; valkey_stream/client.py 26.8.1 L211-231, L307-401",
        ),
    ]
}
# "24.09" packs with 24.09.0's _V2; 24.03.0-24.03.8 had _V1 (24.03.9 added 8, 24.09.0 7): the
# lifecycle args are the same bytes either way.


#: Where each event class is, per generation, at the canonical tag: ``gen event kind
#: file:class_line ClassName(-"Event") serialize_line`` (kind S = stream before 25.10, A/B =
#: anycast/broadcast class; ``~`` = ``common/events/event_types/``, other paths under
#: ``common/``; a serialize() inherited from another file is ``file:line``). Read with ``ast``
#: from each tag: the class with ``name = ...`` / ``event_name()``, its serialize() resolved
#: through its bases. It is also the table of which events exist in which generation.
_CITES_TABLE = """
22.09 bgtask_updated S events.py:458 BgtaskUpdated 466
22.09 do_terminate_session S events.py:108 DoTerminateSession 114
22.09 kernel_cancelled S events.py:261 KernelCancelled 199
22.09 kernel_creating S events.py:253 KernelCreating 199
22.09 kernel_enqueued S events.py:215 KernelEnqueued 199
22.09 kernel_preparing S events.py:219 KernelPreparing 199
22.09 kernel_pull_progress S events.py:228 KernelPullProgress 235
22.09 kernel_pulling S events.py:223 KernelPulling 199
22.09 kernel_started S events.py:257 KernelStarted 199
22.09 kernel_terminated S events.py:291 KernelTerminated 271
22.09 kernel_terminating S events.py:287 KernelTerminating 271
22.09 session_cancelled S events.py:329 SessionCancelled 301
22.09 session_enqueued S events.py:317 SessionEnqueued 301
22.09 session_failure S events.py:386 SessionFailure 366
22.09 session_preparing S events.py:325 SessionPreparing 301
22.09 session_scheduled S events.py:321 SessionScheduled 301
22.09 session_started S events.py:333 SessionStarted 301
22.09 session_success S events.py:382 SessionSuccess 366
22.09 session_terminated S events.py:356 SessionTerminated 342
22.09.5 bgtask_updated S events.py:498 BgtaskUpdated 506
22.09.5 do_terminate_session S events.py:110 DoTerminateSession 116
22.09.5 kernel_cancelled S events.py:301 KernelCancelled 237
22.09.5 kernel_creating S events.py:293 KernelCreating 237
22.09.5 kernel_enqueued S events.py:255 KernelEnqueued 237
22.09.5 kernel_preparing S events.py:259 KernelPreparing 237
22.09.5 kernel_pull_progress S events.py:268 KernelPullProgress 275
22.09.5 kernel_pulling S events.py:263 KernelPulling 237
22.09.5 kernel_started S events.py:297 KernelStarted 237
22.09.5 kernel_terminated S events.py:331 KernelTerminated 311
22.09.5 kernel_terminating S events.py:327 KernelTerminating 311
22.09.5 session_cancelled S events.py:369 SessionCancelled 341
22.09.5 session_enqueued S events.py:357 SessionEnqueued 341
22.09.5 session_failure S events.py:426 SessionFailure 406
22.09.5 session_preparing S events.py:365 SessionPreparing 341
22.09.5 session_scheduled S events.py:361 SessionScheduled 341
22.09.5 session_started S events.py:373 SessionStarted 341
22.09.5 session_success S events.py:422 SessionSuccess 406
22.09.5 session_terminated S events.py:396 SessionTerminated 382
23.03 bgtask_updated S events.py:493 BgtaskUpdated 501
23.03 do_terminate_session S events.py:109 DoTerminateSession 115
23.03 kernel_cancelled S events.py:292 KernelCancelled 234
23.03 kernel_creating S events.py:284 KernelCreating 234
23.03 kernel_preparing S events.py:250 KernelPreparing 234
23.03 kernel_pull_progress S events.py:259 KernelPullProgress 266
23.03 kernel_pulling S events.py:254 KernelPulling 234
23.03 kernel_started S events.py:288 KernelStarted 234
23.03 kernel_terminated S events.py:322 KernelTerminated 302
23.03 kernel_terminating S events.py:318 KernelTerminating 302
23.03 session_cancelled S events.py:360 SessionCancelled 332
23.03 session_enqueued S events.py:348 SessionEnqueued 332
23.03 session_failure S events.py:421 SessionFailure 401
23.03 session_preparing S events.py:356 SessionPreparing 332
23.03 session_scheduled S events.py:352 SessionScheduled 332
23.03 session_started S events.py:364 SessionStarted 332
23.03 session_success S events.py:417 SessionSuccess 401
23.03 session_terminated S events.py:391 SessionTerminated 373
23.03 session_terminating S events.py:387 SessionTerminating 373
23.09 bgtask_updated S events.py:515 BgtaskUpdated 523
23.09 do_terminate_session S events.py:114 DoTerminateSession 120
23.09 kernel_cancelled S events.py:319 KernelCancelled 259
23.09 kernel_creating S events.py:311 KernelCreating 259
23.09 kernel_preparing S events.py:277 KernelPreparing 259
23.09 kernel_pull_progress S events.py:286 KernelPullProgress 293
23.09 kernel_pulling S events.py:281 KernelPulling 259
23.09 kernel_started S events.py:315 KernelStarted 259
23.09 kernel_terminated S events.py:360 KernelTerminated 338
23.09 kernel_terminating S events.py:356 KernelTerminating 338
23.09 session_cancelled S events.py:398 SessionCancelled 370
23.09 session_enqueued S events.py:386 SessionEnqueued 370
23.09 session_failure S events.py:459 SessionFailure 439
23.09 session_preparing S events.py:394 SessionPreparing 370
23.09 session_scheduled S events.py:390 SessionScheduled 370
23.09 session_started S events.py:402 SessionStarted 370
23.09 session_success S events.py:455 SessionSuccess 439
23.09 session_terminated S events.py:429 SessionTerminated 411
23.09 session_terminating S events.py:425 SessionTerminating 411
24.09 bgtask_updated S events.py:555 BgtaskUpdated 563
24.09 do_terminate_session S events.py:113 DoTerminateSession 119
24.09 kernel_cancelled S events.py:322 KernelCancelled 262
24.09 kernel_creating S events.py:314 KernelCreating 262
24.09 kernel_preparing S events.py:280 KernelPreparing 262
24.09 kernel_pull_progress S events.py:289 KernelPullProgress 296
24.09 kernel_pulling S events.py:284 KernelPulling 262
24.09 kernel_started S events.py:318 KernelStarted 262
24.09 kernel_terminated S events.py:384 KernelTerminated 362
24.09 kernel_terminating S events.py:380 KernelTerminating 362
24.09 session_cancelled S events.py:422 SessionCancelled 394
24.09 session_enqueued S events.py:410 SessionEnqueued 394
24.09 session_failure S events.py:483 SessionFailure 463
24.09 session_preparing S events.py:418 SessionPreparing 394
24.09 session_scheduled S events.py:414 SessionScheduled 394
24.09 session_started S events.py:426 SessionStarted 394
24.09 session_success S events.py:479 SessionSuccess 463
24.09 session_terminated S events.py:453 SessionTerminated 435
24.09 session_terminating S events.py:449 SessionTerminating 435
25.6 bgtask_updated S events.py:710 BgtaskUpdated 718
25.6 do_terminate_session S events.py:117 DoTerminateSession 123
25.6 kernel_cancelled S events.py:449 KernelCancelled 388
25.6 kernel_creating S events.py:441 KernelCreating 388
25.6 kernel_preparing S events.py:406 KernelPreparing 388
25.6 kernel_pull_progress S events.py:416 KernelPullProgress 423
25.6 kernel_pulling S events.py:410 KernelPulling 388
25.6 kernel_started S events.py:445 KernelStarted 388
25.6 kernel_terminated S events.py:511 KernelTerminated 489
25.6 kernel_terminating S events.py:507 KernelTerminating 489
25.6 session_cancelled S events.py:553 SessionCancelled 521
25.6 session_checking_precondition S events.py:545 SessionCheckingPrecond 521
25.6 session_enqueued S events.py:537 SessionEnqueued 521
25.6 session_failure S events.py:614 SessionFailure 594
25.6 session_preparing S events.py:549 SessionPreparing 521
25.6 session_scheduled S events.py:541 SessionScheduled 521
25.6 session_started S events.py:557 SessionStarted 521
25.6 session_success S events.py:610 SessionSuccess 594
25.6 session_terminated S events.py:584 SessionTerminated 566
25.6 session_terminating S events.py:580 SessionTerminating 566
25.8 bgtask_updated S events/bgtask.py:41 BgtaskUpdated 46
25.8 do_terminate_session S events/session.py:62 DoTerminateSession 65
25.8 kernel_cancelled S events/kernel.py:136 KernelCancelled 138
25.8 kernel_creating S events/kernel.py:122 KernelCreating 82
25.8 kernel_preparing S events/kernel.py:106 KernelPreparing 82
25.8 kernel_pulling S events/kernel.py:114 KernelPulling 82
25.8 kernel_started S events/kernel.py:129 KernelStarted 82
25.8 kernel_terminated S events/kernel.py:201 KernelTerminated 167
25.8 kernel_terminating S events/kernel.py:194 KernelTerminating 167
25.8 session_cancelled S events/session.py:145 SessionCancelled 91
25.8 session_checking_precondition S events/session.py:129 SessionCheckingPrecond 91
25.8 session_enqueued S events/session.py:113 SessionEnqueued 91
25.8 session_failure S events/session.py:234 SessionFailure 205
25.8 session_preparing S events/session.py:137 SessionPreparing 91
25.8 session_scheduled S events/session.py:121 SessionScheduled 91
25.8 session_started S events/session.py:153 SessionStarted 91
25.8 session_success S events/session.py:226 SessionSuccess 205
25.8 session_terminated S events/session.py:193 SessionTerminated 165
25.8 session_terminating S events/session.py:185 SessionTerminating 165
25.10 bgtask_updated B ~bgtask/broadcast.py:41 BgtaskUpdated 46
25.10 do_terminate_session A ~session/anycast.py:63 DoTerminateSession 66
25.10 do_terminate_session B ~session/broadcast.py:30 DoTerminateSession 33
25.10 kernel_cancelled A ~kernel/anycast.py:95 KernelCancelledAnycast 97
25.10 kernel_cancelled B ~kernel/broadcast.py:100 KernelCancelledBroadcast 102
25.10 kernel_creating A ~kernel/anycast.py:81 KernelCreatingAnycast 41
25.10 kernel_creating B ~kernel/broadcast.py:86 KernelCreatingBroadcast 46
25.10 kernel_preparing A ~kernel/anycast.py:65 KernelPreparingAnycast 41
25.10 kernel_preparing B ~kernel/broadcast.py:70 KernelPreparingBroadcast 46
25.10 kernel_pulling A ~kernel/anycast.py:73 KernelPullingAnycast 41
25.10 kernel_pulling B ~kernel/broadcast.py:78 KernelPullingBroadcast 46
25.10 kernel_started A ~kernel/anycast.py:88 KernelStartedAnycast 41
25.10 kernel_started B ~kernel/broadcast.py:93 KernelStartedBroadcast 46
25.10 kernel_terminated A ~kernel/anycast.py:160 KernelTerminatedAnycast 126
25.10 kernel_terminated B ~kernel/broadcast.py:165 KernelTerminatedBroadcast 131
25.10 kernel_terminating A ~kernel/anycast.py:153 KernelTerminatingAnycast 126
25.10 kernel_terminating B ~kernel/broadcast.py:158 KernelTerminatingBroadcast 131
25.10 session_cancelled A ~session/anycast.py:146 SessionCancelledAnycast 92
25.10 session_cancelled B ~session/broadcast.py:113 SessionCancelledBroadcast 59
25.10 session_checking_precondition A ~session/anycast.py:130 SessionCheckingPrecondAnycast 92
25.10 session_checking_precondition B ~session/broadcast.py:97 SessionCheckingPrecondBroadcast 59
25.10 session_enqueued A ~session/anycast.py:114 SessionEnqueuedAnycast 92
25.10 session_enqueued B ~session/broadcast.py:81 SessionEnqueuedBroadcast 59
25.10 session_failure A ~session/anycast.py:235 SessionFailureAnycast 206
25.10 session_failure B ~session/broadcast.py:202 SessionFailureBroadcast 173
25.10 session_preparing A ~session/anycast.py:138 SessionPreparingAnycast 92
25.10 session_preparing B ~session/broadcast.py:105 SessionPreparingBroadcast 59
25.10 session_scheduled A ~session/anycast.py:122 SessionScheduledAnycast 92
25.10 session_scheduled B ~session/broadcast.py:89 SessionScheduledBroadcast 59
25.10 session_started A ~session/anycast.py:154 SessionStartedAnycast 92
25.10 session_started B ~session/broadcast.py:121 SessionStartedBroadcast 59
25.10 session_success A ~session/anycast.py:227 SessionSuccessAnycast 206
25.10 session_success B ~session/broadcast.py:194 SessionSuccessBroadcast 173
25.10 session_terminated A ~session/anycast.py:194 SessionTerminatedAnycast 166
25.10 session_terminated B ~session/broadcast.py:161 SessionTerminatedBroadcast 133
25.10 session_terminating A ~session/anycast.py:186 SessionTerminatingAnycast 166
25.10 session_terminating B ~session/broadcast.py:153 SessionTerminatingBroadcast 133
25.11 bgtask_updated B ~bgtask/broadcast.py:41 BgtaskUpdated 46
25.11 do_terminate_session A ~session/anycast.py:63 DoTerminateSession 66
25.11 do_terminate_session B ~session/broadcast.py:30 DoTerminateSession 33
25.11 kernel_cancelled A ~kernel/anycast.py:95 KernelCancelledAnycast 97
25.11 kernel_cancelled B ~kernel/broadcast.py:95 KernelCancelledBroadcast 97
25.11 kernel_creating A ~kernel/anycast.py:81 KernelCreatingAnycast 41
25.11 kernel_creating B ~kernel/broadcast.py:81 KernelCreatingBroadcast 41
25.11 kernel_preparing A ~kernel/anycast.py:65 KernelPreparingAnycast 41
25.11 kernel_preparing B ~kernel/broadcast.py:65 KernelPreparingBroadcast 41
25.11 kernel_pulling A ~kernel/anycast.py:73 KernelPullingAnycast 41
25.11 kernel_pulling B ~kernel/broadcast.py:73 KernelPullingBroadcast 41
25.11 kernel_started A ~kernel/anycast.py:88 KernelStartedAnycast 41
25.11 kernel_started B ~kernel/broadcast.py:88 KernelStartedBroadcast 41
25.11 kernel_terminated A ~kernel/anycast.py:160 KernelTerminatedAnycast 126
25.11 kernel_terminated B ~kernel/broadcast.py:160 KernelTerminatedBroadcast 126
25.11 kernel_terminating A ~kernel/anycast.py:153 KernelTerminatingAnycast 126
25.11 kernel_terminating B ~kernel/broadcast.py:153 KernelTerminatingBroadcast 126
25.11 session_cancelled A ~session/anycast.py:146 SessionCancelledAnycast 92
25.11 session_cancelled B ~session/broadcast.py:113 SessionCancelledBroadcast 59
25.11 session_checking_precondition A ~session/anycast.py:130 SessionCheckingPrecondAnycast 92
25.11 session_checking_precondition B ~session/broadcast.py:97 SessionCheckingPrecondBroadcast 59
25.11 session_enqueued A ~session/anycast.py:114 SessionEnqueuedAnycast 92
25.11 session_enqueued B ~session/broadcast.py:81 SessionEnqueuedBroadcast 59
25.11 session_failure A ~session/anycast.py:235 SessionFailureAnycast 206
25.11 session_failure B ~session/broadcast.py:202 SessionFailureBroadcast 173
25.11 session_preparing A ~session/anycast.py:138 SessionPreparingAnycast 92
25.11 session_preparing B ~session/broadcast.py:105 SessionPreparingBroadcast 59
25.11 session_scheduled A ~session/anycast.py:122 SessionScheduledAnycast 92
25.11 session_scheduled B ~session/broadcast.py:89 SessionScheduledBroadcast 59
25.11 session_started A ~session/anycast.py:154 SessionStartedAnycast 92
25.11 session_started B ~session/broadcast.py:121 SessionStartedBroadcast 59
25.11 session_success A ~session/anycast.py:227 SessionSuccessAnycast 206
25.11 session_success B ~session/broadcast.py:194 SessionSuccessBroadcast 173
25.11 session_terminated A ~session/anycast.py:194 SessionTerminatedAnycast 166
25.11 session_terminated B ~session/broadcast.py:161 SessionTerminatedBroadcast 133
25.11 session_terminating A ~session/anycast.py:186 SessionTerminatingAnycast 166
25.11 session_terminating B ~session/broadcast.py:153 SessionTerminatingBroadcast 133
25.12 bgtask_updated B ~bgtask/broadcast.py:41 BgtaskUpdated 46
25.12 do_terminate_session A ~session/anycast.py:63 DoTerminateSession 66
25.12 do_terminate_session B ~session/broadcast.py:30 DoTerminateSession 33
25.12 kernel_cancelled A ~kernel/anycast.py:95 KernelCancelledAnycast 97
25.12 kernel_cancelled B ~kernel/broadcast.py:95 KernelCancelledBroadcast 97
25.12 kernel_creating A ~kernel/anycast.py:81 KernelCreatingAnycast 41
25.12 kernel_creating B ~kernel/broadcast.py:81 KernelCreatingBroadcast 41
25.12 kernel_preparing A ~kernel/anycast.py:65 KernelPreparingAnycast 41
25.12 kernel_preparing B ~kernel/broadcast.py:65 KernelPreparingBroadcast 41
25.12 kernel_pulling A ~kernel/anycast.py:73 KernelPullingAnycast 41
25.12 kernel_pulling B ~kernel/broadcast.py:73 KernelPullingBroadcast 41
25.12 kernel_started A ~kernel/anycast.py:88 KernelStartedAnycast 41
25.12 kernel_started B ~kernel/broadcast.py:88 KernelStartedBroadcast 41
25.12 kernel_terminated A ~kernel/anycast.py:160 KernelTerminatedAnycast 126
25.12 kernel_terminated B ~kernel/broadcast.py:160 KernelTerminatedBroadcast 126
25.12 kernel_terminating A ~kernel/anycast.py:153 KernelTerminatingAnycast 126
25.12 kernel_terminating B ~kernel/broadcast.py:153 KernelTerminatingBroadcast 126
25.12 session_cancelled A ~session/anycast.py:146 SessionCancelledAnycast 92
25.12 session_cancelled B ~session/broadcast.py:113 SessionCancelledBroadcast 59
25.12 session_checking_precondition A ~session/anycast.py:130 SessionCheckingPrecondAnycast 92
25.12 session_checking_precondition B ~session/broadcast.py:97 SessionCheckingPrecondBroadcast 59
25.12 session_enqueued A ~session/anycast.py:114 SessionEnqueuedAnycast 92
25.12 session_enqueued B ~session/broadcast.py:81 SessionEnqueuedBroadcast 59
25.12 session_failure A ~session/anycast.py:235 SessionFailureAnycast 206
25.12 session_failure B ~session/broadcast.py:202 SessionFailureBroadcast 173
25.12 session_preparing A ~session/anycast.py:138 SessionPreparingAnycast 92
25.12 session_preparing B ~session/broadcast.py:105 SessionPreparingBroadcast 59
25.12 session_scheduled A ~session/anycast.py:122 SessionScheduledAnycast 92
25.12 session_scheduled B ~session/broadcast.py:89 SessionScheduledBroadcast 59
25.12 session_started A ~session/anycast.py:154 SessionStartedAnycast 92
25.12 session_started B ~session/broadcast.py:121 SessionStartedBroadcast 59
25.12 session_success A ~session/anycast.py:227 SessionSuccessAnycast 206
25.12 session_success B ~session/broadcast.py:194 SessionSuccessBroadcast 173
25.12 session_terminated A ~session/anycast.py:194 SessionTerminatedAnycast 166
25.12 session_terminated B ~session/broadcast.py:161 SessionTerminatedBroadcast 133
25.12 session_terminating A ~session/anycast.py:186 SessionTerminatingAnycast 166
25.12 session_terminating B ~session/broadcast.py:153 SessionTerminatingBroadcast 133
25.13 bgtask_updated B ~bgtask/broadcast.py:41 BgtaskUpdated 46
25.13 do_terminate_session A ~session/anycast.py:63 DoTerminateSession 66
25.13 do_terminate_session B ~session/broadcast.py:34 DoTerminateSession 37
25.13 kernel_cancelled A ~kernel/anycast.py:95 KernelCancelledAnycast 97
25.13 kernel_cancelled B ~kernel/broadcast.py:95 KernelCancelledBroadcast 97
25.13 kernel_creating A ~kernel/anycast.py:81 KernelCreatingAnycast 41
25.13 kernel_creating B ~kernel/broadcast.py:81 KernelCreatingBroadcast 41
25.13 kernel_preparing A ~kernel/anycast.py:65 KernelPreparingAnycast 41
25.13 kernel_preparing B ~kernel/broadcast.py:65 KernelPreparingBroadcast 41
25.13 kernel_pulling A ~kernel/anycast.py:73 KernelPullingAnycast 41
25.13 kernel_pulling B ~kernel/broadcast.py:73 KernelPullingBroadcast 41
25.13 kernel_started A ~kernel/anycast.py:88 KernelStartedAnycast 41
25.13 kernel_started B ~kernel/broadcast.py:88 KernelStartedBroadcast 41
25.13 kernel_terminated A ~kernel/anycast.py:160 KernelTerminatedAnycast 126
25.13 kernel_terminated B ~kernel/broadcast.py:156 KernelTerminatedBroadcast 126
25.13 kernel_terminating A ~kernel/anycast.py:153 KernelTerminatingAnycast 126
25.13 kernel_terminating B ~kernel/broadcast.py:149 KernelTerminatingBroadcast 126
25.13 scheduling B ~session/broadcast.py:222 SchedulingBroadcast 240
25.13 session_cancelled A ~session/anycast.py:146 SessionCancelledAnycast 92
25.13 session_cancelled B ~session/broadcast.py:117 SessionCancelledBroadcast 63
25.13 session_checking_precondition A ~session/anycast.py:130 SessionCheckingPrecondAnycast 92
25.13 session_checking_precondition B ~session/broadcast.py:101 SessionCheckingPrecondBroadcast 63
25.13 session_enqueued A ~session/anycast.py:114 SessionEnqueuedAnycast 92
25.13 session_enqueued B ~session/broadcast.py:85 SessionEnqueuedBroadcast 63
25.13 session_failure A ~session/anycast.py:235 SessionFailureAnycast 206
25.13 session_failure B ~session/broadcast.py:206 SessionFailureBroadcast 177
25.13 session_preparing A ~session/anycast.py:138 SessionPreparingAnycast 92
25.13 session_preparing B ~session/broadcast.py:109 SessionPreparingBroadcast 63
25.13 session_scheduled A ~session/anycast.py:122 SessionScheduledAnycast 92
25.13 session_scheduled B ~session/broadcast.py:93 SessionScheduledBroadcast 63
25.13 session_started A ~session/anycast.py:154 SessionStartedAnycast 92
25.13 session_started B ~session/broadcast.py:125 SessionStartedBroadcast 63
25.13 session_success A ~session/anycast.py:227 SessionSuccessAnycast 206
25.13 session_success B ~session/broadcast.py:198 SessionSuccessBroadcast 177
25.13 session_terminated A ~session/anycast.py:194 SessionTerminatedAnycast 166
25.13 session_terminated B ~session/broadcast.py:165 SessionTerminatedBroadcast 137
25.13 session_terminating A ~session/anycast.py:186 SessionTerminatingAnycast 166
25.13 session_terminating B ~session/broadcast.py:157 SessionTerminatingBroadcast 137
26.2 bgtask_updated B ~bgtask/broadcast.py:43 BgtaskUpdated 48
26.2 do_terminate_session A ~session/anycast.py:57 DoTerminateSession 60
26.2 do_terminate_session B ~session/broadcast.py:36 DoTerminateSession 39
26.2 kernel_cancelled A ~kernel/anycast.py:98 KernelCancelledAnycast 100
26.2 kernel_cancelled B ~kernel/broadcast.py:98 KernelCancelledBroadcast 100
26.2 kernel_creating A ~kernel/anycast.py:84 KernelCreatingAnycast 44
26.2 kernel_creating B ~kernel/broadcast.py:84 KernelCreatingBroadcast 44
26.2 kernel_preparing A ~kernel/anycast.py:68 KernelPreparingAnycast 44
26.2 kernel_preparing B ~kernel/broadcast.py:68 KernelPreparingBroadcast 44
26.2 kernel_pulling A ~kernel/anycast.py:76 KernelPullingAnycast 44
26.2 kernel_pulling B ~kernel/broadcast.py:76 KernelPullingBroadcast 44
26.2 kernel_started A ~kernel/anycast.py:91 KernelStartedAnycast 44
26.2 kernel_started B ~kernel/broadcast.py:91 KernelStartedBroadcast 44
26.2 kernel_terminated A ~kernel/anycast.py:163 KernelTerminatedAnycast 129
26.2 kernel_terminated B ~kernel/broadcast.py:159 KernelTerminatedBroadcast 129
26.2 kernel_terminating A ~kernel/anycast.py:156 KernelTerminatingAnycast 129
26.2 kernel_terminating B ~kernel/broadcast.py:152 KernelTerminatingBroadcast 129
26.2 scheduling B ~session/broadcast.py:200 SchedulingBroadcast 218
26.2 session_cancelled A ~session/anycast.py:124 SessionCancelledAnycast 86
26.2 session_cancelled B ~session/broadcast.py:103 SessionCancelledBroadcast 65
26.2 session_checking_precondition A ~session/anycast.py:116 SessionCheckingPrecondAnycast 86
26.2 session_checking_precondition B ~session/broadcast.py:95 SessionCheckingPrecondBroadcast 65
26.2 session_enqueued A ~session/anycast.py:108 SessionEnqueuedAnycast 86
26.2 session_enqueued B ~session/broadcast.py:87 SessionEnqueuedBroadcast 65
26.2 session_failure A ~session/anycast.py:213 SessionFailureAnycast 184
26.2 session_failure B ~session/broadcast.py:184 SessionFailureBroadcast 155
26.2 session_started A ~session/anycast.py:132 SessionStartedAnycast 86
26.2 session_success A ~session/anycast.py:205 SessionSuccessAnycast 184
26.2 session_success B ~session/broadcast.py:176 SessionSuccessBroadcast 155
26.2 session_terminated A ~session/anycast.py:172 SessionTerminatedAnycast 144
26.2 session_terminated B ~session/broadcast.py:143 SessionTerminatedBroadcast 115
26.2 session_terminating A ~session/anycast.py:164 SessionTerminatingAnycast 144
26.2 session_terminating B ~session/broadcast.py:135 SessionTerminatingBroadcast 115
26.8 bgtask_updated B ~bgtask/broadcast.py:43 BgtaskUpdated 49
26.8 do_terminate_session A ~session/anycast.py:57 DoTerminateSession 61
26.8 do_terminate_session B ~session/broadcast.py:36 DoTerminateSession 40
26.8 kernel_cancelled A ~kernel/anycast.py:98 KernelCancelledAnycast 100
26.8 kernel_cancelled B ~kernel/broadcast.py:98 KernelCancelledBroadcast 100
26.8 kernel_creating A ~kernel/anycast.py:84 KernelCreatingAnycast 44
26.8 kernel_creating B ~kernel/broadcast.py:84 KernelCreatingBroadcast 44
26.8 kernel_preparing A ~kernel/anycast.py:68 KernelPreparingAnycast 44
26.8 kernel_preparing B ~kernel/broadcast.py:68 KernelPreparingBroadcast 44
26.8 kernel_pulling A ~kernel/anycast.py:76 KernelPullingAnycast 44
26.8 kernel_pulling B ~kernel/broadcast.py:76 KernelPullingBroadcast 44
26.8 kernel_started A ~kernel/anycast.py:91 KernelStartedAnycast 44
26.8 kernel_started B ~kernel/broadcast.py:91 KernelStartedBroadcast 44
26.8 kernel_terminated A ~kernel/anycast.py:163 KernelTerminatedAnycast 129
26.8 kernel_terminated B ~kernel/broadcast.py:159 KernelTerminatedBroadcast 129
26.8 kernel_terminating A ~kernel/anycast.py:156 KernelTerminatingAnycast 129
26.8 kernel_terminating B ~kernel/broadcast.py:152 KernelTerminatingBroadcast 129
26.8 scheduling B ~session/broadcast.py:203 SchedulingBroadcast 221
26.8 session_cancelled A ~session/anycast.py:125 SessionCancelledAnycast 87
26.8 session_cancelled B ~session/broadcast.py:104 SessionCancelledBroadcast 66
26.8 session_checking_precondition A ~session/anycast.py:117 SessionCheckingPrecondAnycast 87
26.8 session_checking_precondition B ~session/broadcast.py:96 SessionCheckingPrecondBroadcast 66
26.8 session_enqueued A ~session/anycast.py:109 SessionEnqueuedAnycast 87
26.8 session_enqueued B ~session/broadcast.py:88 SessionEnqueuedBroadcast 66
26.8 session_failure A ~session/anycast.py:216 SessionFailureAnycast 186
26.8 session_failure B ~session/broadcast.py:187 SessionFailureBroadcast 157
26.8 session_started A ~session/anycast.py:133 SessionStartedAnycast 87
26.8 session_success A ~session/anycast.py:208 SessionSuccessAnycast 186
26.8 session_success B ~session/broadcast.py:179 SessionSuccessBroadcast 157
26.8 session_terminated A ~session/anycast.py:173 SessionTerminatedAnycast 145
26.8 session_terminated B ~session/broadcast.py:144 SessionTerminatedBroadcast 116
26.8 session_terminating A ~session/anycast.py:165 SessionTerminatingAnycast 145
26.8 session_terminating B ~session/broadcast.py:136 SessionTerminatingBroadcast 116
"""
_KINDS = {"S": "stream", "A": "anycast", "B": "broadcast"}


def _parse_cites() -> dict[tuple[str, str, str], tuple[str, int, str, str, int]]:
    out: dict[tuple[str, str, str], tuple[str, int, str, str, int]] = {}
    for row in _CITES_TABLE.strip().splitlines():
        g, event, kind, where, cls, ser = row.split()
        path, line = where.rsplit(":", 1)
        spath, sline = ser.rsplit(":", 1) if ":" in ser else (path, ser)

        def full(p: str) -> str:
            return p.replace("~", "common/events/event_types/") if "~" in p else f"common/{p}"

        out[(g, event, _KINDS[kind])] = (
            full(path),
            int(line),
            cls + "Event",
            full(spath),
            int(sline),
        )
    return out


_CITES = _parse_cites()


def generation(key: str) -> Generation:
    try:
        return GENERATIONS[key]
    except KeyError:
        raise ValueError(f"unknown generation {key!r}; one of {sorted(GENERATIONS)}") from None


#: Each generation's KernelLifecycleEventReason stand-in (none for 22.09).
REASONS: dict[str, type[enum.Enum]] = {
    k: g.reasons for k, g in GENERATIONS.items() if g.reasons is not None
}
#: 26.8.1's KernelLifecycleEventReason (enum.StrEnum in
#: ai.backend.common.events.event_types.kernel.types).
KernelLifecycleEventReason = REASONS["26.8"]


# ---------------------------------------------------------------------------------------------
# msgpack, as each generation's common/msgpack.py packs.


def _ext(code: int, g: Generation, obj: object, data: Callable[[], bytes]) -> msgpack.ExtType:
    if code not in g.ext_types:
        raise TypeError(f"Unknown type: {obj!r} ({type(obj)}) in generation {g.key}")
    return msgpack.ExtType(code, data())


def _default(g: Generation, obj: object) -> Any:
    """``_default`` of common/msgpack.py, same checks in the same order (26.8.1 L42-67):
    tuple, UUID, datetime, BinarySize, Decimal, PosixPath, PurePosixPath, (AutoDirectoryPath),
    ResourceSlot, SlotName, Enum, (ImageRef). Datetime (temporenc), AutoDirectoryPath and ImageRef
    are not reproduced: they raise ``TypeError`` here."""
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, uuid.UUID):
        return _ext(1, g, obj, lambda: obj.bytes)
    if isinstance(obj, datetime.datetime):
        raise TypeError("ExtType 2 (temporenc datetime) is not reproduced by the stand-in")
    if isinstance(obj, BinarySize):
        return _ext(16, g, obj, lambda: _pickle5(obj))
    if isinstance(obj, Decimal):
        return _ext(3, g, obj, lambda: _pickle5(obj))
    if isinstance(obj, PosixPath):
        return _ext(4, g, obj, lambda: os.fsencode(obj))
    if isinstance(obj, PurePosixPath):
        return _ext(5, g, obj, lambda: os.fsencode(obj))
    if isinstance(obj, ResourceSlot):
        return _ext(8, g, obj, lambda: _pickle5(obj))
    if isinstance(obj, SlotName):
        return _ext(9, g, obj, lambda: _pickle5(obj))
    if isinstance(obj, enum.Enum):
        return _ext(6, g, obj, lambda: _pickle5(obj))
    raise TypeError(f"Unknown type: {obj!r} ({type(obj)})")


def packb(value: Any, generation_key: str) -> bytes:
    """``ai.backend.common.msgpack.packb(value)`` of that generation."""
    g = generation(generation_key)
    if not g.ext_types:
        return cast(bytes, msgpack.packb(value, use_bin_type=True))
    return cast(
        bytes,
        msgpack.packb(
            value, default=functools.partial(_default, g), use_bin_type=True, strict_types=True
        ),
    )


def pickle_opcodes(data: bytes) -> list[tuple[str, Any]]:
    """``(opcode name, argument)`` of each opcode, read with ``pickletools.genops`` (never
    unpickled)."""
    return [(op.name, arg) for op, arg, _ in pickletools.genops(data)]


# ---------------------------------------------------------------------------------------------
# Event classes: their fields (constructor order = serialize() order) per shape family.


class _Req:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Req()
UNKNOWN_REASON: Any = type("_UnknownReason", (), {"__repr__": lambda self: "<R.UNKNOWN>"})()


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    kind: Literal["id", "value", "reason", "map"]  # id: str(x); reason: enum coerced; map: {}
    default: Any = REQUIRED


_K = _Field("kernel_id", "id")
_S = _Field("session_id", "id")
_T = _Field("task_id", "id")
_CID = _Field("creation_id", "value")
_R0 = _Field("reason", "reason", "")
_RU = _Field("reason", "reason", UNKNOWN_REASON)
_RQ = _Field("reason", "reason")
_CI = _Field("creation_info", "map", None)
_EXIT = _Field("exit_code", "value", -1)
_PROGRESS = (_Field("current_progress", "value"), _Field("total_progress", "value"))
_MSG = _Field("message", "value", None)

_KERNEL_CREATION = (
    "kernel_enqueued",
    "kernel_preparing",
    "kernel_pulling",
    "kernel_creating",
    "kernel_started",
    "kernel_cancelled",
)
_SESSION_CREATION = (
    "session_enqueued",
    "session_checking_precondition",
    "session_scheduled",
    "session_preparing",
    "session_started",
    "session_cancelled",
)


def _shape(family: str, event: str) -> tuple[_Field, ...]:
    """The fields of ``event``'s class in a shape family (the table in bus/INDEX.md)."""
    old = family in ("22.09", "22.09.5", "23.03")
    r_enum = _R0 if family == "22.09" else _RU
    if event in _KERNEL_CREATION:
        if family == "25.8" and event == "kernel_cancelled":
            return (_K, _S, _R0)
        return {
            "22.09": (_K, _CID, _R0),
            "22.09.5": (_K, _CID, _R0, _CI),
            "23.03": (_K, _R0, _CI),
        }.get(family, (_K, _S, _R0, _CI))
    if event in ("kernel_terminating", "kernel_terminated"):
        return (_K, r_enum, _EXIT) if old else (_K, _S, _RU, _EXIT)
    if event in _SESSION_CREATION:
        return (_S, _CID, r_enum)
    if event in ("session_terminating", "session_terminated"):
        return (_S, _R0)
    if event in ("session_success", "session_failure"):
        return (_S, r_enum, _EXIT)
    if event == "scheduling":
        return (_S, _CID, _Field("status_transition", "value"), _Field("reason", "reason"))
    if event == "kernel_pull_progress":
        return (_K, *_PROGRESS, _MSG)
    if event == "bgtask_updated":
        return (_T, *_PROGRESS, _MSG)
    if event == "do_terminate_session":
        return (_S, _RQ)
    raise KeyError(event)


@dataclasses.dataclass(frozen=True)
class Message:
    """One event as Backend.AI serializes it: the ``serialize()`` tuple and its msgpack."""

    generation: str
    name: str
    args: tuple[Any, ...]
    args_bytes: bytes


#: One step on the wire: a single command, or (2+ commands) one MULTI/EXEC transaction.
Command = tuple[tuple[bytes, ...], ...]

_DEFAULT: Any = type("_Default", (), {"__repr__": lambda self: "<generation default>"})()


def _dump_json(obj: Any) -> bytes:
    """``orjson.dumps(obj)`` (common/json.py 26.8.1 L46-50) for the str/None/bool/int/dict
    content that is sent: compact separators, UTF-8 not ``\\u``-escaped, UUIDs as text."""

    def default(o: Any) -> Any:
        if isinstance(o, uuid.UUID):
            return str(o)
        if isinstance(o, enum.Enum):
            return o.value
        raise TypeError(f"not JSON serializable: {o!r}")

    return json.dumps(
        obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=default
    ).encode()


def user_data(
    user_id: uuid.UUID | str,
    *,
    role: str = "user",
    domain_name: str = "default",
    is_authorized: bool = True,
    is_admin: bool = False,
    is_superadmin: bool = False,
) -> dict[str, Any]:
    """``UserData`` as orjson writes the dataclass (fields in order: common/data/user/types.py
    26.8.1 L21-28; ``role`` a str enum, written as its value)."""
    return {
        "user_id": str(user_id),
        "is_authorized": is_authorized,
        "is_admin": is_admin,
        "is_superadmin": is_superadmin,
        "role": role,
        "domain_name": domain_name,
    }


def metadata(
    generation_key: str,
    *,
    request_id: str | None = None,
    user: Mapping[str, Any] | None = None,
    triggered_user: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """``MessageMetadata`` of the generation as a dict in field order: none in 25.11;
    ``{request_id, user_id}`` in 25.12 (types.py 25.12.0 L49-51); ``{request_id, user}``
    25.13-26.7 (25.13.0 L58-60); ``{request_id, user, triggered_user}`` from 26.8.0 (26.8.1
    L59-62). The producer always attaches one (all ``null`` outside a request), so the key is
    always present from 25.12 on (dispatcher.py 26.8.1 L693-707)."""
    style = generation(generation_key).metadata_style
    if style == "":
        return None
    if style == "user_id":
        return {"request_id": request_id, "user_id": None if user is None else user["user_id"]}
    out: dict[str, Any] = {"request_id": request_id, "user": None if user is None else dict(user)}
    if style == "triggered_user":
        out["triggered_user"] = None if triggered_user is None else dict(triggered_user)
    return out


class BusCodec:
    """The pure half: messages and the exact commands, no Redis."""

    def __init__(self, generation_key: str) -> None:
        self.generation = generation(generation_key)
        self.reasons = self.generation.reasons

    # -- args ------------------------------------------------------------------------------
    def fields(self, name: str) -> tuple[_Field, ...]:
        if not self.generation.kinds(name):
            raise ValueError(f"no {name!r} event in generation {self.generation.key}")
        return _shape(self.generation.shapes, name)

    def signature(self, name: str) -> inspect.Signature:
        """The event class's constructor for this generation."""
        params = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=inspect.Parameter.empty if f.default is REQUIRED else f.default,
            )
            for f in self.fields(name)
        ]
        return inspect.Signature(params)

    def _reason(self, value: Any) -> Any:
        if value is UNKNOWN_REASON:
            assert self.reasons is not None
            return self.reasons["UNKNOWN"]
        if isinstance(value, enum.Enum) and getattr(type(value), "backendai_reason", False):
            if self.reasons is None:  # 22.09.0-22.09.4: no enum; msgpack packs the str value
                return value.value
            return self.reasons(value.value)  # ValueError if this range never had it
        return value

    def message(self, name: str, /, *args: Any, **kwargs: Any) -> Message:
        """Bind ``args``/``kwargs`` as the event class's constructor would, then ``serialize()``
        (ids through ``str()``, a ``KernelLifecycleEventReason`` stand-in of any generation
        re-expressed as this generation's)."""
        bound = self.signature(name).bind(*args, **kwargs)
        bound.apply_defaults()
        out: list[Any] = []
        for f in self.fields(name):
            v = bound.arguments[f.name]
            if f.kind == "id":
                v = str(v)
            elif f.kind == "reason":
                v = self._reason(v)
            elif f.kind == "map" and v is None:
                v = {}
            out.append(v)
        args_tuple = tuple(out)
        return Message(
            self.generation.key, name, args_tuple, packb(args_tuple, self.generation.key)
        )

    def raw(self, name: str, args_bytes: bytes) -> Message:
        """Any bytes as ``args`` under any name (hostile tests)."""
        return Message(self.generation.key, name, (), bytes(args_bytes))

    # -- envelopes -------------------------------------------------------------------------
    def _metadata(self, meta: Any) -> dict[str, Any] | None:
        return metadata(self.generation.key) if meta is _DEFAULT else meta

    def stream_fields(
        self, msg: Message, source: str, *, meta: Any = _DEFAULT
    ) -> dict[bytes, bytes]:
        """The entry's fields, in XADD order: ``name``, ``source``, ``args`` (+ ``metadata``
        JSON bytes in 25.12+, types.py 26.8.1 L123-134)."""
        fields = {b"name": msg.name.encode(), b"source": source.encode(), b"args": msg.args_bytes}
        if self.generation.pubsub:
            md = self._metadata(meta)
            if md is not None:
                fields[b"metadata"] = _dump_json(md)
        return fields

    def broadcast_json(self, msg: Message, source: str, *, meta: Any = _DEFAULT) -> bytes:
        """The Pub/Sub message: ``dump_json(MessagePayload.serialize_broadcast())``; the metadata
        is a JSON *string* inside the JSON (types.py 26.8.1 L136-149)."""
        payload: dict[str, str] = {
            "name": msg.name,
            "source": source,
            "args": base64.b64encode(msg.args_bytes).decode("ascii"),
        }
        md = self._metadata(meta)
        if md is not None:
            payload["metadata"] = _dump_json(md).decode("utf-8")
        return _dump_json(payload)

    def xadd(
        self, fields: Mapping[bytes, bytes], *, key: str = STREAM_KEY, exact: bool = False
    ) -> tuple[bytes, ...]:
        """``XADD`` as the generation's client sends it (redis-py / valkey-glide put the trim
        options before the id)."""
        argv: list[bytes] = [b"XADD", key.encode()]
        if self.generation.maxlen:
            argv += (
                [b"MAXLEN", str(STREAM_MAXLEN).encode()]
                if exact
                else [b"MAXLEN", b"~", str(STREAM_MAXLEN).encode()]
            )
        argv.append(b"*")
        for k, v in fields.items():
            argv += [k, v]
        return tuple(argv)

    def cache_id(self, msg: Message) -> str | None:
        """The key a cached broadcast also SETs: ``session_scheduler.<S>`` for ``scheduling``
        (25.13+, events/types.py 26.8.1 L38-52, session/broadcast.py L248-251) and
        ``bgtask.<task id>`` for ``bgtask_updated`` (bgtask/bgtask.py 26.8.1 L325-326)."""
        if not self.generation.pubsub or not msg.args:
            return None
        if msg.name == "scheduling":
            return f"session_scheduler.{msg.args[0]}"
        if msg.name == "bgtask_updated":
            return f"bgtask.{msg.args[0]}"
        return None

    def default_delivery(self, name: str) -> Delivery:
        kinds = self.generation.kinds(name)
        return "broadcast" if "broadcast" in kinds or not kinds else "anycast"

    def commands(
        self,
        msg: Message,
        source: str,
        delivery: Delivery | None = None,
        *,
        meta: Any = _DEFAULT,
        exact_maxlen: bool = False,
    ) -> list[Command]:
        """What goes on the wire for one ``produce``/``anycast``/``broadcast`` of ``msg``.

        ≤ 25.9: one XADD (``delivery`` must be None: there is one stream kind). 25.10:
        ``anycast`` and ``broadcast`` are each one XADD of the same fields, ``both`` two. A
        delivery the event has no class for raises ``ValueError``. 25.11+: ``anycast`` =
        XADD, ``broadcast`` = PUBLISH (in a MULTI with ``SET <cache_id> … EX <ttl>`` for cached
        events), ``both`` = XADD then PUBLISH (``anycast_and_broadcast_event``, dispatcher.py
        26.8.1 L808-820)."""
        g = self.generation
        kinds = g.kinds(msg.name)  # empty for a raw() name Backend.AI does not have
        if delivery is not None and kinds:
            wanted = {"anycast", "broadcast"} if delivery == "both" else {delivery}
            if not wanted <= set(kinds):
                raise ValueError(
                    f"{msg.name} in generation {g.key} has only {kinds}, not {delivery!r}"
                )
        delivery = delivery or self.default_delivery(msg.name)
        xadd = (self.xadd(self.stream_fields(msg, source, meta=meta), exact=exact_maxlen),)
        if not g.pubsub:
            return [xadd, xadd] if delivery == "both" else [xadd]
        out: list[Command] = []
        if delivery in ("anycast", "both"):
            out.append(xadd)
        if delivery in ("broadcast", "both"):
            body = self.broadcast_json(msg, source, meta=meta)
            publish = (b"PUBLISH", BROADCAST_CHANNEL.encode(), body)
            cache = self.cache_id(msg)
            if cache is None:
                out.append((publish,))
            else:
                ttl = str(g.cache_ttl).encode()
                out.append(((b"SET", cache.encode(), body, b"EX", ttl), publish))
        return out


def render_commands(commands: Sequence[Command]) -> str:
    """Commands as text, one per line: printable ASCII arguments as they are, any other as
    ``hex:…``; a transaction between ``MULTI`` and ``EXEC``."""

    def arg(a: bytes) -> str:
        if a and all(0x21 <= c < 0x7F for c in a) and not a.startswith(b"hex:"):
            return a.decode()
        return "hex:" + a.hex()

    lines: list[str] = []
    for step in commands:
        if len(step) > 1:
            lines.append("MULTI")
        lines += [" ".join(arg(a) for a in cmd) for cmd in step]
        if len(step) > 1:
            lines.append("EXEC")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The producers.


@dataclasses.dataclass
class Sent:
    """What one call wrote: the message, the commands, the stream entry ids (bytes, or str for
    a ``decode_responses`` client) and the PUBLISH receiver counts."""

    message: Message
    commands: list[Command]
    stream_ids: list[Any] = dataclasses.field(default_factory=list)
    receivers: list[int] = dataclasses.field(default_factory=list)


_R = TypeVar("_R")


class _Producer(Generic[_R]):
    """The event methods, shared by :class:`BackendAIBus` and :class:`SyncBackendAIBus`.

    Each takes the arguments of the generation's event class, positionally or by name (the
    table is :meth:`BusCodec.signature`; e.g. ``kernel_terminated(kernel_id, session_id,
    reason=R.UNKNOWN, exit_code=-1)`` from 23.03.1, ``(kernel_id, reason="", exit_code=-1)`` in
    22.09), plus keyword-only ``delivery`` ("anycast" / "broadcast" / "both", 25.10+) and
    ``source`` (default: the bus's). A reason may be a ``KernelLifecycleEventReason`` member
    (pickled, as the manager/agent pass them) or a plain string (sent as a msgpack string)."""

    codec: BusCodec
    source: str

    def _emit(self, msg: Message, delivery: Delivery | None, source: str | None) -> _R:
        raise NotImplementedError

    def emit(
        self,
        name: str,
        /,
        *args: Any,
        delivery: Delivery | None = None,
        source: str | None = None,
        **kwargs: Any,
    ) -> _R:
        """Any event of the generation by name."""
        return self._emit(self.codec.message(name, *args, **kwargs), delivery, source)

    def raw(
        self,
        name: str,
        args_bytes: bytes,
        *,
        delivery: Delivery | None = None,
        source: str | None = None,
    ) -> _R:
        """``args_bytes`` as the args of an event called ``name``, in the generation's
        envelope (base64 and JSON in 25.11+)."""
        return self._emit(self.codec.raw(name, args_bytes), delivery, source)

    # kernel lifecycle ---------------------------------------------------------------------
    def kernel_enqueued(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """22.09.x only: ``(kernel_id, creation_id, reason="" [, creation_info={}])``."""
        return self.emit("kernel_enqueued", *args, delivery=delivery, source=source, **kwargs)

    def kernel_preparing(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """22.09: ``(K, creation_id, reason="")``; 22.09.5: ``(K, creation_id, reason="",
        creation_info={})``; 23.03.0: ``(K, reason="", creation_info={})``; 23.03.1+:
        ``(K, session_id, reason="", creation_info={})``."""
        return self.emit("kernel_preparing", *args, delivery=delivery, source=source, **kwargs)

    def kernel_pulling(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`kernel_preparing`; the agent puts the image's canonical name in
        ``reason``."""
        return self.emit("kernel_pulling", *args, delivery=delivery, source=source, **kwargs)

    def kernel_creating(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`kernel_preparing`."""
        return self.emit("kernel_creating", *args, delivery=delivery, source=source, **kwargs)

    def kernel_started(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`kernel_preparing`; the agent sends a full ``creation_info``
        (:func:`sample_creation_info`)."""
        return self.emit("kernel_started", *args, delivery=delivery, source=source, **kwargs)

    def kernel_cancelled(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`kernel_preparing` up to 25.7; ``(K, session_id, reason="")`` from 25.8.0."""
        return self.emit("kernel_cancelled", *args, delivery=delivery, source=source, **kwargs)

    def kernel_terminating(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """≤ 23.03.0: ``(K, reason, exit_code=-1)`` (reason default "" in 22.09, else
        ``R.UNKNOWN``); 23.03.1+: ``(K, session_id, reason=R.UNKNOWN, exit_code=-1)``."""
        return self.emit("kernel_terminating", *args, delivery=delivery, source=source, **kwargs)

    def kernel_terminated(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`kernel_terminating`."""
        return self.emit("kernel_terminated", *args, delivery=delivery, source=source, **kwargs)

    # session lifecycle --------------------------------------------------------------------
    def session_enqueued(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """``(session_id, creation_id, reason)``; reason default "" in 22.09, else
        ``R.UNKNOWN``."""
        return self.emit("session_enqueued", *args, delivery=delivery, source=source, **kwargs)

    def session_checking_precondition(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """24.12.0+ (here: generations 25.6+): as :meth:`session_enqueued`."""
        return self.emit(
            "session_checking_precondition", *args, delivery=delivery, source=source, **kwargs
        )

    def session_scheduled(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`session_enqueued`; gone from 26.2.0 (``scheduling`` instead)."""
        return self.emit("session_scheduled", *args, delivery=delivery, source=source, **kwargs)

    def session_preparing(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`session_scheduled`."""
        return self.emit("session_preparing", *args, delivery=delivery, source=source, **kwargs)

    def session_started(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`session_enqueued`; anycast only from 26.2.0."""
        return self.emit("session_started", *args, delivery=delivery, source=source, **kwargs)

    def session_cancelled(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`session_enqueued`."""
        return self.emit("session_cancelled", *args, delivery=delivery, source=source, **kwargs)

    def session_terminating(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """23.03.0+: ``(session_id, reason="")`` (typed ``str``; the 23.09 manager passes an
        enum member, manager/registry.py 23.09.0 L2153)."""
        return self.emit("session_terminating", *args, delivery=delivery, source=source, **kwargs)

    def session_terminated(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """``(session_id, reason="")``."""
        return self.emit("session_terminated", *args, delivery=delivery, source=source, **kwargs)

    def session_success(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """``(session_id, reason, exit_code=-1)``; reason default "" in 22.09, else
        ``R.UNKNOWN``."""
        return self.emit("session_success", *args, delivery=delivery, source=source, **kwargs)

    def session_failure(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """As :meth:`session_success`."""
        return self.emit("session_failure", *args, delivery=delivery, source=source, **kwargs)

    def scheduling(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """25.13.0+: ``(session_id, creation_id, status_transition, reason)``, all required;
        ``status_transition`` is ``str(SessionStatus.X)`` (``"PENDING"``, ``"SCHEDULED"``, …,
        ``"RUNNING"``); ``reason`` a plain string (``"triggered-by-scheduler"``,
        ``"Session enqueued"``, ``"user-requested"``, ``"USER_REQUESTED"``). Broadcast only,
        cached (``SET session_scheduler.<S> … EX 300`` in the same transaction)."""
        return self.emit("scheduling", *args, delivery=delivery, source=source, **kwargs)

    # sharing the bus ----------------------------------------------------------------------
    def kernel_pull_progress(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """≤ 25.7: ``(kernel_id, current_progress, total_progress, message=None)``."""
        return self.emit("kernel_pull_progress", *args, delivery=delivery, source=source, **kwargs)

    def bgtask_updated(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """``(task_id, current_progress, total_progress, message=None)``; broadcast only and
        cached as ``bgtask.<task id>`` from 25.11."""
        return self.emit("bgtask_updated", *args, delivery=delivery, source=source, **kwargs)

    def do_terminate_session(
        self, *args: Any, delivery: Delivery | None = None, source: str | None = None, **kwargs: Any
    ) -> _R:
        """``(session_id, reason)``, reason required (a ``str`` in 22.09, an enum member after)."""
        return self.emit("do_terminate_session", *args, delivery=delivery, source=source, **kwargs)


def _argv(a: Any) -> bytes:
    return a if isinstance(a, bytes) else str(a).encode()


class BackendAIBus(_Producer[Awaitable[Sent]]):
    """Backend.AI's producers on a ``redis.asyncio.Redis`` (which must be on DB 4 to look like
    Backend.AI's stream; Pub/Sub ignores the DB): ``await bus.kernel_started(...)``.

    ``generation``: a key of :data:`GENERATIONS` ("22.09", "22.09.5", "23.03", "23.09",
    "24.09", "25.6", "25.8", "25.10", "25.11", "25.12", "25.13", "26.2", "26.8").
    ``source``: the ``source`` field (an agent id such as ``"i-agent-01"``, or ``"manager"``).
    ``meta``: the 25.12+ metadata dict (default: the generation's all-``null`` one; ``None``
    leaves it out). ``exact_maxlen``: ``MAXLEN 128`` as the experimental HiRedisQueue sends."""

    def __init__(
        self,
        client: Any,
        generation: str,
        *,
        source: str = MANAGER_SOURCE,
        meta: Any = _DEFAULT,
        exact_maxlen: bool = False,
    ) -> None:
        self.client = client
        self.codec = BusCodec(generation)
        self.generation = self.codec.generation
        self.reasons = self.codec.reasons
        self.source = source
        self.meta = meta
        self.exact_maxlen = exact_maxlen

    def _emit(self, msg: Message, delivery: Delivery | None, source: str | None) -> Awaitable[Sent]:
        cmds = self.codec.commands(
            msg, source or self.source, delivery, meta=self.meta, exact_maxlen=self.exact_maxlen
        )
        return self._run(msg, cmds)

    async def _run(self, msg: Message, cmds: list[Command]) -> Sent:
        sent = Sent(msg, cmds)
        for step in cmds:
            if len(step) == 1:
                replies = [await self.client.execute_command(*step[0])]
            else:
                pipe = self.client.pipeline(transaction=True)
                for cmd in step:
                    pipe.execute_command(*cmd)
                replies = await pipe.execute()
            _record(sent, step, replies)
        return sent

    async def raw_message(self, message: bytes | str | Mapping[Any, Any]) -> Any:
        """A mapping: ``XADD`` those fields as they are (MAXLEN per generation); bytes/str:
        ``PUBLISH events_all`` it as it is. Returns the entry id / receiver count."""
        if isinstance(message, Mapping):
            fields = {_argv(k): _argv(v) for k, v in message.items()}
            return await self.client.execute_command(*self.codec.xadd(fields))
        return await self.client.execute_command("PUBLISH", BROADCAST_CHANNEL, _argv(message))

    async def requeue(self, fields: Mapping[Any, Any], retry_count: int = 1) -> Any:
        """Re-add an entry the way the queue's autoclaim retry does: the same fields plus
        ``_retry_count`` (common/message_queue/types.py 26.8.1 L38-55)."""
        out = {_argv(k): _argv(v) for k, v in fields.items() if _argv(k) != b"_retry_count"}
        out[b"_retry_count"] = str(retry_count).encode()
        return await self.client.execute_command(*self.codec.xadd(out))

    async def trim_like_manager(self) -> Any:
        return await trim_like_manager(self.client)


class SyncBackendAIBus(_Producer[Sent]):
    """:class:`BackendAIBus` on a synchronous ``redis.Redis``."""

    def __init__(
        self,
        client: Any,
        generation: str,
        *,
        source: str = MANAGER_SOURCE,
        meta: Any = _DEFAULT,
        exact_maxlen: bool = False,
    ) -> None:
        self.client = client
        self.codec = BusCodec(generation)
        self.generation = self.codec.generation
        self.reasons = self.codec.reasons
        self.source = source
        self.meta = meta
        self.exact_maxlen = exact_maxlen

    def _emit(self, msg: Message, delivery: Delivery | None, source: str | None) -> Sent:
        cmds = self.codec.commands(
            msg, source or self.source, delivery, meta=self.meta, exact_maxlen=self.exact_maxlen
        )
        sent = Sent(msg, cmds)
        for step in cmds:
            if len(step) == 1:
                replies = [self.client.execute_command(*step[0])]
            else:
                pipe = self.client.pipeline(transaction=True)
                for cmd in step:
                    pipe.execute_command(*cmd)
                replies = pipe.execute()
            _record(sent, step, replies)
        return sent

    def raw_message(self, message: bytes | str | Mapping[Any, Any]) -> Any:
        if isinstance(message, Mapping):
            fields = {_argv(k): _argv(v) for k, v in message.items()}
            return self.client.execute_command(*self.codec.xadd(fields))
        return self.client.execute_command("PUBLISH", BROADCAST_CHANNEL, _argv(message))

    def requeue(self, fields: Mapping[Any, Any], retry_count: int = 1) -> Any:
        out = {_argv(k): _argv(v) for k, v in fields.items() if _argv(k) != b"_retry_count"}
        out[b"_retry_count"] = str(retry_count).encode()
        return self.client.execute_command(*self.codec.xadd(out))

    def trim_like_manager(self) -> Any:
        return trim_like_manager_sync(self.client)


def _record(sent: Sent, step: Command, replies: Sequence[Any]) -> None:
    for cmd, reply in zip(step, replies, strict=True):
        if cmd[0] == b"XADD":
            sent.stream_ids.append(reply)
        elif cmd[0] == b"PUBLISH":
            sent.receivers.append(int(reply))


_TRIM_ARGV = ("XTRIM", STREAM_KEY, "MAXLEN", "~", str(TRIM_MAXLEN))


async def trim_like_manager(client: Any, key: str = STREAM_KEY) -> Any:
    """``XTRIM events MAXLEN ~ 128``, what every Backend.AI process with an ``EventDispatcher``
    runs after each XREAD batch up to 25.5 (``redis_helper.read_stream``: common/redis_helper.py
    22.09.0 L369-378, 23.09.0 L325-334, 25.5.0 L357-366; ``events_experimental.read_stream``
    24.09.0 L44-52 sends the same). Approximate: Redis drops whole radix-tree nodes only, so at
    least 128 entries stay. Returns the number of entries removed."""
    return await client.execute_command(*_TRIM_ARGV[:1], key, *_TRIM_ARGV[2:])


def trim_like_manager_sync(client: Any, key: str = STREAM_KEY) -> Any:
    """:func:`trim_like_manager` on a synchronous client."""
    return client.execute_command(*_TRIM_ARGV[:1], key, *_TRIM_ARGV[2:])


# ---------------------------------------------------------------------------------------------
# Golden and hostile fixtures.

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "backendai"

KERNEL_ID = uuid.UUID("11111111-1111-4111-8111-111111111111")
SESSION_ID = uuid.UUID("22222222-2222-4222-8222-222222222222")
TASK_ID = uuid.UUID("33333333-3333-4333-8333-333333333333")
REQUEST_ID = "44444444-4444-4444-8444-444444444444"
USER_ID = uuid.UUID("55555555-5555-4555-8555-555555555555")
CREATION_ID = "Xq2cK8vN4pT7wR1yZ3bM6A"  # secrets.token_urlsafe(16), as the manager makes them
AGENT_ID = "i-agent-01"
IMAGE = "cr.backend.ai/stable/python:3.11-ubuntu22.04"
CONTAINER_ID = "3f1c0e5b9a7d4e2f8c6b1a0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f"


def sample_creation_info(kernel_id: uuid.UUID | str = KERNEL_ID) -> dict[str, Any]:
    """A ``kernel_started`` creation_info as the agent builds it (``KernelCreationResult`` with
    ``id``/``container_id`` re-set as strings: agent/agent.py 23.09.0 L2034-2063, 26.8.1
    L3211-3224): ``service_ports[].protocol`` is a ``ServicePortProtocols`` member (ExtType 6
    naming ``ai.backend.common.types``), tuples become arrays, allocations are ``Decimal``
    (ExtType 3), mounts carry ``MountTypes``/``MountPermission`` members (ExtType 6) and
    ``PosixPath`` (ExtType 4). Values are representative [derived], not from a live agent."""
    return {
        "id": str(kernel_id),
        "kernel_host": "10.0.0.11",
        "repl_in_port": 2000,
        "repl_out_port": 2001,
        "stdin_port": 2002,
        "stdout_port": 2003,
        "service_ports": [
            {
                "name": "jupyter",
                "protocol": ServicePortProtocols.HTTP,
                "container_ports": (8080,),
                "host_ports": (30001,),
                "is_inference": False,
            }
        ],
        "container_id": CONTAINER_ID,
        "resource_spec": {
            "container_id": CONTAINER_ID,
            "slots": {"cpu": "1", "mem": "1073741824"},
            "allocations": {
                "cpu": {"cpu": {"0": Decimal("1")}},
                "mem": {"mem": {"root": Decimal("1073741824")}},
            },
            "scratch_disk_size": 0,
            "mounts": [
                {
                    "type": MountTypes.BIND,
                    "source": PosixPath("/var/lib/backend.ai/scratches/k1"),
                    "target": PosixPath("/home/work"),
                    "permission": MountPermission.READ_WRITE,
                    "opts": None,
                }
            ],
        },
        "scaling_group": "default",
        "agent_addr": "tcp://10.0.0.11:6001",
        "attached_devices": {},
    }


@dataclasses.dataclass(frozen=True)
class Fixture:
    """One fixture file: where, what it is, and how to build its bytes."""

    path: str  # relative to FIXTURES
    generation: str | None
    event: str | None
    what: str  # the Python value / description for INDEX.md
    build: Callable[[], bytes]
    cites: tuple[str, ...] = ()
    kind: Literal["golden", "hostile"] = "golden"


def _lifecycle_calls(g: Generation) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The canonical call of each lifecycle event, per shape family: ids, creation id and
    reasons fixed; reasons as the real producers pass them."""
    R = g.reasons
    fam = g.shapes
    u = (lambda name: name.lower().replace("_", "-")) if R is None else (lambda name: R[name])
    ci: dict[str, Any] = {} if g.key == "22.09" else {"creation_info": sample_creation_info()}
    kc: tuple[Any, ...]
    if fam == "22.09":
        kc = (KERNEL_ID, CREATION_ID)
    elif fam == "22.09.5":
        kc = (KERNEL_ID, CREATION_ID)
    elif fam == "23.03":
        kc = (KERNEL_ID,)
    else:
        kc = (KERNEL_ID, SESSION_ID)
    kt = (KERNEL_ID,) if fam in ("22.09", "22.09.5", "23.03") else (KERNEL_ID, SESSION_ID)
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
        "kernel_enqueued": (kc, {}),
        "kernel_preparing": (kc, {}),
        "kernel_pulling": (kc, {"reason": IMAGE}),
        "kernel_creating": (kc, {}),
        "kernel_started": (kc, ci),
        "kernel_cancelled": (kc, {"reason": u("USER_REQUESTED")}),
        "kernel_terminating": (kt, {"reason": u("USER_REQUESTED")}),
        "kernel_terminated": (kt, {"reason": u("USER_REQUESTED"), "exit_code": 0}),
        "session_enqueued": ((SESSION_ID, CREATION_ID), {}),
        "session_checking_precondition": ((SESSION_ID, CREATION_ID), {}),
        "session_scheduled": ((SESSION_ID, CREATION_ID), {}),
        "session_preparing": ((SESSION_ID, CREATION_ID), {}),
        "session_started": ((SESSION_ID, CREATION_ID), {}),
        "session_cancelled": ((SESSION_ID, CREATION_ID), {"reason": u("PENDING_TIMEOUT")}),
        "session_terminating": ((SESSION_ID,), {"reason": u("USER_REQUESTED")}),
        "session_terminated": ((SESSION_ID,), {"reason": "user-requested"}),
        "session_success": ((SESSION_ID,), {"reason": u("TASK_FINISHED"), "exit_code": 0}),
        "session_failure": ((SESSION_ID,), {"reason": u("TASK_FAILED"), "exit_code": 1}),
        "scheduling": ((SESSION_ID, CREATION_ID, "PREPARING", "triggered-by-scheduler"), {}),
        "kernel_pull_progress": ((KERNEL_ID, 52428800, 104857600, "pulling"), {}),
        "bgtask_updated": ((TASK_ID, 0, 0, "Task started"), {}),
        "do_terminate_session": ((SESSION_ID, u("KILLED_BY_EVENT")), {}),
    }
    if fam == "25.8":
        calls["kernel_cancelled"] = ((KERNEL_ID, SESSION_ID), {"reason": u("USER_REQUESTED")})
    if R is None:  # 22.09.0: reasons are strings everywhere
        calls["kernel_cancelled"] = (kc, {"reason": "user-requested"})
    return calls


_LIFECYCLE = (
    "kernel_enqueued",
    "kernel_preparing",
    "kernel_pulling",
    "kernel_creating",
    "kernel_started",
    "kernel_cancelled",
    "kernel_terminating",
    "kernel_terminated",
    "session_enqueued",
    "session_scheduled",
    "session_preparing",
    "session_started",
    "session_cancelled",
    "session_terminating",
    "session_terminated",
    "session_success",
    "session_failure",
    "scheduling",
    "kernel_pull_progress",
    "bgtask_updated",
    "do_terminate_session",
)

# full sets where a tuple shape differs; targeted files where only the pickle module or the
# JSON envelope changes
_FULL = ("22.09", "22.09.5", "23.03", "23.09", "26.8")
_TARGETED: dict[str, tuple[str, ...]] = {
    "24.09": ("kernel_terminated",),
    "25.6": ("kernel_terminated",),
    "25.8": ("kernel_terminated", "kernel_cancelled"),
    "25.10": ("kernel_terminated",),
    "25.11": ("kernel_terminated",),
    "25.12": ("kernel_terminated",),
    "25.13": ("scheduling", "kernel_terminated"),
}
_COMMAND_FIXTURES = {
    "22.09": "kernel_terminated",
    "23.09": "kernel_terminated",
    "25.6": "kernel_terminated",
    "25.10": "kernel_terminated",
    "25.11": "kernel_terminated",
    "26.8": "kernel_terminated",
}


def _fmt_value(v: Any) -> str:
    if isinstance(v, enum.Enum):
        return f"{type(v).__name__}.{v.name}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_fmt_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, tuple):
        inner = ", ".join(_fmt_value(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, PurePosixPath):
        return f"PosixPath({str(v)!r})"
    return repr(v)


def _golden_message(gkey: str, event: str) -> Message:
    g = generation(gkey)
    args, kwargs = _lifecycle_calls(g)[event]
    return BusCodec(gkey).message(event, *args, **kwargs)


def _cites(g: Generation, event: str, kind: str | None = None) -> tuple[str, ...]:
    return (g.cite(event, kind), g.msgpack_cite, g.producer_cite)


def _golden() -> list[Fixture]:
    out: list[Fixture] = []
    plan = [(k, e) for k in _FULL for e in _LIFECYCLE] + [
        (k, e) for k, evs in _TARGETED.items() for e in evs
    ]
    for gkey, event in plan:
        g = generation(gkey)
        kinds = g.kinds(event)
        if not kinds:
            continue
        msg = _golden_message(gkey, event)
        what = f"{event}{_fmt_value(msg.args)}"
        out.append(
            Fixture(
                f"bus/{gkey}-{event}.args.bin",
                gkey,
                event,
                what,
                functools.partial(_golden_args, gkey, event),
                _cites(g, event),
            )
        )
        if g.pubsub and "broadcast" in kinds:
            out.append(
                Fixture(
                    f"bus/{gkey}-{event}.json",
                    gkey,
                    event,
                    f"PUBLISH {BROADCAST_CHANNEL} of {what}, source {golden_source(event)!r}",
                    functools.partial(_golden_json, gkey, event, None),
                    _cites(g, event, "broadcast"),
                )
            )
    # a manager-side scheduling broadcast inside an API request: request id and user filled
    for gkey in ("25.13", "26.8"):
        g = generation(gkey)
        out.append(
            Fixture(
                f"bus/{gkey}-scheduling.in-request.json",
                gkey,
                "scheduling",
                f"PUBLISH {BROADCAST_CHANNEL}, source 'manager', metadata "
                f"{_fmt_value(_request_metadata(gkey))}",
                functools.partial(_golden_json, gkey, "scheduling", "request"),
                _cites(g, "scheduling", "broadcast"),
            )
        )
    for gkey, event in _COMMAND_FIXTURES.items():
        g = generation(gkey)
        delivery: Delivery | None = "both" if g.key in ("25.10", "25.11", "26.8") else None
        out.append(
            Fixture(
                f"bus/{gkey}-{event}.commands.txt",
                gkey,
                event,
                f"the Redis commands of {event} (delivery {delivery or 'the only one'}, source "
                f"{golden_source(event)!r})",
                functools.partial(_golden_commands, gkey, event, delivery),
                (g.producer_cite,),
            )
        )
    out.append(
        Fixture(
            "bus/26.8-scheduling.commands.txt",
            "26.8",
            "scheduling",
            "the Redis commands of a scheduling broadcast (cached: SET + PUBLISH in MULTI)",
            functools.partial(_golden_commands, "26.8", "scheduling", None),
            (GENERATIONS["26.8"].producer_cite,),
        )
    )
    out.append(
        Fixture(
            "bus/26.8-kernel_started.ext8-ext9.args.bin",
            "26.8",
            "kernel_started",
            "kernel_started(K, S, '', creation_info) where resource_spec.slots is a ResourceSlot "
            "(ExtType 8) and the allocations' keys are SlotName (ExtType 9 *map keys*) [derived]",
            _kernel_started_ext8_ext9,
            _cites(GENERATIONS["26.8"], "kernel_started"),
        )
    )
    return out


_AGENT_EVENTS = frozenset(
    {
        "kernel_preparing",
        "kernel_pulling",
        "kernel_creating",
        "kernel_started",
        "kernel_terminating",
        "kernel_terminated",
        "session_success",
        "session_failure",
        "kernel_pull_progress",
        "kernel_enqueued",
    }
)


def golden_source(event: str) -> str:
    """Who sends ``event`` upstream: an agent (its id) or the manager."""
    return AGENT_ID if event in _AGENT_EVENTS else MANAGER_SOURCE


def _golden_args(gkey: str, event: str) -> bytes:
    return _golden_message(gkey, event).args_bytes


def _request_metadata(gkey: str) -> dict[str, Any] | None:
    user = user_data(USER_ID, role="user", domain_name="default")
    return metadata(gkey, request_id=REQUEST_ID, user=user)


def _golden_json(gkey: str, event: str, meta: str | None) -> bytes:
    codec = BusCodec(gkey)
    msg = _golden_message(gkey, event)
    if meta == "request":
        return codec.broadcast_json(msg, MANAGER_SOURCE, meta=_request_metadata(gkey))
    return codec.broadcast_json(msg, golden_source(event))


def _golden_commands(gkey: str, event: str, delivery: Delivery | None) -> bytes:
    codec = BusCodec(gkey)
    msg = _golden_message(gkey, event)
    return render_commands(codec.commands(msg, golden_source(event), delivery)).encode()


def _kernel_started_ext8_ext9() -> bytes:
    info = sample_creation_info()
    spec = info["resource_spec"]
    spec["slots"] = ResourceSlot({"cpu": Decimal("1"), "mem": Decimal("1073741824")})
    spec["allocations"] = {
        "cpu": {SlotName("cpu"): {"0": Decimal("1")}},
        "mem": {SlotName("mem"): {"root": Decimal("1073741824")}},
    }
    return (
        BusCodec("26.8")
        .message("kernel_started", KERNEL_ID, SESSION_ID, creation_info=info)
        .args_bytes
    )


# -- hostile: pickles built from opcodes, never from a dangerous object ------------------------

_PROTO5 = b"\x80\x05"
_MEMO = b"\x94"


def _su(s: str | bytes) -> bytes:
    """SHORT_BINUNICODE (< 256 bytes) or BINUNICODE."""
    b = s.encode() if isinstance(s, str) else s
    if len(b) < 256:
        return b"\x8c" + bytes([len(b)]) + b
    return b"X" + struct.pack("<I", len(b)) + b


def _framed(body: bytes) -> bytes:
    """PROTO 5 + FRAME(len) + body (+ STOP already in body): how protocol 5 frames."""
    return _PROTO5 + b"\x95" + struct.pack("<Q", len(body)) + body


def global_pickle(
    module: str, name: str, *values: str | bytes, tuple_op: bytes | None = None, memo: bool = True
) -> bytes:
    """``module.name(*values)`` as protocol 5 writes it: STACK_GLOBAL, the string values, a
    TUPLEn, REDUCE. Built from opcode bytes only."""
    m = _MEMO if memo else b""
    body = _su(module) + m + _su(name) + m + b"\x93" + m
    for v in values:
        body += _su(v) + m
    body += tuple_op or {0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(values)]
    body += m + b"R" + m + b"."
    return _framed(body)


def _reason_pickle(module: str = MODULE_EVENTS, value: str = "user-requested") -> bytes:
    return global_pickle(module, "KernelLifecycleEventReason", value)


def _hostile_args(reason: Any, gkey: str = "23.09") -> bytes:
    """``kernel_terminated`` (23.03.1+ shape) whose reason is ``reason`` (an ExtType …)."""
    return cast(
        bytes, msgpack.packb([str(KERNEL_ID), str(SESSION_ID), reason, 0], use_bin_type=True)
    )


def _ext6(data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(6, data)


def _nested_global() -> bytes:
    """KernelLifecycleEventReason(builtins.str('user-requested')): REDUCE whose argument is
    itself a STACK_GLOBAL + REDUCE."""
    inner = _su("builtins") + _MEMO + _su("str") + _MEMO + b"\x93" + _MEMO
    inner += _su("user-requested") + _MEMO + b"\x85" + _MEMO + b"R" + _MEMO
    body = _su(MODULE_EVENTS) + _MEMO + _su("KernelLifecycleEventReason") + _MEMO + b"\x93"
    body += _MEMO + inner + b"\x85" + _MEMO + b"R" + _MEMO + b"."
    return _framed(body)


def _with_build() -> bytes:
    """The allowed shape, then BUILD with a dict state before STOP."""
    body = _su(MODULE_EVENTS) + _MEMO + _su("KernelLifecycleEventReason") + _MEMO + b"\x93"
    body += _MEMO + _su("user-requested") + _MEMO + b"\x85" + _MEMO + b"R" + _MEMO
    body += b"}" + _MEMO + _su("_value_") + _MEMO + _su("idle-timeout") + _MEMO + b"s" + b"b."
    return _framed(body)


def _protocol0_global() -> bytes:
    """Protocol 0: ``c<module>\\n<name>\\n`` (GLOBAL), MARK, UNICODE value, TUPLE, REDUCE."""
    return b"c" + MODULE_EVENTS.encode() + b"\nKernelLifecycleEventReason\n(Vuser-requested\ntR."


def _binsize_pickle() -> bytes:
    with standin_modules(BinarySize):
        return pickle.dumps(BinarySize(1073741824), protocol=5)


def _creation_info_with(ext: msgpack.ExtType) -> bytes:
    args = [str(KERNEL_ID), str(SESSION_ID), "", {"resource_spec": {"size": ext}}]
    return cast(bytes, msgpack.packb(args, use_bin_type=True))


def _bad_utf8() -> bytes:
    head = b"\x94" + cast(bytes, msgpack.packb(str(KERNEL_ID)) + msgpack.packb(str(SESSION_ID)))
    return head + b"\xa4\xff\xfe\x80\xc0" + b"\x00"


def _pk(data: bytes) -> Callable[[], bytes]:
    return lambda: data


_HUGE = "x" * (1024 * 1024)


def _hostile() -> list[Fixture]:
    pickles: list[tuple[str, str, Callable[[], bytes]]] = [
        (
            "ext6-os-system",
            "os.system(':')  (STACK_GLOBAL os system, the allowed opcode shape)",
            lambda: global_pickle("os", "system", ":"),
        ),
        (
            "ext6-posix-system",
            "posix.system(':')  (what pickling os.system really names on Linux)",
            lambda: global_pickle("posix", "system", ":"),
        ),
        (
            "ext6-builtins-eval",
            "builtins.eval('None')",
            lambda: global_pickle("builtins", "eval", "None"),
        ),
        (
            "ext6-subprocess-popen",
            "subprocess.Popen('/nonexistent/backendai-bus-fixture')",
            lambda: global_pickle("subprocess", "Popen", "/nonexistent/backendai-bus-fixture"),
        ),
        (
            "ext6-protocol0-global",
            "KernelLifecycleEventReason('user-requested') in protocol 0 "
            "(GLOBAL opcode 'c', MARK, UNICODE, TUPLE, REDUCE)",
            _protocol0_global,
        ),
        (
            "ext6-tuple2",
            "KernelLifecycleEventReason('user-requested', 'idle-timeout') (TUPLE2)",
            lambda: global_pickle(
                MODULE_EVENTS, "KernelLifecycleEventReason", "user-requested", "idle-timeout"
            ),
        ),
        (
            "ext6-nested-global",
            "KernelLifecycleEventReason(builtins.str('user-requested')): "
            "the REDUCE argument is another STACK_GLOBAL + REDUCE",
            _nested_global,
        ),
        (
            "ext6-build",
            "KernelLifecycleEventReason('user-requested') followed by BUILD "
            "{'_value_': 'idle-timeout'}",
            _with_build,
        ),
        (
            "ext6-truncated",
            "KernelLifecycleEventReason('user-requested') cut after 40 bytes",
            lambda: _reason_pickle()[:40],
        ),
        (
            "ext6-1mb",
            "KernelLifecycleEventReason('x' * 1048576): allowed module/class, a 1 MiB "
            "BINUNICODE value",
            lambda: _reason_pickle(value=_HUGE),
        ),
        (
            "ext6-other-class",
            "ai.backend.common.events.SessionStatus('RUNNING'): allowed module, another class",
            lambda: global_pickle(MODULE_EVENTS, "SessionStatus", "RUNNING"),
        ),
        (
            "ext6-no-memo",
            "KernelLifecycleEventReason('user-requested') without MEMOIZE opcodes",
            lambda: global_pickle(
                MODULE_EVENTS, "KernelLifecycleEventReason", "user-requested", memo=False
            ),
        ),
    ]
    out: list[Fixture] = []
    for name, what, build in pickles:
        if name != "ext6-1mb":  # the 1 MiB pickle is only kept inside its .args.bin
            out.append(Fixture(f"hostile/{name}.pickle", None, None, what, build, kind="hostile"))
        out.append(
            Fixture(
                f"hostile/{name}.args.bin",
                "23.09",
                "kernel_terminated",
                f"kernel_terminated(K, S, ExtType(6, <{name}.pickle>), 0)",
                functools.partial(lambda b: _hostile_args(_ext6(b())), build),
                kind="hostile",
            )
        )
    dec = pickle.dumps(Decimal("1073741824"), protocol=5)  # real decimal.Decimal: harmless
    others: list[tuple[str, str, Callable[[], bytes]]] = [
        (
            "ext3-decimal-in-creation-info",
            "kernel_started(K, S, '', {'resource_spec': {'size': "
            "ExtType(3, pickle(Decimal('1073741824')))}})",
            _pk(_creation_info_with(msgpack.ExtType(3, dec))),
        ),
        (
            "ext16-binarysize-in-creation-info",
            "kernel_started(K, S, '', {'resource_spec': "
            "{'size': ExtType(16, pickle(ai.backend.common.types.BinarySize(1073741824)))}})",
            lambda: _creation_info_with(msgpack.ExtType(16, _binsize_pickle())),
        ),
        (
            "ext1-uuid-kernel-id",
            "kernel_terminated(ExtType(1, K.bytes), S, 'user-requested', 0): "
            "a UUID ext where Backend.AI sends str(uuid)",
            lambda: cast(
                bytes,
                msgpack.packb(
                    [msgpack.ExtType(1, KERNEL_ID.bytes), str(SESSION_ID), "user-requested", 0]
                ),
            ),
        ),
        (
            "not-an-array-map",
            "a msgpack map {'kernel_id': K, 'reason': 'user-requested'}",
            lambda: cast(
                bytes, msgpack.packb({"kernel_id": str(KERNEL_ID), "reason": "user-requested"})
            ),
        ),
        (
            "not-an-array-str",
            "a msgpack str 'kernel_terminated'",
            lambda: cast(bytes, msgpack.packb("kernel_terminated")),
        ),
        ("not-an-array-int", "a msgpack int 0", lambda: cast(bytes, msgpack.packb(0))),
        (
            "wrong-length-short",
            "kernel_terminated(K, S): 2 elements for the 4-tuple",
            lambda: cast(bytes, msgpack.packb([str(KERNEL_ID), str(SESSION_ID)])),
        ),
        (
            "wrong-length-long",
            "kernel_terminated(K, S, 'user-requested', 0, 'extra'): 5 elements",
            lambda: cast(
                bytes,
                msgpack.packb([str(KERNEL_ID), str(SESSION_ID), "user-requested", 0, "extra"]),
            ),
        ),
        ("wrong-length-empty", "an empty array", lambda: cast(bytes, msgpack.packb([]))),
        (
            "bad-uuid",
            "kernel_terminated('not-a-uuid', S, 'user-requested', 0)",
            lambda: cast(
                bytes, msgpack.packb(["not-a-uuid", str(SESSION_ID), "user-requested", 0])
            ),
        ),
        (
            "bad-utf8",
            "kernel_terminated(K, S, <str bytes ff fe 80 c0>, 0): a msgpack str (fixstr "
            "a4) holding invalid UTF-8",
            _bad_utf8,
        ),
        (
            "wrong-types",
            "kernel_terminated(K, S, 7, 'zero'): int reason, str exit code",
            lambda: cast(bytes, msgpack.packb([str(KERNEL_ID), str(SESSION_ID), 7, "zero"])),
        ),
        (
            "truncated-msgpack",
            "kernel_terminated args cut in the middle of the session id",
            lambda: _golden_args("23.09", "kernel_terminated")[:50],
        ),
    ]
    for name, what, build in others:
        out.append(Fixture(f"hostile/{name}.args.bin", "23.09", None, what, build, kind="hostile"))
    good_args = base64.b64encode(_golden_args("26.8", "kernel_terminated")).decode()
    jsons: list[tuple[str, str, bytes]] = [
        (
            "25.11-bad-base64",
            "a 25.11 broadcast whose args is not base64",
            _dump_json({"name": "kernel_terminated", "source": AGENT_ID, "args": "!!not base64!!"}),
        ),
        (
            "25.11-not-an-object",
            "a 25.11 broadcast that is a JSON array",
            _dump_json(["kernel_terminated", AGENT_ID, good_args]),
        ),
        ("25.11-not-json", "a broadcast that is not JSON at all", b"\x94\xa5hello"),
        (
            "25.11-missing-args",
            "a broadcast without 'args'",
            _dump_json({"name": "kernel_terminated", "source": AGENT_ID}),
        ),
        (
            "26.8-metadata-object",
            "metadata as a JSON object instead of a JSON string",
            _dump_json(
                {
                    "name": "kernel_terminated",
                    "source": AGENT_ID,
                    "args": good_args,
                    "metadata": {"request_id": None},
                }
            ),
        ),
    ]
    for name, what, body in jsons:
        out.append(Fixture(f"hostile/{name}.json", None, None, what, _pk(body), kind="hostile"))
    return out


def fixtures() -> list[Fixture]:
    """Every golden and hostile fixture, in INDEX.md order."""
    return _golden() + _hostile()


def _hexdump(data: bytes, limit: int = 160) -> str:
    shown = data[:limit].hex(" ")
    return shown + (f" … (+{len(data) - limit} bytes)" if len(data) > limit else "")


def render_index(items: Sequence[Fixture] | None = None) -> str:
    """bus/INDEX.md for the fixtures (regenerated with them; a test checks it is current)."""
    items = fixtures() if items is None else items
    lines = [
        "# Backend.AI event-bus fixtures",
        "",
        "Generated by `python -m devtools.backendai_bus --write-fixtures`; "
        "`tests/unit/test_backendai_fixtures.py` rebuilds every file and this index and compares",
        "bytes. Source citations are `TAG path Lline` in lablup/backend.ai, `common/` = "
        "`src/ai/backend/common/`. File paths are relative to `tests/fixtures/backendai/`.",
        "",
        f"Fixed values: kernel id `{KERNEL_ID}`, session id `{SESSION_ID}`, bgtask id "
        f"`{TASK_ID}`, creation id `{CREATION_ID}`, agent `{AGENT_ID}`, request id "
        f"`{REQUEST_ID}`, user `{USER_ID}`; `R` = that generation's "
        "`KernelLifecycleEventReason`, `sample_creation_info()` = the creation_info of "
        "`devtools/backendai_bus.py`.",
        "",
        "## Generations",
        "",
        "| key | tags | reason enum pickles as | msgpack | producer |",
        "|---|---|---|---|---|",
    ]
    for g in GENERATIONS.values():
        mod = f"`{g.reason_module}.KernelLifecycleEventReason`" if g.reason_module else "— (str)"
        transport = "XADD" + (" MAXLEN ~ 128" if g.maxlen else "")
        if g.pubsub:
            transport += f" + PUBLISH {BROADCAST_CHANNEL}"
        lines.append(
            f"| {g.key} | {g.tags} | {mod} | {g.msgpack_cite} | {transport}: {g.producer_cite} |"
        )
    lines += shape_table()
    for kind, title in (("golden", "Golden messages (bus/)"), ("hostile", "Hostile (hostile/)")):
        lines += ["", f"## {title}", ""]
        for f in items:
            if f.kind != kind:
                continue
            data = f.build()
            lines += [f"### `{f.path}`", ""]
            if f.generation:
                lines.append(f"* generation: {f.generation} ({GENERATIONS[f.generation].tags})")
            lines.append(f"* value: `{f.what}`")
            lines += [f"* source: {c}" for c in f.cites]
            lines.append(f"* {len(data)} bytes")
            if f.path.endswith((".json", ".txt")) and len(data) < 4096:
                lines += ["", "```", data.decode("utf-8", "backslashreplace").rstrip("\n"), "```"]
            else:
                lines += ["", "```", _hexdump(data), "```"]
            p = data if f.path.endswith(".pickle") else None
            if f.path.endswith(".args.bin") and f.kind == "golden":
                p = _first_pickle(data)
            if p is not None:
                label = "pickletools" if f.path.endswith(".pickle") else "first ExtType 6"
                lines += ["", f"{label}: " + _opcode_summary(p)]
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _fmt_field(f: _Field) -> str:
    name = f"str({f.name})" if f.kind == "id" else f.name
    if f.default is REQUIRED:
        return name
    if f.default is UNKNOWN_REASON:
        return f"{name}=R.UNKNOWN"
    return f"{name}={{}}" if f.kind == "map" else f"{name}={f.default!r}"


def shape_table() -> list[str]:
    """Markdown: every generation x event, its serialize() tuple (constructor defaults shown),
    the delivery kinds Backend.AI has a class for, and where the class is."""
    lines = [
        "",
        "## Event classes per generation",
        "",
        "`str(x)`: the class's serialize() sends `str(uuid)`; `R.UNKNOWN`: the generation's "
        "`KernelLifecycleEventReason.UNKNOWN` (an ExtType 6 pickle); kinds: `stream` (one "
        "class, ≤ 25.9) or the anycast / broadcast classes (25.10+).",
        "",
        "| gen | event | serialize() tuple | kinds | class (tag file Lline; serialize() Lline) |",
        "|---|---|---|---|---|",
    ]
    for g in GENERATIONS.values():
        for event in g.events():
            fields = ", ".join(_fmt_field(f) for f in _shape(g.shapes, event))
            cites = "<br>".join(g.cite(event, k) for k in g.kinds(event))
            lines.append(
                f"| {g.key} | {event} | `({fields})` | {', '.join(g.kinds(event))} | {cites} |"
            )
    return lines


def _first_pickle(args_bytes: bytes) -> bytes | None:
    """The first ExtType 6 payload in msgpack ``args_bytes`` (walking arrays and maps)."""
    try:
        value = msgpack.unpackb(args_bytes, raw=True, strict_map_key=False)
    except Exception:
        return None

    def walk(v: Any) -> bytes | None:
        if isinstance(v, msgpack.ExtType) and v.code == 6:
            return cast(bytes, v.data)
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for _, x in items:
            found = walk(x)
            if found is not None:
                return found
        return None

    return walk(value)


def _opcode_summary(data: bytes) -> str:
    try:
        ops = pickle_opcodes(data)
    except Exception as e:  # truncated / malformed: say how genops failed
        return f"genops fails: {type(e).__name__}: {e}"
    parts = []
    for name, arg in ops:
        if arg is None:
            parts.append(name)
        elif isinstance(arg, str) and len(arg) > 64:
            parts.append(f"{name} <{len(arg)} chars>")
        else:
            parts.append(f"{name} {arg!r}")
    return ", ".join(parts)


def write_fixtures(root: Path = FIXTURES) -> list[Path]:
    """Rewrite every fixture file and ``bus/INDEX.md`` under ``root`` (deliberately: review the
    diff)."""
    written: list[Path] = []
    items = fixtures()
    for f in items:
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.build())
        written.append(path)
    index = root / "bus" / "INDEX.md"
    index.write_text(render_index(items), encoding="utf-8")
    written.append(index)
    return written


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-fixtures"]:
        sys.exit("usage: python -m devtools.backendai_bus --write-fixtures")
    for p in write_fixtures():
        print(p.relative_to(FIXTURES))
