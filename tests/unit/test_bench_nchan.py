"""The nchan peer's configuration and wire (bench.nchan): the nginx.conf it renders, the
subscription the load client sends, the data each event is published with (the gateway's own),
and which scenarios the peer runs."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.nchan import event_data, render_config, subscribe_request
from bench.procs import DOMAIN, GROUP, ROOT_KEY, ROOT_USER
from bench.scenarios import SCENARIOS, peer_skip_reason
from gateway.fanout.frames import event_frame
from publisher import KernelEvent

MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")


def _config(
    *,
    prefix: Path = Path("/tmp/kev-nchan-x"),
    module: Path = MODULE,
    port: int = 41234,
    redis_host: str = "127.0.0.1",
    redis_port: int = 6390,
    user: str | None = None,
) -> str:
    return render_config(
        prefix=prefix,
        module=module,
        port=port,
        redis_host=redis_host,
        redis_port=redis_port,
        nofile=20000,
        user=user,
    )


def _directives(conf: str) -> list[str]:
    return [line.strip() for line in conf.splitlines() if line.strip() and "#" not in line]


def test_the_config_is_one_loopback_worker_in_redis_mode() -> None:
    lines = _directives(_config())
    assert lines[0] == f"load_module {MODULE};"
    for directive in (
        "worker_processes 1;",
        "worker_rlimit_nofile 20000;",
        "worker_connections 20000;",
        "pid /tmp/kev-nchan-x/nginx.pid;",
        "listen 127.0.0.1:41234;",
        "nchan_redis_server redis://127.0.0.1:6390;",
        "nchan_subscriber eventsource;",
        "nchan_subscriber_first_message newest;",
        "nchan_publisher;",
        "client_body_temp_path /tmp/kev-nchan-x/client_body;",
    ):
        assert lines.count(directive) == 1, directive
    # both ends of a channel go through the Redis, keyed by the session id in the path
    assert lines.count("nchan_redis_pass bench_redis;") == 2
    assert lines.count("nchan_channel_id $1;") == 2
    assert "location ~ ^/sub/([A-Za-z0-9_-]+)$ {" in lines
    assert "location ~ ^/pub/([A-Za-z0-9_-]+)$ {" in lines
    assert not any(line.startswith("user ") for line in lines)
    conf = _config()
    assert conf.count("{") == conf.count("}")


def test_as_root_the_workers_run_as_the_user_given() -> None:
    assert "user root;" in _directives(_config(user="root"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"port": 0},
        {"redis_port": 70000},
        {"prefix": Path("/tmp/with space")},
        {"module": Path("/x;y.so")},
        {"redis_host": "127.0.0.1; evil"},
    ],
)
def test_what_nginx_would_misread_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _config(**overrides)


def test_the_subscription_is_an_eventsource_get_of_the_channel() -> None:
    request = subscribe_request(41234, "s00042").decode()
    assert request == (
        "GET /sub/s00042 HTTP/1.1\r\nHost: 127.0.0.1:41234\r\nAccept: text/event-stream\r\n\r\n"
    )
    with pytest.raises(ValueError):
        subscribe_request(41234, "../x")


def test_each_event_is_published_with_the_data_the_gateway_sends_for_it() -> None:
    event = KernelEvent(
        name="kernel_started",
        session_id="s00000",
        session_uuid=uuid.UUID(int=1),
        kernel_id=uuid.UUID(int=2),
        owner_access_key=ROOT_KEY,
        owner_user_id=ROOT_USER,
        domain=DOMAIN,
        group=GROUP,
        reason="t=1700000000.123456 " + "x" * 20,
        timestamp=1700000000.123456,
    )
    frame = event_frame("1700000000000-0", event)
    assert frame is not None
    data = next(line for line in frame.split(b"\n") if line.startswith(b"data: "))
    assert event_data(event) == data.removeprefix(b"data: ")
    assert b'"reason":"t=1700000000.123456' in event_data(event)  # what the load client scans


def test_the_peer_runs_the_scenarios_of_one_plain_gateway_process() -> None:
    runs = {sc.name for sc in SCENARIOS if peer_skip_reason(sc) is None}
    assert runs == {"a25", "a100", "b", "c1k", "c10k", "e"}
