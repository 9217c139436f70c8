"""Key names depend on the Redis they are on: a Redis Cluster hash-tags them (``{kev}:events``)
and publishes on shard channels (:meth:`publisher.keys.Keys.on`). A name made with a bare
``Keys(prefix)`` next to a client is the single-node name whatever the client talks to: on a
cluster the demo's identity import wrote ``kev:keypair:*`` where the gateway reads
``{kev}:keypair:*``. So every ``Keys(...)`` of the project goes through ``Keys.on(client)``,
``Keys.for_url(url)`` or ``RedisSettings.keys()``, but for the few below, each with why."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "publisher", "devtools", "bench")
#: file -> why a bare Keys(...) there is right
BARE = {
    "publisher/cli.py": "validates the --prefix text only; the publisher names keys on its client",
    "gateway/cli/acl.py": "no client: --cluster says which names to grant",
    "gateway/sync/apply.py": "given the store's own prefix (already hash-tagged on a cluster)",
    "bench/cluster.py": "no client: the slots of the partitions' names on a cluster (cluster=True)",
    "bench/procs.py": "the bench's private single redis-server",
    "bench/publisher_bench.py": "the bench's private single redis-server",
}


def _bare_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Keys"
    ]


def test_key_names_are_made_for_the_redis_they_are_on() -> None:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            lines = _bare_calls(path)
            if lines and relative not in BARE:
                found[relative] = lines
    assert not found, f"Keys(prefix) next to a client: use Keys.on(client, prefix): {found}"


def test_every_exception_is_still_needed() -> None:
    stale = [f for f in BARE if not _bare_calls(ROOT / f)]
    assert not stale, f"no bare Keys(...) left in {stale}: drop them from BARE"
