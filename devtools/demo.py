"""``python -m devtools demo``: a private redis-server, one gateway replica and the demo
publisher in one process, so a fresh machine shows live kernel events with one command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys

import uvicorn

from gateway.http.app import create_app
from gateway.http.server import StartupError, bind_listener, uvicorn_options
from gateway.identity.store import IdentityStore
from gateway.logs import configure_logging
from gateway.settings import Settings
from publisher.client import AsyncPublisher
from publisher.connection import connect_async, redact_url
from publisher.demo import LifecycleDemo, demo_identities
from publisher.keys import Keys

from .localredis import PrivateRedis

__all__ = ["banner", "run_demo", "seed_demo_identities"]

log = logging.getLogger(__name__)


async def seed_demo_identities(redis_url: str, prefix: str = "kev") -> None:
    """Register the demo publisher's keypairs, users and groups (idempotent)."""
    ids = demo_identities()
    doc = {
        "users": [
            {"user_id": k.user_id, "role": k.role, "domain": k.domain, "password": k.secret_key}
            for k in ids.keypairs
        ],
        "keypairs": [
            {"access_key": k.access_key, "secret_key": k.secret_key, "user_id": k.user_id}
            for k in ids.keypairs
        ],
        "groups": [{"domain": g.domain, "name": g.name} for g in ids.groups],
    }
    client = connect_async(redis_url)  # any topology the gateway takes (Sentinel too)
    try:
        await IdentityStore(client, Keys.on(client, prefix), cache_ttl=0).import_data(doc)
    finally:
        await client.aclose()


def banner(
    base: str, redis_url: str, extra: tuple[str, ...] = (), probes: str | None = None
) -> str:
    """What the demo and the local cluster print: where to look, how to sign in, and
    ready-to-paste ``export`` lines that point every README command (``gateway`` admin and
    ``tail``, ``kev-publish``, the Backend.AI SDK) at this cluster. ``probes``: where
    ``/ready`` and ``/metrics`` answer (a replica: the load balancer refuses them)."""
    host = base.removeprefix("http://")
    root = demo_identities().keypairs[0]
    lines = [
        "",
        f"  dashboard: {base}/   (sign in with a keypair below)",
        f"  stream:    {base}/stream/kernel/_/events   (redis {redact_url(redis_url)})",
        f"  health:    {probes or base}/ready    metrics: {probes or base}/metrics",
        *extra,
        "  keypairs (access key / secret key / role):",
        *(
            f"    {k.access_key}  {k.secret_key}  {k.role} of {k.domain}"
            for k in demo_identities().keypairs
        ),
        "  in another shell, paste these so the README's commands talk to this cluster:",
        f"    export KEV_REDIS_URL={redis_url}",
        f"    export BACKEND_ENDPOINT={base}",
        f"    export BACKEND_ACCESS_KEY={root.access_key}",
        f"    export BACKEND_SECRET_KEY='{root.secret_key}'",
        "  then watch every event as the superadmin:",
        f"    .venv/bin/gateway sign --curl --host {host} "
        f"--access-key {root.access_key} --secret-key '{root.secret_key}' | sh",
        "  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def run_demo(
    *, port: int = 8080, rate: float = 5.0, duration: float | None = None,
    redis_url: str | None = None,
) -> int:  # fmt: skip
    configure_logging("info")
    try:  # the port first: a second demo must not start a Redis and then fail
        sock = bind_listener(Settings.load({}, port=port))
    except StartupError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        stack.callback(sock.close)
        if redis_url is None:
            redis_url = stack.enter_context(PrivateRedis(aof=True)).url
        settings = Settings.load({}, port=port, redis_url=redis_url)
        await seed_demo_identities(redis_url, settings.redis.prefix)
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings)))
        publisher = AsyncPublisher.from_url(redis_url, prefix=settings.redis.prefix)
        demo = LifecycleDemo(
            publisher, rate=rate, sessions=max(4, int(rate * 2)), rng=random.Random(),
            duration=duration,
        )  # fmt: skip
        loop = asyncio.get_running_loop()

        def stop() -> None:
            demo.stop()
            app.request_shutdown()
            server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if serving.done():
            await serving
            return 1
        base = f"http://{settings.server.host}:{settings.server.port}"
        print(banner(base, redis_url), file=sys.stderr, flush=True)
        try:
            stats = await demo.run()
            log.info("demo publisher done: %d events", stats.published)
        finally:
            stop()
            await serving
            await publisher.aclose()
    return 0
