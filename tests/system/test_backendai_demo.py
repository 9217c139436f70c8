"""``scripts/demo --backendai``: the local cluster with a Backend.AI-shaped installation beside
it (its PostgreSQL and Redis bus, a producer writing sessions' lives as the manager and agents
do) and ``gateway bridge`` between them; a demo user's stream gets its own bridged sessions'
events through nginx, and nothing of anyone else's."""

from __future__ import annotations

import json

import anyio
import pytest

from devtools.backendai import BackendAIDemo
from devtools.cluster import LocalCluster
from gateway.consumer import KernelEventStream
from publisher.demo import demo_identities

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.mark.parametrize("generation", ["23.09", "26.8"])
async def test_a_demo_user_streams_its_bridged_sessions(generation: str) -> None:
    user = next(k for k in demo_identities().keypairs if k.role == "user")
    with (
        LocalCluster(replicas=2, publisher_rate=0.0) as cluster,
        BackendAIDemo(cluster.redis_url, generation=generation, rate=50.0) as backendai,
    ):
        assert backendai.lines()
        stream = KernelEventStream(
            cluster.url, access_key=user.access_key, secret_key=user.secret_key
        )
        seen: list[tuple[str, str]] = []
        with anyio.fail_after(60):
            async for event in stream:
                data = json.loads(event.data)
                seen.append((event.event, data["ownerAccessKey"]))
                if event.event == "kernel_terminated":
                    break
    assert {owner for _, owner in seen} == {user.access_key}
    names = [name for name, _ in seen]
    assert "kernel_started" in names and names[-1] == "kernel_terminated"
