"""The Redis bus is one seam (``publisher/bus.py``): no other module of the gateway, the
publisher or the dev tools sends a stream or pub/sub command, or a script, on the keys the
publishers and gateways share. A new Redis topology (sharded pub/sub, hash-tagged keys) then
changes that module alone."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEAM = Path("publisher/bus.py")
#: commands only the bus sends (redis-py's method names)
STREAM_AND_PUBSUB = {
    "xadd", "xrange", "xrevrange", "xread", "xreadgroup", "xinfo_stream", "xtrim", "xdel",
    "evalsha_ro", "subscribe", "ssubscribe", "psubscribe", "publish", "spublish",
}  # fmt: skip
#: what the project names its Redis clients, pipelines and pub/sub connections
REDIS_NAMES = {"redis", "_redis", "pipe", "pubsub", "client", "sync", "raw", "r"}


def _receiver(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def test_only_the_bus_sends_stream_and_pubsub_commands() -> None:
    found = []
    for tree in ("gateway", "publisher", "devtools"):
        for path in sorted((ROOT / tree).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative == SEAM:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                name, receiver = node.func.attr, _receiver(node.func.value)
                if name in STREAM_AND_PUBSUB and receiver in REDIS_NAMES:
                    found.append(f"{relative}:{node.lineno}: {receiver}.{name}(...)")
    assert not found, "Redis bus verbs outside publisher/bus.py:\n" + "\n".join(found)


def test_the_check_sees_a_bus_verb_elsewhere() -> None:
    code = "async def f(redis, pipe):\n    await redis.xadd('k', {})\n    pipe.publish('c', b'')"
    calls = [
        (_receiver(n.func.value), n.func.attr)
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]
    assert ("redis", "xadd") in calls and ("pipe", "publish") in calls
