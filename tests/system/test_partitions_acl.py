"""``gateway acl --partitions N`` in a real redis-server (ACL DRYRUN): each role reaches the
names of partitions 0..N-1 it needs, and nothing of another deployment whose prefix starts
like a partition's (``kev.prod:events``, ``kev.preview:live``), nor of a partition past N-1.
(The names statically, for many N and on a cluster: ``tests/unit/test_acl.py``.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from gateway.cli.acl import PROFILES, render, rules
from publisher import Keys
from publisher.partitions import MAX_PARTITIONS
from tests.support.redis_server import free_port
from tests.support.secure_redis import spawn_redis

N = 4
PASSWORDS = {p: f"{p}-pw-{i}x9Q" for i, p in enumerate(PROFILES)}
USERS = {p: f"kev-{p}" for p in PROFILES}
SUPERUSER = "superuser-pw-7Zk"


@pytest.fixture(scope="module")
def superuser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    aclfile = tmp_path_factory.mktemp("acl") / "users.acl"
    aclfile.write_text(
        render(Keys("kev"), PASSWORDS, USERS, superuser_password=SUPERUSER, partitions=N)
    )
    port = free_port()
    with spawn_redis(
        ["--port", str(port), "--aclfile", str(aclfile)],
        lambda: redis.Redis(port=port, password=SUPERUSER, socket_timeout=1).ping(),
    ):
        with redis.Redis(port=port, password=SUPERUSER, decode_responses=True) as client:
            yield client


def allowed(client: redis.Redis, user: str, *command: str) -> bool:
    """Whether ``user`` may run ``command`` (ACL DRYRUN: nothing runs)."""
    answer = client.execute_command("ACL", "DRYRUN", user, *command)  # type: ignore[no-untyped-call]
    return bool(answer == "OK")


@pytest.mark.parametrize("prefix", ["kev", *(f"kev.p{p}" for p in range(1, N))])
def test_every_partition_is_granted(superuser: redis.Redis, prefix: str) -> None:
    assert allowed(superuser, "kev-gateway", "XRANGE", f"{prefix}:events", "-", "+")
    assert allowed(superuser, "kev-gateway", "SUBSCRIBE", f"{prefix}:live")
    assert allowed(superuser, "kev-publisher", "XADD", f"{prefix}:events", "*", "e", "x")
    assert allowed(superuser, "kev-publisher", "SET", f"{prefix}:pubseq:abc", "1")
    assert allowed(superuser, "kev-publisher", "PUBLISH", f"{prefix}:live", "x")
    assert allowed(superuser, "kev-bridge", "GET", f"{prefix}:pubpos:b1")
    assert allowed(superuser, "kev-admin", "DEL", f"{prefix}:events")
    assert allowed(superuser, "kev-admin", "DEL", f"{prefix}:epoch")
    # the selectors still limit the commands on each partition's names
    assert not allowed(superuser, "kev-publisher", "SET", f"{prefix}:events", "x")
    assert not allowed(superuser, "kev-admin", "XADD", f"{prefix}:events", "*", "e", "x")


@pytest.mark.parametrize("prefix", ["kev.prod", "kev.preview", "kev.p", "kev.pX", f"kev.p{N}"])
def test_other_deployments_and_partitions_past_the_last_are_not(
    superuser: redis.Redis, prefix: str
) -> None:
    assert not allowed(superuser, "kev-gateway", "XRANGE", f"{prefix}:events", "-", "+")
    assert not allowed(superuser, "kev-gateway", "SUBSCRIBE", f"{prefix}:live")
    assert not allowed(superuser, "kev-gateway", "SET", f"{prefix}:epoch", "1")
    assert not allowed(superuser, "kev-publisher", "XADD", f"{prefix}:events", "*", "e", "x")
    assert not allowed(superuser, "kev-publisher", "PUBLISH", f"{prefix}:live", "x")
    assert not allowed(superuser, "kev-bridge", "SET", f"{prefix}:pubpos:b1", "1")
    assert not allowed(superuser, "kev-admin", "DEL", f"{prefix}:events")


def test_the_most_partitions_load(superuser: redis.Redis) -> None:
    """128 partitions: one exact name each, every profile's rules accepted by Redis."""
    for profile in PROFILES:
        user = f"kev-{profile}-{MAX_PARTITIONS}"
        superuser.execute_command(  # type: ignore[no-untyped-call]
            "ACL",
            "SETUSER",
            user,
            "reset",
            "on",
            ">pw",
            *rules(Keys("kev"), profile, MAX_PARTITIONS),
        )
    last = f"kev.p{MAX_PARTITIONS - 1}"
    assert allowed(superuser, f"kev-gateway-{MAX_PARTITIONS}", "XRANGE", f"{last}:events", "-", "+")
    assert allowed(
        superuser, f"kev-publisher-{MAX_PARTITIONS}", "XADD", f"{last}:events", "*", "e", "x"
    )
    assert not allowed(
        superuser, f"kev-publisher-{MAX_PARTITIONS}", "XADD", "kev.prod:events", "*", "e", "x"
    )
