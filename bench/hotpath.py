"""The gateway's own cost per delivery on the hot path, in process, without the kernel: the
hub's dispatch and flush (``Hub.publish`` then ``Hub.flush``) of a broadcast to ``n`` direct
streams whose sink writes nowhere (a C no-op instead of ``transport.write``).

Why a figure of its own: in the fan-out scenarios the kernel's part of a write (the send, the
loopback, the reader's wake-up) is two thirds of the gateway's CPU, and the user/system split
is sampled by the scheduler's tick, so over a quick run's 3 s window the gateway's own share
swings by 10-40% between rounds. Here nothing but the gateway's Python runs: the best of
``repeats`` passes moves by a few percent, so a change of the hot path shows, and shows which
way. It leaves out what only the real run has: cache misses after each system call, the
transport's own code, the Redis read. The scenarios stay the verdict; this says why.

Only the hub's stable surface is used (``Hub``, ``FanoutSettings``, ``Filter``,
``new_connection``, ``register``, ``go_direct``, ``notify``, ``publish``, ``flush``), so that
``--against`` can run it on older commits too; the sink answers both the flag
(``blocked``) and the older method (``paused()``).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from typing import Any, Final

__all__ = ["hot_path_ns"]

#: the broadcast of scenario a25: every stream superadmin (an exact filter), one event at a time
STREAMS: Final = 2000
EVENTS: Final = 300


class _NowhereSink:
    """A direct stream's sink that is never paused and writes nowhere."""

    __slots__ = ()
    blocked = False
    write_chunk = staticmethod(len)  # a C call that reads the chunk, as a write would

    def paused(self) -> bool:  # the sink protocol before it became ``blocked``
        return False


async def _measure(streams: int, events: int, repeats: int) -> dict[str, Any]:
    from gateway.fanout.filters import Filter
    from gateway.fanout.hub import Hub
    from gateway.settings.sections import FanoutSettings
    from publisher.schema import SessionRef, encode_event

    settings = FanoutSettings(
        retry_jitter_ms=0, max_lag=0.0, buffer_cap=1 << 20, write_deadline=5.0, ping_interval=0.0
    )
    hub = Hub(settings)
    for i in range(streams):
        connection = hub.new_connection(Filter(), f"AKIABENCH{i % 50:011d}")
        hub.register(connection)
        connection.go_direct(_NowhereSink(), hub.notify)
    ref = SessionRef(
        session_id="bench",
        owner_access_key="AKIABENCH00000000000",
        owner_user_id="u",
        domain="default",
        group="g",
        session_uuid=uuid.UUID(int=7),
        kernel_id=uuid.UUID(int=8),
    )
    payloads = [encode_event(ref.started()) for _ in range(events)]
    base = int(time.time() * 1000)
    passes: list[float] = []
    for n in range(repeats):
        gc.collect()
        started = time.perf_counter()
        for i, payload in enumerate(payloads):
            hub.publish(b"%d-%d" % (base + n, i), payload)
            hub.flush()
        passes.append(time.perf_counter() - started)
        await asyncio.sleep(0)  # the flush handles the hub scheduled find nothing to do
    delivered = hub.stats.deliveries
    if delivered != streams * events * repeats:
        raise RuntimeError(f"delivered {delivered}, expected {streams * events * repeats}")
    per = [p / (streams * events) * 1e9 for p in passes]
    return {"streams": streams, "events": events, "repeats": repeats, "ns_per_delivery": min(per),
            "passes_ns": per}  # fmt: skip


def hot_path_ns(streams: int = STREAMS, events: int = EVENTS, repeats: int = 7) -> dict[str, Any]:
    """``ns_per_delivery``: the best of ``repeats`` passes of ``events`` events broadcast to
    ``streams`` streams, dispatched and flushed, in nanoseconds of wall time per delivery
    (one thread, nothing to wait for: CPU time); ``passes_ns``: every pass. Raises
    RuntimeError when a pass did not deliver every event to every stream."""
    return asyncio.run(_measure(streams, events, repeats))


if __name__ == "__main__":
    result = hot_path_ns()
    print(
        f"hot path (dispatch + flush, {result['streams']:,} direct streams, no kernel): "
        f"{result['ns_per_delivery']:.0f} ns per delivery, best of {result['repeats']}"
    )
