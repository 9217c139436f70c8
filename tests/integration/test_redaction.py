"""No command prints a Redis password: the real ``gateway`` and ``kev-publish`` processes,
given URLs with a password that fail in every way (unreachable, bad scheme, bad Sentinel
form, bad TLS option, wrong password), say what failed with the password as ``***``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from publisher.connection import RedisURLError, check_url, redact_url
from tests.support.redis_server import free_port

SECRET = "Sup3r-S3cret-pw"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=30,
        env={**clean, **(env or {})}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _bad_urls(redis_url: str) -> list[str]:
    port = free_port()  # nothing listens there
    live = redis_url.removeprefix("redis://")
    return [
        f"redis://kev-admin:{SECRET}@127.0.0.1:{port}/0",
        f"http://kev-admin:{SECRET}@127.0.0.1:{port}/0",
        f"redis+sentinel://:{SECRET}@127.0.0.1/svc",
        f"rediss://u:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=sometimes",
        f"redis://127.0.0.1:{port}/0?password={SECRET}",
        f"redis://nobody:{SECRET}@{live}",  # reachable, wrong credentials
    ]


def test_redact_url_hides_every_password_form() -> None:
    for url in (
        f"redis://:{SECRET}@h:1/0",
        f"redis://user:{SECRET}@h:1/0",
        f"redis+sentinel://u:{SECRET}@s1:1,s2:2/mymaster/0",
        f"rediss://h:1/0?ssl_ca_certs=/ca.pem&password={SECRET}",
        f"unix://:{SECRET}@/tmp/redis.sock",
    ):
        shown = redact_url(url)
        assert SECRET not in shown and "***" in shown, shown
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.slow  # a dozen CLI processes per way of giving the URL
@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_no_cli_prints_the_redis_password(how: str, redis_url: str, tmp_path: Path) -> None:
    urls = _bad_urls(redis_url)
    for url in urls if how == "flag" else [urls[0], urls[-1]]:
        file = tmp_path / "url"
        file.write_text(url + "\n")
        runs = []
        for prog, env_name, argv in (
            ("gateway.cli", "GATEWAY_REDIS_URL", ["keypair", "list"]),
            ("gateway.cli", "GATEWAY_REDIS_URL", ["import", "-"]),
            (
                "publisher.cli",
                "KEV_REDIS_URL",
                [
                    "emit",
                    "--name",
                    "kernel_started",
                    "--session-id",
                    "s1",
                    "--owner-access-key",
                    "AKIA0000000000000001",
                    "--owner-user-id",
                    "u",
                ],
            ),
        ):
            if how == "flag":
                runs.append(_run(prog, *argv, "--redis-url", url))
            elif how == "env":
                runs.append(_run(prog, *argv, env={env_name: url}))
            else:
                runs.append(_run(prog, *argv, env={env_name + "_FILE": str(file)}))
        try:
            check_url(url)
        except RedisURLError:  # serve refuses it at start (a reachable one it would serve)
            runs.append(_run("gateway.cli", "serve", "--redis-url", url))
            runs.append(_run("gateway.cli", "serve", env={"GATEWAY_REDIS_URL_FILE": str(file)}))
        for proc in runs:
            output = proc.stdout + proc.stderr
            assert SECRET not in output, (url, proc.args, output)
            assert proc.returncode != 0, (url, proc.args, output)
            assert output.strip(), (url, proc.args)  # it said why
