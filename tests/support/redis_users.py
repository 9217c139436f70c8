"""The shipped Redis ACL users (deploy/redis/) as docker-compose.yml wires them: which user
each service connects as, and where its password comes from (a compose secret, resolved to
the file in the checkout), so tests can read them and run them for real."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from gateway.cli.acl import PROFILES, SERVICE_USERS, Profile, ServiceUser
from tests.support.deploy import COMPOSE, DEPLOY, GATEWAYS, ROOT

__all__ = [
    "ACLFILE",
    "DEMO_PASSWORDS",
    "DEMO_SERVICE_PASSWORDS",
    "DEMO_SUPERUSER",
    "ROLE_OF_SERVICE",
    "RedisClient",
    "compose",
    "redis_client_of",
    "redis_command",
]

REDIS_DIR: Final = DEPLOY / "redis"
ACLFILE: Final = REDIS_DIR / "users.acl"
#: role -> its demo password file
DEMO_PASSWORDS: Final[dict[Profile, Path]] = {p: REDIS_DIR / f"demo-{p}.password" for p in PROFILES}
#: Redis's own users (replication, Sentinel monitoring) -> their demo password file; unused
#: by compose's single Redis, needed by the k8s Sentinel recipe (deploy/k8s/redis-acl.yaml)
DEMO_SERVICE_PASSWORDS: Final[dict[ServiceUser, Path]] = {
    s: REDIS_DIR / f"demo-{s}.password" for s in SERVICE_USERS
}
#: the ``default`` user's (the superuser's) demo password: for people, and compose's Redis
#: health check; no service connects with it
DEMO_SUPERUSER: Final = REDIS_DIR / "demo-superuser.password"
#: every compose service that talks to Redis -> the ACL role it must use
ROLE_OF_SERVICE: Final[dict[str, Profile]] = {
    **{name: "gateway" for name in GATEWAYS},
    "seed": "admin",
    "publisher": "publisher",
    "bridge1": "bridge",
    "bridge2": "bridge",
}
_URL_VARS: Final = ("GATEWAY_REDIS_URL", "KEV_REDIS_URL")


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


@dataclass(frozen=True)
class RedisClient:
    """How one compose service reaches Redis."""

    service: str
    #: the URL variable (GATEWAY_REDIS_URL or KEV_REDIS_URL) and its value
    url_var: str
    url: str
    #: the password file variable and its value (a path in the container)
    password_var: str
    password_path: str
    #: the file in the checkout that compose mounts there (its secret's ``file``)
    password_file: Path

    @property
    def username(self) -> str | None:
        return urlsplit(self.url).username

    def env(self, host: str, port: int) -> dict[str, str]:
        """The service's Redis variables, pointed at ``host:port`` and the checkout's file."""
        parts = urlsplit(self.url)
        netloc = f"{parts.username}@{host}:{port}" if parts.username else f"{host}:{port}"
        return {
            self.url_var: parts._replace(netloc=netloc).geturl(),
            self.password_var: str(self.password_file),
        }


def redis_client_of(doc: dict[str, Any], service: str) -> RedisClient:
    """``service``'s Redis URL and password file; fails when it has no URL, no password
    file, or the file is not a compose secret the service is given."""
    spec = doc["services"][service]
    env = spec["environment"]
    (url_var,) = [v for v in _URL_VARS if v in env]
    password_var = url_var.replace("_URL", "_PASSWORD_FILE")
    path = env[password_var]
    assert path.startswith("/run/secrets/"), (service, path)
    secret = path.removeprefix("/run/secrets/")
    assert secret in spec.get("secrets", []), (service, secret)
    file = ROOT / doc["secrets"][secret]["file"]
    return RedisClient(service, url_var, env[url_var], password_var, path, file)


def redis_command(doc: dict[str, Any]) -> tuple[list[str], dict[str, Path]]:
    """The redis service's command (after ``redis-server``) and its bind mounts
    (container path -> file in the checkout)."""
    spec = doc["services"]["redis"]
    command = [str(a) for a in spec["command"]]
    assert command[0] == "redis-server", command
    mounts = {}
    for volume in spec.get("volumes", []):
        host, container, *_ = volume.split(":")
        mounts[container] = ROOT / host
    return command[1:], mounts
