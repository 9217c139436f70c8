"""The Redis event bus is one seam (``publisher/bus.py``): no other module of the gateway, the
publisher, the dev tools or the benchmarks sends a stream or pub/sub command, or runs a
script, on the gateway's Redis. Every call of such a verb is found by its name, whatever the
object it is called on; the few that are not the bus's are listed below, each with why.

What the seam does not hold, and a new topology (Redis Cluster) must also change: the
identity store's and the browser sessions' MULTI transactions, the login throttle's and the
fleet limits' scripts (ARCHITECTURE.md, "Where to change what")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEAM = Path("publisher/bus.py")
#: redis-py's methods for the bus's commands, and the ways around them
BUS_VERBS = {
    "xadd", "xrange", "xrevrange", "xread", "xreadgroup", "xinfo_stream", "xtrim", "xdel",
    "xlen", "subscribe", "ssubscribe", "psubscribe", "publish", "spublish",
    "eval", "evalsha", "evalsha_ro", "eval_ro", "register_script", "execute_command",
}  # fmt: skip
#: the project's own objects with a method of such a name (not Redis clients)
PROJECT_RECEIVERS = {"hub", "_hub", "pub", "_pub", "publisher", "self", "bus", "_bus"}
#: (file, verb) -> why it is not the gateway's bus
ELSEWHERE = {
    ("gateway/identity/throttle.py", "register_script"): "the login throttle's counters",
    ("gateway/replica/limits.py", "register_script"): "the fleet-wide stream counts",
    ("gateway/bridge/source.py", "xrange"): "Backend.AI's own Redis (its events stream)",
    ("gateway/bridge/source.py", "xrevrange"): "Backend.AI's own Redis",
    ("gateway/bridge/source.py", "xread"): "Backend.AI's own Redis",
    ("gateway/bridge/source.py", "subscribe"): "Backend.AI's own Redis (events_all)",
    ("devtools/backendai.py", "subscribe"): "Backend.AI's Redis: the manager's subscription",
    ("devtools/backendai_bus.py", "xadd"): "Backend.AI's Redis: its bus as it writes it",
    ("devtools/backendai_bus.py", "execute_command"): "Backend.AI's Redis: its exact commands",
    ("bench/publisher_bench.py", "publish"): "the bench's baseline: raw PUBLISH, no script",
    ("bench/publisher_bench.py", "xlen"): "the bench waits for the history to fill",
    ("publisher/connection.py", "execute_command"): "the cluster client's own entry, passed "
    "on after its pool place is found (_WaitingCluster): every command, not a bus verb",
    ("bench/cluster.py", "execute_command"): "the bench's raw PUBLISH against SPUBLISH on a "
    "channel of its own (its subscriber a raw socket), no gateway",
}


def _receiver(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _calls(code: str) -> list[tuple[int, str, str]]:
    out = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            out.append((node.lineno, _receiver(node.func.value), node.func.attr))
    return out


def _bus_calls_outside_the_seam() -> list[str]:
    found = []
    for tree in ("gateway", "publisher", "devtools", "bench"):
        for path in sorted((ROOT / tree).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative == SEAM:
                continue
            for line, receiver, verb in _calls(path.read_text()):
                if verb not in BUS_VERBS or (str(relative), verb) in ELSEWHERE:
                    continue
                if receiver in PROJECT_RECEIVERS and verb in ("publish", "subscribe"):
                    continue  # Hub.publish, a publisher's publish, Bus.subscribe
                found.append(f"{relative}:{line}: {receiver or '<expr>'}.{verb}(...)")
    return found


def test_only_the_bus_sends_stream_and_pubsub_commands() -> None:
    found = _bus_calls_outside_the_seam()
    assert not found, "Redis bus verbs outside publisher/bus.py:\n" + "\n".join(found)


def test_every_exception_is_still_needed() -> None:
    used = set()
    for (file, verb), _why in ELSEWHERE.items():
        if any(v == verb for _, _, v in _calls((ROOT / file).read_text())):
            used.add((file, verb))
    assert used == set(ELSEWHERE)


def test_the_check_sees_a_bus_verb_on_any_receiver() -> None:
    code = (
        "async def f(conn, x):\n"
        "    await conn.xadd('k', {})\n"
        "    x.client.pipeline().publish('c', b'')\n"
        "    await conn.execute_command('XADD', 'k', '*', 'e', b'')\n"
        "    conn.register_script('return 1')\n"
    )
    verbs = {(r, v) for _, r, v in _calls(code) if v in BUS_VERBS}
    assert verbs == {
        ("conn", "xadd"),
        ("", "publish"),
        ("conn", "execute_command"),
        ("conn", "register_script"),
    }
