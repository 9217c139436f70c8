"""The fleet-wide per-key stream count (gateway.replica.limits.KeyLeases) against a real
redis-server: random interleavings of simultaneous opens on two replicas, refusals after
the reservation, closes, renewals and a replica that dies, checked against the limit; no
slot is leaked, not even by a request cancelled while Redis is silent."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.replica.limits import KeyLeases, Slot
from publisher.keys import Keys

KEY = "AKIAMODEL"
LIMIT = 5
LEASE = 0.3
_names = itertools.count()


class _Hub:
    """The part of the hub the leases read: open streams per key."""

    def __init__(self) -> None:
        self.per_key: Counter[str] = Counter()

    def streams_of(self, access_key: str) -> int:
        return self.per_key[access_key]

    def access_keys(self) -> list[str]:
        return [key for key, n in self.per_key.items() if n]


class _Replica:
    def __init__(self, client: aredis.Redis) -> None:
        self.hub = _Hub()
        hub: Any = self.hub  # the leases read streams_of/access_keys only
        self.leases = KeyLeases(
            client, Keys(), hub, replica=f"r{next(_names)}", limit=LIMIT, lease=LEASE
        )

    @property
    def holding(self) -> int:
        """Streams open here, and slots reserved not yet released."""
        return self.leases.count(KEY)

    def start(self, slot: Slot) -> None:
        """The response registers the stream: the hub counts it, the slot is released."""
        self.hub.per_key[KEY] += 1
        slot.release()
        slot.release()  # idempotent

    def close(self) -> None:
        if self.hub.per_key[KEY]:
            self.hub.per_key[KEY] -= 1


#: (replicas' simultaneous requests, what becomes of each admitted one)
_open = st.tuples(
    st.just("open"),
    st.lists(st.integers(0, 1), min_size=1, max_size=8),
    st.lists(st.sampled_from(["start", "refuse"]), min_size=8, max_size=8),
)
_step = st.one_of(
    _open,
    st.tuples(st.just("close"), st.integers(0, 1), st.integers(1, 4)),
    st.tuples(st.just("renew"), st.integers(0, 1)),
    st.tuples(st.just("die"), st.integers(0, 1)),
)


async def _run(redis_url: str, steps: list[tuple[Any, ...]]) -> None:
    async with (
        aredis.Redis.from_url(redis_url) as first,
        aredis.Redis.from_url(redis_url) as second,
    ):
        clients = [first, second]
        await first.delete(Keys().key_streams(KEY))
        replicas = [_Replica(first), _Replica(second)]
        dead_since: float | None = None  # a dead replica's count stops counting after LEASE

        def fleet() -> int:
            return sum(r.holding for r in replicas)

        for step in steps:
            if step[0] == "open":
                _, where, fates = step
                slots = await asyncio.gather(*(replicas[i].leases.reserve(KEY) for i in where))
                assert fleet() <= LIMIT, (step, [r.holding for r in replicas])
                for i, slot, fate in zip(where, slots, fates, strict=False):
                    if slot is None:
                        continue
                    if fate == "start":
                        replicas[i].start(slot)
                    else:  # refused after the reservation (the replica's own limit)
                        slot.release()
            elif step[0] == "close":
                for _ in range(step[2]):
                    replicas[step[1]].close()
            elif step[0] == "renew":
                await replicas[step[1]].leases.renew()
            elif step[0] == "die":  # its streams go with it; its count stays until the lease
                replicas[step[1]] = _Replica(clients[step[1]])
                dead_since = anyio.current_time()
            assert fleet() <= LIMIT
            assert all(r.holding == r.hub.streams_of(KEY) for r in replicas), "a slot held"

        # Nothing leaked: once a dead replica's lease ran out and the living renewed, the key
        # has room for exactly what is left, fleet-wide.
        if dead_since is not None:
            await anyio.sleep(max(0.0, dead_since + LEASE + 0.05 - anyio.current_time()))
        for replica in replicas:
            await replica.leases.renew()
        room = LIMIT - fleet()
        slots = await asyncio.gather(
            *(replicas[i % 2].leases.reserve(KEY) for i in range(room + 2))
        )
        granted = [s for s in slots if s is not None]
        assert len(granted) == room, (room, len(granted))
        for slot in granted:
            slot.release()
        for replica in replicas:
            replica.hub.per_key.clear()
            await replica.leases.renew()
        assert await first.hlen(Keys().key_streams(KEY)) == 0


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(_step, max_size=12))
def test_random_interleavings_never_exceed_the_limit_nor_leak(
    redis_url: str, steps: list[tuple[Any, ...]]
) -> None:
    """Any interleaving of simultaneous opens (over two replicas), refusals after the
    reservation, closes, renewals and deaths: the key's streams and
    reserved slots never exceed the limit fleet-wide; no slot outlives its request; and at
    the end the fleet grants exactly the room left, then counts nothing once all closed."""
    anyio.run(_run, redis_url, steps)


def test_a_slot_is_held_until_released(redis_url: str) -> None:
    """Simultaneous reservations on one replica see each other before Redis answers:
    ``LIMIT + 3`` at once get exactly ``LIMIT``; a released slot is free again at once."""

    async def main() -> None:
        async with aredis.Redis.from_url(redis_url) as client:
            replica = _Replica(client)
            slots = await asyncio.gather(*(replica.leases.reserve(KEY) for _ in range(LIMIT + 3)))
            granted = [s for s in slots if s is not None]
            assert len(granted) == LIMIT
            assert await replica.leases.reserve(KEY) is None
            granted[0].release()
            again = await replica.leases.reserve(KEY)
            assert again is not None
            assert replica.holding == LIMIT

    anyio.run(main)


def test_a_request_cancelled_while_redis_is_silent_holds_no_slot() -> None:
    """The server stops while a reservation waits on a Redis that does not answer: the
    request is cancelled, and its slot goes with it."""

    async def main() -> None:
        async def silent(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await anyio.sleep_forever()

        async with (
            await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(listener.serve, silent)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with aredis.Redis(host="127.0.0.1", port=port) as client:
                replica = _Replica(client)
                task = asyncio.ensure_future(replica.leases.reserve(KEY))
                await anyio.sleep(0.1)
                assert replica.holding == 1  # counted before Redis answers
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert replica.holding == 0
            tg.cancel_scope.cancel()

    anyio.run(main)
