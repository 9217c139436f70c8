"""``gateway`` identity management (user, keypair, group, import) against a real
redis-server and a real Redis Cluster (every test that uses Redis on both), through the
command's own argument parser."""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from gateway.cli import admin, build_parser
from gateway.identity.passwords import verify_password
from gateway.identity.store import IdentityStore
from publisher.keys import Keys
from tests.support.redis_server import free_port
from tests.support.vector import SECRET

#: not the default: a command that ignored --prefix would miss what these tests look for
PREFIX = "admintest"


class Cli:
    def __init__(self, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.redis_url = redis_url
        self.capsys = capsys
        capsys.readouterr()

    async def __call__(self, *argv: str, url: str | None = None) -> tuple[int, str, str]:
        args = build_parser().parse_args(
            [*argv, "--redis-url", url or self.redis_url, "--prefix", PREFIX]
        )
        code = await args.func(args)
        out, err = self.capsys.readouterr()
        return code, out, err

    async def ok(self, *argv: str) -> str:
        code, out, err = await self(*argv)
        assert code == 0, err
        return out

    async def fails(self, *argv: str, url: str | None = None) -> str:
        code, out, err = await self(*argv, url=url)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert "Traceback" not in err
        return err


@pytest.fixture
def redis_url(topology_url: str) -> str:
    """Every test here that uses Redis runs on a single redis-server and on a Redis Cluster."""
    return topology_url


@pytest.fixture
def cli(redis_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_url, capsys)


@pytest.fixture
def store(async_redis: aredis.Redis) -> IdentityStore:
    """The shared store's settings, under the CLI's ``PREFIX`` (hash-tagged on a cluster, as
    the CLI names it there)."""
    return IdentityStore(async_redis, Keys.on(async_redis, PREFIX), cache_ttl=0)


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.anyio
async def test_user_keypair_lifecycle(cli: Cli, store: IdentityStore) -> None:
    out = await cli.ok("user", "add", "alice", "--role", "user", "--domain", "default")
    assert out == "added user alice (user in default)\n"
    out = await cli.ok("keypair", "add", "--user", "alice")
    match = re.fullmatch(r"access key: (AKIA[A-Z0-9]{16})\nsecret key: ([A-Za-z0-9]{40})\n", out)
    assert match is not None, out
    access_key, secret = match.groups()
    keypair = await store.get_keypair(access_key)
    assert keypair is not None and keypair.secret_key == secret and keypair.active

    out = await cli.ok("keypair", "list")
    assert out.splitlines() == [
        "access_key            user_id  active",
        f"{access_key}  alice    True",
    ]
    assert secret not in out

    assert (
        await cli.ok("keypair", "deactivate", access_key) == f"deactivated keypair {access_key}\n"
    )
    keypair = await store.get_keypair(access_key)
    assert keypair is not None and not keypair.active
    await cli.ok("keypair", "activate", access_key)
    keypair = await store.get_keypair(access_key)
    assert keypair is not None and keypair.active

    assert await cli.ok("keypair", "remove", access_key) == f"removed keypair {access_key}\n"
    assert await store.get_keypair(access_key) is None
    await cli.ok("user", "remove", "alice")
    assert await store.list_users() == []


@pytest.mark.anyio
async def test_json_output(cli: Cli) -> None:
    out = await cli.ok("user", "add", "dora", "--role", "admin", "--domain", "lab", "--json")
    assert json_lines(out) == [{"user_id": "dora", "role": "admin", "domain": "lab"}]
    out = await cli.ok(
        "keypair", "add", "--user", "dora", "--access-key", "AKIADORA", "--secret-key", SECRET,
        "--inactive", "--json",
    )  # fmt: skip
    assert json_lines(out) == [
        {"access_key": "AKIADORA", "secret_key": SECRET, "user_id": "dora", "active": False}
    ]
    out = await cli.ok("keypair", "list", "--json", "--user", "dora")
    assert json_lines(out) == [{"access_key": "AKIADORA", "user_id": "dora", "active": False}]
    assert await cli.ok("keypair", "list", "--user", "nobody") == "access_key  user_id  active\n"
    out = await cli.ok("user", "list", "--json")
    assert json_lines(out) == [
        {"user_id": "dora", "role": "admin", "domain": "lab", "password": False}
    ]
    assert json_lines(await cli.ok("user", "list", "--json", "--domain", "other")) == []
    out = await cli.ok("keypair", "deactivate", "AKIADORA", "--json")
    assert json_lines(out) == [{"access_key": "AKIADORA", "active": False}]
    out = await cli.ok("user", "remove", "dora", "--cascade", "--json")
    assert json_lines(out) == [{"removed": "dora"}]


@pytest.mark.anyio
async def test_groups(cli: Cli, store: IdentityStore) -> None:
    assert await cli.ok("group", "add", "ml", "--domain", "lab") == "added group ml in lab\n"
    await cli.ok("group", "add", "ops", "--domain", "default")
    assert await cli.ok("group", "list") == "domain   name\ndefault  ops\nlab      ml\n"
    out = await cli.ok("group", "list", "--domain", "lab", "--json")
    assert json_lines(out) == [{"domain": "lab", "name": "ml"}]
    assert await cli.ok("group", "remove", "ml", "--domain", "lab") == "removed group ml from lab\n"
    assert not await store.group_exists("ml", None)
    err = await cli.fails("group", "remove", "ml", "--domain", "lab")
    assert err == "error: group 'ml' does not exist in domain 'lab'\n"


@pytest.mark.anyio
async def test_user_password_flag_and_prompt(
    cli: Cli, store: IdentityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cli.ok(
        "user", "add", "u1", "--role", "monitor", "--domain", "d", "--password", "pw1-long-enough"
    )
    u1 = await store.get_user("u1")
    assert u1 is not None and verify_password("pw1-long-enough", u1.password_hash)

    answers = iter(["pw2-long-enough", "pw2-long-enough", "a", "b"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    await cli.ok("user", "add", "u2", "--role", "user", "--domain", "d", "--password")
    u2 = await store.get_user("u2")
    assert u2 is not None and verify_password("pw2-long-enough", u2.password_hash)
    err = await cli.fails("user", "add", "u3", "--role", "user", "--domain", "d", "--password")
    assert err == "error: the passwords differ\n"
    err = await cli.fails("user", "add", "u3", "--role", "user", "--domain", "d", "--password", "")
    assert err == "error: the password must not be empty\n"
    err = await cli.fails("user", "add", "u3", "--role", "user", "--domain", "d", "--password", "x")
    assert err == "error: the password must be at least 12 characters\n"
    out = await cli.ok("user", "list")
    assert out.splitlines()[1:] == [
        "u1       monitor  d       True",
        "u2       user     d       True",
    ]


@pytest.mark.anyio
async def test_import_file(cli: Cli, store: IdentityStore, tmp_path: Path) -> None:
    doc = {
        "users": [{"user_id": "alice", "role": "user", "domain": "default"}],
        "keypairs": [{"access_key": "AKIAALICE", "secret_key": SECRET, "user_id": "alice"}],
        "groups": [{"domain": "default", "name": "ml"}],
    }
    path = tmp_path / "identities.json"
    path.write_text(json.dumps(doc))
    out = await cli.ok("import", str(path))
    assert out == "imported 1 users, 1 keypairs, 1 groups\n"
    assert json_lines(await cli.ok("import", str(path), "--json")) == [
        {"users": 1, "keypairs": 1, "groups": 1}
    ]
    resolved = await store.resolve("AKIAALICE")
    assert resolved is not None and resolved[1].domain == "default"

    path.write_text('{"users": [{"user_id": "x", "role": "root", "domain": "d"}]}')
    err = await cli.fails("import", str(path))
    assert "$.users[0].role" in err
    path.write_text("{not json")
    assert (await cli.fails("import", str(path))).startswith(f"error: {path} is not valid JSON")
    err = await cli.fails("import", str(tmp_path / "missing.json"))
    assert err.startswith(f"error: cannot read {tmp_path / 'missing.json'}: No such file")


@pytest.mark.anyio
async def test_errors_are_one_line_and_exit_2(cli: Cli) -> None:
    err = await cli.fails("keypair", "add", "--user", "ghost")
    assert err == "error: user 'ghost' does not exist\n"
    await cli.ok("user", "add", "alice", "--role", "user", "--domain", "default")
    err = await cli.fails("user", "add", "alice", "--role", "user", "--domain", "default")
    assert err == "error: user 'alice' already exists\n"
    err = await cli.fails("keypair", "add", "--user", "alice", "--secret-key", "short")
    assert err == "error: secret key must be 16-256 characters, not 5\n"
    err = await cli.fails("keypair", "add", "--user", "alice", "--access-key", "AK IA")
    assert "contains whitespace" in err
    await cli.ok("keypair", "add", "--user", "alice", "--access-key", "AKIA1")
    err = await cli.fails("user", "remove", "alice")
    assert err.startswith("error: user 'alice' still has keypairs AKIA1")
    for argv in (("keypair", "remove", "AKIA2"), ("keypair", "activate", "AKIA2")):
        assert await cli.fails(*argv) == "error: keypair 'AKIA2' does not exist\n"
    assert await cli.fails("user", "remove", "bob") == "error: user 'bob' does not exist\n"


@pytest.mark.anyio
async def test_redis_unreachable_or_bad_settings(cli: Cli) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    err = await cli.fails("user", "list", url=url)
    assert err.startswith(f"error: Redis at {url}: ")
    err = await cli.fails("user", "list", url="http://example.invalid/")
    assert "scheme must be one of" in err
    args = build_parser().parse_args(
        ["user", "list", "--redis-url", cli.redis_url, "--prefix", "bad prefix"]
    )
    assert await admin.run(args) == 2
    assert "key prefix 'bad prefix'" in cli.capsys.readouterr().err


def test_generated_keys() -> None:
    keys = {admin.generate_access_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"AKIA[A-Z0-9]{16}", k) for k in keys)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", admin.generate_secret_key())


def test_subcommands_require_an_action() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["keypair"])
    assert info.value.code == 2
