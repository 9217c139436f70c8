"""The shipped load balancers expose only the public surface: a real gateway behind the real
nginx and haproxy configs answers the stream, logins and the dashboard through them, and
refuses /metrics, /ready and /health (however the path is spelled) that the replica itself
serves to Prometheus and the orchestrator."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.gateway_server import RunningGateway
from tests.support.proxies import PROXY_RUNNERS, Proxy, RunProxy

pytestmark = pytest.mark.anyio

HIDDEN = ["/metrics", "/ready", "/health", "/metrics/", "//metrics", "/%6detrics",
          "/%6Detrics?x=1", "/./metrics", "/stream/../metrics"]  # fmt: skip
PUBLIC = [("/stream/kernel/_/events", 400), ("/auth/me", 401), ("/", 200), ("/func/", 200)]


async def _check(proxy: Proxy, gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for path in ("/metrics", "/ready", "/health"):
            assert (await http.get(gateway.base_url + path)).status_code == 200, path
        base = f"http://127.0.0.1:{proxy.port}"
        for path in HIDDEN:
            # a raw target: httpx would normalise the dot segments away
            request = http.build_request("GET", base + "/")
            request.url = request.url.copy_with(raw_path=path.encode())
            response = await http.send(request)
            assert response.status_code in (403, 404), (path, response.status_code)
            assert b"kev_" not in response.content, path  # no metric leaked
        for path, status in PUBLIC:
            response = await http.get(base + path, headers={"Accept": "application/json"})
            assert response.status_code == status, (path, response.status_code)


@pytest.mark.parametrize("runner", PROXY_RUNNERS)
async def test_operations_endpoints_are_not_public(
    runner: RunProxy, tmp_path: Path, gateway: RunningGateway
) -> None:
    async with runner(tmp_path, [gateway.host] * 3) as proxy:  # the three shipped slots
        await _check(proxy, gateway)
