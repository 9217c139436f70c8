"""TLS to Redis and to Sentinel, for real: a redis-server that speaks only TLS and wants a
client certificate (certificates made by trustme), a gateway configured by its
``redis_tls_*`` settings, a publisher by the URL's ``ssl_*`` parameters."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis

from publisher import AsyncPublisher
from publisher.connection import connect_sync
from tests.support.gateway_server import gateway_settings, run_gateway
from tests.support.http import stream_as
from tests.support.identities import ALICE, ROOT, seed, session_of
from tests.support.redis_server import free_port
from tests.support.secure_redis import Certs, make_certs, spawn_redis


def _tls_args(certs: Certs) -> list[str]:
    return ["--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes"]  # fmt: skip


def _query(certs: Certs) -> str:
    return (f"ssl_ca_certs={certs.ca}&ssl_certfile={certs.client_cert}"
            f"&ssl_keyfile={certs.client_key}")  # fmt: skip


@pytest.fixture(scope="module")
def certs() -> Certs:
    return make_certs()


@pytest.fixture(scope="module")
def tls_port(certs: Certs) -> Iterator[int]:
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?{_query(certs)}"
    with spawn_redis(["--port", "0", "--tls-port", str(port), *_tls_args(certs)],
                     lambda: connect_sync(url).ping()):  # fmt: skip
        yield port


def test_gateway_and_publisher_over_tls(tls_port: int, certs: Certs) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0"
    anyio.run(functools.partial(seed, f"{url}?{_query(certs)}"))
    settings = gateway_settings(
        url,
        redis_tls_ca_file=str(certs.ca),
        redis_tls_cert_file=str(certs.client_cert),
        redis_tls_key_file=str(certs.client_key),
    )
    with run_gateway(settings) as gw:
        anyio.run(_publish_and_receive, gw.base_url, f"{url}?{_query(certs)}")


async def _publish_and_receive(base_url: str, pub_url: str) -> None:
    with anyio.fail_after(15):
        async with stream_as(ROOT, base_url) as (_, events):
            async with AsyncPublisher.from_url(pub_url) as pub:
                stream_id = await pub.publish(session_of(ALICE, "tls-01").started())
                assert stream_id is not None
            async for event in events:
                if event.event == "kernel_started":
                    assert json.loads(event.data)["sessionId"] == "tls-01"
                    return


def test_tls_refuses_a_wrong_ca_a_missing_client_cert_and_plain_text(
    tls_port: int, certs: Certs
) -> None:
    base = f"rediss://127.0.0.1:{tls_port}/0"
    for bad in (
        f"{base}?ssl_ca_certs={certs.other_ca}&ssl_certfile={certs.client_cert}"
        f"&ssl_keyfile={certs.client_key}",  # the server's certificate is not trusted
        f"{base}?ssl_ca_certs={certs.ca}",  # no client certificate
        f"redis://127.0.0.1:{tls_port}/0",  # plain text to a TLS port
    ):
        with pytest.raises(redis.ConnectionError):
            connect_sync(bad, socket_timeout=3, socket_connect_timeout=3).ping()
    # verify=none trusts any server, but the server still wants our certificate
    url = (
        f"{base}?ssl_cert_reqs=none&ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key}"
    )
    assert connect_sync(url).ping()


def test_tls_to_sentinel(tls_port: int, certs: Certs, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    tls = _tls_args(certs)
    conf.write_text(
        f"bind 127.0.0.1\nport 0\ntls-port {port}\ndir {tmp_path}\n"
        + "".join(f"{tls[i][2:]} {tls[i + 1]}\n" for i in range(0, len(tls), 2))
        + f"tls-cert-file {certs.client_cert}\n".replace("tls-cert-file", "tls-client-cert-file")
        + f"tls-client-key-file {certs.client_key}\ntls-replication yes\n"
        f"sentinel monitor kev 127.0.0.1 {tls_port} 1\n"
    )
    url = f"rediss+sentinel://127.0.0.1:{port}/kev/0?{_query(certs)}"
    with spawn_redis(["--sentinel"], conf=str(conf), alive=lambda: connect_sync(url).ping()):
        client = connect_sync(url)
        client.set("kev:tls-sentinel", "1")
        assert client.get("kev:tls-sentinel") == b"1"
        client.close()
