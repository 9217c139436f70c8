"""The Backend.AI bus stand-in and its golden fixtures: every file is rebuilt from the
producer's own packing code and compared byte for byte (so they cannot drift apart), the
pickles have the opcode shape CPython writes, and the producer puts exactly those bytes on a
real Redis. Rewrite the files deliberately with
``python -m devtools.backendai_bus --write-fixtures`` and review the diff.

No test here ever unpickles anything: an autouse fixture makes every unpickling entry point
raise."""

from __future__ import annotations

import base64
import json
import pickle
import pickletools
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis
import redis.asyncio as aredis

from devtools import backendai_bus as bus
from devtools.backendai_bus import (
    AGENT_ID,
    CREATION_ID,
    FIXTURES,
    GENERATIONS,
    KERNEL_ID,
    REASONS,
    SESSION_ID,
    BackendAIBus,
    BusCodec,
    SyncBackendAIBus,
    pickle_opcodes,
)

ALL = bus.fixtures()


@pytest.fixture(autouse=True)
def _never_unpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to unpickle a fixture")

    for name in ("loads", "load", "Unpickler", "_loads", "_load", "_Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


# -- the files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ALL, ids=[f.path for f in ALL])
def test_each_fixture_file_is_what_the_producer_builds(fixture: bus.Fixture) -> None:
    path = FIXTURES / fixture.path
    assert path.is_file(), f"missing {path}: run --write-fixtures"
    assert path.read_bytes() == fixture.build()


def test_the_index_is_current() -> None:
    assert (FIXTURES / "bus" / "INDEX.md").read_text(encoding="utf-8") == bus.render_index(ALL)


def test_no_fixture_file_is_left_over() -> None:
    on_disk = {
        p.relative_to(FIXTURES).as_posix()
        for sub in ("bus", "hostile")
        for p in (FIXTURES / sub).iterdir()
        if p.name != "INDEX.md"
    }
    assert on_disk == {f.path for f in ALL}


def test_write_fixtures_writes_the_same_tree(tmp_path: Path) -> None:
    written = bus.write_fixtures(tmp_path)
    assert len(written) == len(ALL) + 1
    for f in ALL[:20]:
        assert (tmp_path / f.path).read_bytes() == (FIXTURES / f.path).read_bytes()


def test_every_lifecycle_event_of_every_shape_has_a_golden_file() -> None:
    paths = {f.path for f in ALL}
    for key in ("22.09", "22.09.5", "23.03", "23.09", "26.8"):
        for event in GENERATIONS[key].events():
            if event.startswith(("kernel_", "session_", "scheduling")) and (
                event != "session_checking_precondition"
            ):
                assert f"bus/{key}-{event}.args.bin" in paths, (key, event)
    assert "bus/26.8-scheduling.json" in paths and "bus/25.8-kernel_cancelled.args.bin" in paths


# -- the tuple shapes, as read in each tag's serialize() ----------------------------------------

SHAPES = {
    # (generation, event): the constructor's fields = the serialize() tuple
    ("22.09", "kernel_started"): ("kernel_id", "creation_id", "reason"),
    ("22.09", "kernel_terminated"): ("kernel_id", "reason", "exit_code"),
    ("22.09", "session_terminated"): ("session_id", "reason"),
    ("22.09.5", "kernel_started"): ("kernel_id", "creation_id", "reason", "creation_info"),
    ("22.09.5", "kernel_terminated"): ("kernel_id", "reason", "exit_code"),
    ("23.03", "kernel_started"): ("kernel_id", "reason", "creation_info"),
    ("23.03", "kernel_terminated"): ("kernel_id", "reason", "exit_code"),
    ("23.03", "session_terminating"): ("session_id", "reason"),
    ("23.09", "kernel_started"): ("kernel_id", "session_id", "reason", "creation_info"),
    ("23.09", "kernel_cancelled"): ("kernel_id", "session_id", "reason", "creation_info"),
    ("23.09", "kernel_terminated"): ("kernel_id", "session_id", "reason", "exit_code"),
    ("23.09", "session_enqueued"): ("session_id", "creation_id", "reason"),
    ("23.09", "session_success"): ("session_id", "reason", "exit_code"),
    ("25.6", "kernel_cancelled"): ("kernel_id", "session_id", "reason", "creation_info"),
    ("25.8", "kernel_cancelled"): ("kernel_id", "session_id", "reason"),
    ("26.8", "kernel_cancelled"): ("kernel_id", "session_id", "reason"),
    ("26.8", "kernel_started"): ("kernel_id", "session_id", "reason", "creation_info"),
    ("26.8", "scheduling"): ("session_id", "creation_id", "status_transition", "reason"),
    ("26.8", "bgtask_updated"): ("task_id", "current_progress", "total_progress", "message"),
    ("26.8", "do_terminate_session"): ("session_id", "reason"),
    ("23.09", "kernel_pull_progress"): (
        "kernel_id",
        "current_progress",
        "total_progress",
        "message",
    ),
}


@pytest.mark.parametrize(("key", "event"), list(SHAPES))
def test_the_constructor_is_the_event_classes(key: str, event: str) -> None:
    assert tuple(BusCodec(key).signature(event).parameters) == SHAPES[(key, event)]


@pytest.mark.parametrize(
    ("key", "event"),
    [
        ("22.09", "session_terminating"),  # none before 23.03.0
        ("23.03", "kernel_enqueued"),  # 22.09.x only
        ("25.8", "kernel_pull_progress"),  # gone in 25.8.0
        ("25.11", "scheduling"),  # 25.13.0+
        ("26.8", "session_scheduled"),  # gone in 26.2.0
        ("26.8", "session_preparing"),
    ],
)
def test_events_a_generation_does_not_have_are_refused(key: str, event: str) -> None:
    with pytest.raises(ValueError, match=r"no .* event"):
        BusCodec(key).message(event, KERNEL_ID, SESSION_ID)


def test_session_started_is_anycast_only_from_26_2() -> None:
    assert GENERATIONS["26.8"].kinds("session_started") == ("anycast",)
    assert GENERATIONS["25.13"].kinds("session_started") == ("anycast", "broadcast")
    assert GENERATIONS["26.8"].kinds("scheduling") == ("broadcast",)
    assert GENERATIONS["23.09"].kinds("kernel_started") == ("stream",)


def test_defaults_are_the_classes() -> None:
    args = BusCodec("23.09").message("kernel_terminated", KERNEL_ID, SESSION_ID).args
    assert args[2] is REASONS["23.09"]["UNKNOWN"] and args[3] == -1
    assert BusCodec("22.09").message("kernel_terminated", KERNEL_ID).args == (
        str(KERNEL_ID),
        "",
        -1,
    )
    assert BusCodec("26.8").message("kernel_preparing", KERNEL_ID, SESSION_ID).args == (
        str(KERNEL_ID),
        str(SESSION_ID),
        "",
        {},
    )
    with pytest.raises(TypeError):
        BusCodec("26.8").message("scheduling", SESSION_ID, CREATION_ID, "RUNNING")


# -- msgpack and pickles -------------------------------------------------------------------------

MODULES = {
    "22.09.5": "ai.backend.common.events",
    "23.03": "ai.backend.common.events",
    "23.09": "ai.backend.common.events",
    "24.09": "ai.backend.common.events",
    "25.6": "ai.backend.common.events",
    "25.8": "ai.backend.common.events.kernel",
    "25.10": "ai.backend.common.events.event_types.kernel.types",
    "25.11": "ai.backend.common.events.event_types.kernel.types",
    "26.8": "ai.backend.common.events.event_types.kernel.types",
}


@pytest.mark.parametrize("key", list(MODULES))
def test_a_reason_is_a_protocol_5_pickle_of_this_shape(key: str) -> None:
    R = REASONS[key]
    args = BusCodec(key).message("session_failure", SESSION_ID, R["TASK_FAILED"], 1).args_bytes
    value = msgpack.unpackb(args)  # no ext_hook: ExtType stays opaque
    assert value[0] == str(SESSION_ID) and value[2] == 1
    ext = value[1]
    assert isinstance(ext, msgpack.ExtType) and ext.code == 6
    frame = len(ext.data) - 11  # PROTO (2) + FRAME (1 + 8)
    assert pickle_opcodes(ext.data) == [
        ("PROTO", 5),
        ("FRAME", frame),
        ("SHORT_BINUNICODE", MODULES[key]),
        ("MEMOIZE", None),
        ("SHORT_BINUNICODE", "KernelLifecycleEventReason"),
        ("MEMOIZE", None),
        ("STACK_GLOBAL", None),
        ("MEMOIZE", None),
        ("SHORT_BINUNICODE", "task-failed"),
        ("MEMOIZE", None),
        ("TUPLE1", None),
        ("MEMOIZE", None),
        ("REDUCE", None),
        ("MEMOIZE", None),
        ("STOP", None),
    ]


def test_standin_modules_nest_and_leave_real_modules_alone() -> None:
    with bus.standin_modules(REASONS["23.09"]), bus.standin_modules(bus.MountTypes):
        assert (
            sys.modules["ai.backend.common.events"].KernelLifecycleEventReason is REASONS["23.09"]
        )
        assert sys.modules["ai.backend.common.types"].MountTypes is bus.MountTypes
    with bus.standin_modules(bus.Decimal):
        assert not hasattr(sys.modules["decimal"], "__backendai_standin__")
    assert "ai" not in sys.modules


def test_a_delivery_the_event_has_no_class_for_is_refused() -> None:
    codec = BusCodec("26.8")
    msg = codec.message("scheduling", SESSION_ID, CREATION_ID, "RUNNING", "triggered-by-scheduler")
    with pytest.raises(ValueError, match="only"):
        codec.commands(msg, "manager", "anycast")
    old = BusCodec("23.09")
    with pytest.raises(ValueError, match="only"):
        old.commands(old.message("session_enqueued", SESSION_ID, CREATION_ID), "manager", "both")
    raw = codec.raw("no_such_event", b"\x90")
    assert len(codec.commands(raw, "manager", "both")) == 2


def test_str_enum_and_strenum_pickle_alike() -> None:
    """(str, enum.Enum) ≤ 23.09 and enum.StrEnum from 24.03 write the same bytes."""
    assert REASONS["23.09"].__mro__[1] is str and issubclass(
        REASONS["24.09"], __import__("enum").StrEnum
    )
    a = BusCodec("23.09").message(
        "kernel_terminated", KERNEL_ID, SESSION_ID, REASONS["23.09"]["IDLE_TIMEOUT"]
    )
    b = BusCodec("24.09").message(
        "kernel_terminated", KERNEL_ID, SESSION_ID, REASONS["24.09"]["IDLE_TIMEOUT"]
    )
    assert a.args_bytes == b.args_bytes


def test_synthetic_modules_are_gone_after_packing() -> None:
    BusCodec("26.8").message(
        "kernel_started", KERNEL_ID, SESSION_ID, creation_info=bus.sample_creation_info()
    )
    assert not any(m == "ai" or m.startswith("ai.") for m in sys.modules)


def test_any_generations_reason_is_re_expressed_in_this_one() -> None:
    old = REASONS["23.09"]["USER_REQUESTED"]
    msg = BusCodec("26.8").message("kernel_terminated", KERNEL_ID, SESSION_ID, old, 0)
    assert msg.args[2] is REASONS["26.8"]["USER_REQUESTED"]
    plain = BusCodec("22.09").message("kernel_terminated", KERNEL_ID, old, 0)
    assert plain.args[1] == "user-requested" and type(plain.args[1]) is str
    with pytest.raises(ValueError):  # TASK_DONE was removed in 24.09.1
        BusCodec("26.8").message("session_success", SESSION_ID, REASONS["23.09"]["TASK_DONE"])


def test_22_09_has_no_ext_types_and_plain_string_reasons_stay_strings() -> None:
    data = (FIXTURES / "bus/22.09-kernel_terminated.args.bin").read_bytes()
    assert msgpack.unpackb(data) == [str(KERNEL_ID), "user-requested", 0]
    with pytest.raises(TypeError):
        bus.packb([KERNEL_ID], "22.09")  # no UUID ext before 22.09.5
    pulling = BusCodec("26.8").message("kernel_pulling", KERNEL_ID, SESSION_ID, bus.IMAGE)
    assert msgpack.unpackb(pulling.args_bytes)[2] == bus.IMAGE


def test_ext_types_packed_like_backendai() -> None:
    packed = bus.packb((KERNEL_ID, (1, 2), bus.PosixPath("/a")), "23.09")
    assert msgpack.unpackb(packed) == [
        msgpack.ExtType(1, KERNEL_ID.bytes),
        [1, 2],
        msgpack.ExtType(4, b"/a"),
    ]
    with pytest.raises(TypeError):  # ResourceSlot has an ext type only from 24.09.0
        bus.packb(bus.ResourceSlot({"cpu": bus.Decimal(1)}), "23.09")


def test_kernel_started_creation_info_carries_other_enums_and_ext_types() -> None:
    data = (FIXTURES / "bus/26.8-kernel_started.args.bin").read_bytes()
    info = msgpack.unpackb(data)[3]
    proto = info["service_ports"][0]["protocol"]
    assert proto.code == 6 and pickle_opcodes(proto.data)[2] == (
        "SHORT_BINUNICODE",
        "ai.backend.common.types",
    )
    assert info["service_ports"][0]["container_ports"] == [8080]
    assert info["resource_spec"]["allocations"]["cpu"]["cpu"]["0"].code == 3
    assert info["resource_spec"]["mounts"][0]["source"].code == 4
    rich = (FIXTURES / "bus/26.8-kernel_started.ext8-ext9.args.bin").read_bytes()
    with pytest.raises(ValueError):  # msgpack's default strict_map_key refuses ext map keys
        msgpack.unpackb(rich)
    spec = msgpack.unpackb(rich, strict_map_key=False)[3]["resource_spec"]
    assert spec["slots"].code == 8
    assert {k.code for k in spec["allocations"]["cpu"]} == {9}


# -- envelopes ------------------------------------------------------------------------------------


def test_the_broadcast_json_of_26_8() -> None:
    raw = (FIXTURES / "bus/26.8-kernel_terminated.json").read_bytes()
    body = json.loads(raw)
    assert list(body) == ["name", "source", "args", "metadata"]
    assert body["name"] == "kernel_terminated" and body["source"] == AGENT_ID
    args = (FIXTURES / "bus/26.8-kernel_terminated.args.bin").read_bytes()
    assert base64.b64decode(body["args"], validate=True) == args
    assert isinstance(body["metadata"], str)  # JSON text inside the JSON
    assert json.loads(body["metadata"]) == {
        "request_id": None,
        "user": None,
        "triggered_user": None,
    }
    assert b" " not in raw  # orjson: compact


def test_metadata_by_generation() -> None:
    assert "metadata" not in json.loads(
        (FIXTURES / "bus/25.11-kernel_terminated.json").read_bytes()
    )
    md = json.loads(
        json.loads((FIXTURES / "bus/25.12-kernel_terminated.json").read_bytes())["metadata"]
    )
    assert md == {"request_id": None, "user_id": None}
    req = json.loads((FIXTURES / "bus/26.8-scheduling.in-request.json").read_bytes())
    assert json.loads(req["metadata"])["user"]["user_id"] == str(bus.USER_ID)
    assert list(json.loads(req["metadata"])["user"]) == [
        "user_id",
        "is_authorized",
        "is_admin",
        "is_superadmin",
        "role",
        "domain_name",
    ]


def test_commands_per_generation() -> None:
    text = {
        k: (FIXTURES / f"bus/{k}-kernel_terminated.commands.txt").read_text()
        for k in ("22.09", "23.09", "25.6", "25.10", "25.11", "26.8")
    }
    assert text["22.09"].startswith("XADD events * name kernel_terminated source i-agent-01 args ")
    assert text["23.09"].startswith("XADD events * name kernel_terminated")
    assert text["25.6"].startswith("XADD events MAXLEN ~ 128 * name kernel_terminated")
    assert text["25.10"].count("XADD events MAXLEN ~ 128 *") == 2  # anycast + broadcast
    assert text["25.11"].splitlines()[1].startswith("PUBLISH events_all {")
    assert " metadata {" in text["26.8"].splitlines()[0]
    sched = (FIXTURES / "bus/26.8-scheduling.commands.txt").read_text().splitlines()
    assert sched[0] == "MULTI" and sched[-1] == "EXEC"
    assert sched[1].startswith(f"SET session_scheduler.{SESSION_ID} {{") and sched[1].endswith(
        " EX 300"
    )
    exact = BusCodec("25.6").xadd({b"name": b"x"}, exact=True)
    assert exact[:5] == (b"XADD", b"events", b"MAXLEN", b"128", b"*")


# -- hostile fixtures: walked with pickletools only ---------------------------------------------


def _hostile(name: str) -> bytes:
    return (FIXTURES / "hostile" / name).read_bytes()


def test_hostile_pickles_have_the_intended_opcodes() -> None:
    ops = pickle_opcodes(_hostile("ext6-os-system.pickle"))
    assert ops[2:7] == [
        ("SHORT_BINUNICODE", "os"),
        ("MEMOIZE", None),
        ("SHORT_BINUNICODE", "system"),
        ("MEMOIZE", None),
        ("STACK_GLOBAL", None),
    ]
    assert ("SHORT_BINUNICODE", "eval") in pickle_opcodes(_hostile("ext6-builtins-eval.pickle"))
    assert ("SHORT_BINUNICODE", "Popen") in pickle_opcodes(_hostile("ext6-subprocess-popen.pickle"))
    p0 = pickle_opcodes(_hostile("ext6-protocol0-global.pickle"))
    assert p0[0] == ("GLOBAL", "ai.backend.common.events KernelLifecycleEventReason")
    assert ("TUPLE2", None) in pickle_opcodes(_hostile("ext6-tuple2.pickle"))
    nested = [op for op, _ in pickle_opcodes(_hostile("ext6-nested-global.pickle"))]
    assert nested.count("STACK_GLOBAL") == 2 and nested.count("REDUCE") == 2
    assert "BUILD" in [op for op, _ in pickle_opcodes(_hostile("ext6-build.pickle"))]
    assert "MEMOIZE" not in [op for op, _ in pickle_opcodes(_hostile("ext6-no-memo.pickle"))]
    with pytest.raises(ValueError):
        pickle_opcodes(_hostile("ext6-truncated.pickle"))


def test_hostile_args_wrap_them_in_ext_type_6() -> None:
    for name in ("ext6-os-system", "ext6-tuple2", "ext6-truncated", "ext6-protocol0-global"):
        value = msgpack.unpackb(_hostile(f"{name}.args.bin"))
        assert value[2] == msgpack.ExtType(6, _hostile(f"{name}.pickle"))
    huge = msgpack.unpackb(_hostile("ext6-1mb.args.bin"))[2]
    assert huge.code == 6 and len(huge.data) > 1024 * 1024
    assert pickle_opcodes(huge.data)[8][0] == "BINUNICODE"


def test_hostile_msgpack_is_malformed_as_described() -> None:
    with pytest.raises(UnicodeDecodeError):
        msgpack.unpackb(_hostile("bad-utf8.args.bin"))
    assert msgpack.unpackb(_hostile("bad-utf8.args.bin"), raw=True)[2] == b"\xff\xfe\x80\xc0"
    with pytest.raises(ValueError):
        msgpack.unpackb(_hostile("truncated-msgpack.args.bin"))
    assert isinstance(msgpack.unpackb(_hostile("not-an-array-map.args.bin")), dict)
    assert len(msgpack.unpackb(_hostile("wrong-length-short.args.bin"))) == 2
    assert (
        msgpack.unpackb(_hostile("ext3-decimal-in-creation-info.args.bin"))[3]["resource_spec"][
            "size"
        ].code
        == 3
    )
    assert (
        msgpack.unpackb(_hostile("ext16-binarysize-in-creation-info.args.bin"))[3]["resource_spec"][
            "size"
        ].code
        == 16
    )
    with pytest.raises(ValueError):
        base64.b64decode(json.loads(_hostile("25.11-bad-base64.json"))["args"], validate=True)
    assert isinstance(json.loads(_hostile("25.11-not-an-object.json")), list)


def test_pickletools_never_runs_anything() -> None:
    # genops only parses; dis() on the os.system pickle prints it
    out = []
    pickletools.dis(
        _hostile("ext6-os-system.pickle"),
        out=type("W", (), {"write": lambda self, s: out.append(s)})(),
    )
    assert "system" in "".join(out)


# -- the producer on a real Redis -----------------------------------------------------------------


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_a_stream_entry_has_bytes_keys_and_the_golden_args(sync_client: redis.Redis) -> None:
    b = SyncBackendAIBus(sync_client, "23.09", source=AGENT_ID)
    sent = b.kernel_terminated(
        KERNEL_ID, SESSION_ID, reason=b.reasons["USER_REQUESTED"], exit_code=0
    )  # type: ignore[index]
    [(entry_id, fields)] = sync_client.xrange("events")
    assert [entry_id] == sent.stream_ids
    assert list(fields) == [b"name", b"source", b"args"]
    assert fields[b"name"] == b"kernel_terminated" and fields[b"source"] == AGENT_ID.encode()
    assert fields[b"args"] == (FIXTURES / "bus/23.09-kernel_terminated.args.bin").read_bytes()


def test_maxlen_and_the_managers_trim(sync_client: redis.Redis) -> None:
    capped = SyncBackendAIBus(sync_client, "25.6")
    for _ in range(400):
        capped.session_enqueued(SESSION_ID, CREATION_ID)
    assert 128 <= sync_client.xlen("events") < 400  # approximate: whole nodes are dropped
    sync_client.delete("events")
    old = SyncBackendAIBus(sync_client, "23.09")
    for _ in range(400):
        old.session_enqueued(SESSION_ID, CREATION_ID)
    assert sync_client.xlen("events") == 400  # no MAXLEN before 25.6
    removed = old.trim_like_manager()
    assert removed > 0 and 128 <= sync_client.xlen("events") < 400


def test_requeue_and_raw_messages(sync_client: redis.Redis) -> None:
    b = SyncBackendAIBus(sync_client, "25.10", source=AGENT_ID)
    sent = b.kernel_started(KERNEL_ID, SESSION_ID, delivery="both")
    assert len(sent.stream_ids) == 2  # 25.10: anycast and broadcast both XADD
    [(_, first), (_, second)] = sync_client.xrange("events")
    assert first == second
    b.requeue(first)
    b.raw_message({"name": "kernel_terminated", "source": AGENT_ID, "args": b"\xc1"})
    b.raw("kernel_terminated", b"\x94")
    entries = sync_client.xrange("events")
    assert entries[2][1][b"_retry_count"] == b"1" and entries[3][1][b"args"] == b"\xc1"
    assert entries[4][1][b"args"] == b"\x94"


def test_pubsub_generation_publishes_the_golden_json(sync_client: redis.Redis) -> None:
    sub = sync_client.pubsub()
    sub.subscribe("events_all")
    assert sub.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    b = SyncBackendAIBus(sync_client, "26.8", source=AGENT_ID)
    sent = b.kernel_terminated(
        KERNEL_ID,
        SESSION_ID,
        reason=b.reasons["USER_REQUESTED"],  # type: ignore[index]
        exit_code=0,
    )
    assert sent.receivers == [1] and sent.stream_ids == []
    msg = sub.get_message(timeout=1)
    assert msg is not None and msg["channel"] == b"events_all"
    assert msg["data"] == (FIXTURES / "bus/26.8-kernel_terminated.json").read_bytes()
    b.scheduling(SESSION_ID, CREATION_ID, "PREPARING", "triggered-by-scheduler", source="manager")
    cached = sync_client.get(f"session_scheduler.{SESSION_ID}")
    assert cached == (FIXTURES / "bus/26.8-scheduling.json").read_bytes()
    assert 290 < sync_client.ttl(f"session_scheduler.{SESSION_ID}") <= 300
    sub.close()


@pytest.mark.anyio
async def test_the_async_bus(redis_url: str) -> None:
    client = aredis.Redis.from_url(redis_url)
    try:
        b = BackendAIBus(client, "26.8", source=AGENT_ID)
        sent = await b.kernel_started(KERNEL_ID, SESSION_ID, delivery="anycast")
        [(_, fields)] = await client.xrange("events")
        assert list(fields) == [b"name", b"source", b"args", b"metadata"]
        assert fields[b"args"] == sent.message.args_bytes
        assert json.loads(fields[b"metadata"]) == {
            "request_id": None,
            "user": None,
            "triggered_user": None,
        }
        await b.raw_message(b"not json")
        old = BackendAIBus(client, "22.09")
        await old.kernel_terminated(KERNEL_ID, "self-terminated")
        assert await old.trim_like_manager() == 0
    finally:
        await client.aclose()
