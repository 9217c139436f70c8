"""The Redis ACL profiles (``gateway acl``) cover every name the code makes: each member of
:class:`publisher.keys.Keys`, and every ``<prefix>:...`` name built anywhere else in the
packages. A new key or channel without a grant fails here (and, used for real, in
``tests/system/test_redis_acl.py``)."""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli.acl import (
    ADMIN_SELECTORS,
    CHANNEL_GRANTS,
    KEY_GRANTS,
    PARTITIONED,
    PROFILES,
    PUBLISHER_SELECTORS,
    name_pattern,
    rules,
)
from publisher.keys import Keys
from publisher.partitions import Partitions

ROOT = Path(__file__).resolve().parents[2]
#: an f-string that starts a Redis name with the prefix: ``f"{keys.prefix}:identity:..."``
_PREFIXED = re.compile(r"""f["']\{(?:[\w.]+\.)?prefix\}(:[^"']*)["']""")


def _members() -> set[str]:
    # every member that makes a name (not the fields, not the constructors)
    fields = {"prefix", "cluster", "on", "for_url"}
    return {name for name in dir(Keys) if not name.startswith("_") and name not in fields}


def _granted_patterns(keys: Keys) -> list[str]:
    out = []
    for profile in PROFILES:
        for rule in rules(keys, profile):
            if rule.startswith(("~", "%R~", "%W~", "&")):
                out.append(rule.split("~", 1)[-1].removeprefix("&"))
    return out


def test_every_keys_member_has_a_grant() -> None:
    assert _members() == set(KEY_GRANTS) | set(CHANNEL_GRANTS)
    assert not set(KEY_GRANTS) & set(CHANNEL_GRANTS)


def test_every_name_built_in_the_code_is_granted() -> None:
    """Names made outside Keys (an f-string on the prefix) must match a granted pattern."""
    keys = Keys("kev")
    patterns = _granted_patterns(keys)
    found = []
    for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "publisher").rglob("*.py")]:
        for match in _PREFIXED.finditer(path.read_text()):
            name = "kev" + re.sub(r"\{[^}]*\}", "x", match.group(1))
            found.append(name)
            # a name built in two steps (f"{prefix}:kind", then f"{that}:{x}") is a stem
            assert any(
                fnmatch.fnmatchcase(name, p) or p.startswith(name + ":") for p in patterns
            ), (path, name)
    assert "kev:events" in found  # the scan sees keys.py itself


@pytest.mark.parametrize("member", sorted(set(KEY_GRANTS) | set(CHANNEL_GRANTS)))
def test_patterns_match_the_names_keys_makes(member: str) -> None:
    keys = Keys("kev")
    value = getattr(keys, member)
    if callable(value):
        value = value(*(f"arg{i}" for i in range(len(inspect.signature(value).parameters))))
    assert fnmatch.fnmatchcase(value, name_pattern(keys, member))
    # a prefix with glob characters is escaped, not widened
    odd = Keys("a.b-c{x}")
    assert name_pattern(odd, member).startswith("a.b-c{x}:")


def test_gateway_acl_needs_every_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PUBLISHER", "GATEWAY", "ADMIN", "SUPERUSER"):
        monkeypatch.delenv(f"KEV_ACL_{name}_PASSWORD", raising=False)
        monkeypatch.delenv(f"KEV_ACL_{name}_PASSWORD_FILE", raising=False)
    (tmp_path / "pub").write_text("publisher-secret-1\n")
    assert main(["acl", "--publisher-password-file", str(tmp_path / "pub")]) == 2
    assert "gateway user needs a password" in capsys.readouterr().err
    monkeypatch.setenv("KEV_ACL_GATEWAY_PASSWORD", "gateway-secret-2")
    (tmp_path / "adm").write_text("admin-secret-3")
    monkeypatch.setenv("KEV_ACL_ADMIN_PASSWORD_FILE", str(tmp_path / "adm"))
    # the default user is the superuser: it needs a password of its own
    assert main(["acl", "--publisher-password-file", str(tmp_path / "pub")]) == 2
    assert "default user (the superuser) needs a password" in capsys.readouterr().err
    monkeypatch.setenv("KEV_ACL_SUPERUSER_PASSWORD", "superuser-secret-0")
    assert main(["acl", "--publisher-password-file", str(tmp_path / "pub")]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines()] == [
        "default",
        "kev-publisher",
        "kev-gateway",
        "kev-admin",
    ]
    for secret in ("superuser-secret-0", "publisher-secret-1", "gateway-secret-2",
                   "admin-secret-3"):  # fmt: skip
        assert secret not in out  # hashes only
    digest = hashlib.sha256(b"superuser-secret-0").hexdigest()
    assert f"user default reset on #{digest} ~* &* +@all" in out.splitlines()
    # the PING-only default user is still there for a Redis without an AOF (or with the fix)
    args = ["acl", "--publisher-password-file", str(tmp_path / "pub"), "--default-user", "ping"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "user default on nopass resetkeys resetchannels -@all +ping" in out.splitlines()


def test_gateway_acl_adds_the_replication_and_sentinel_users_when_given_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PUBLISHER", "GATEWAY", "ADMIN", "REPLICATION", "SENTINEL"):
        monkeypatch.delenv(f"KEV_ACL_{name}_PASSWORD", raising=False)
        monkeypatch.delenv(f"KEV_ACL_{name}_PASSWORD_FILE", raising=False)
    # asked for by name, a service user needs its password like any role
    monkeypatch.setenv("KEV_ACL_SUPERUSER_PASSWORD", "superuser-secret-0")
    assert main(["acl", "--profiles", "replication"]) == 2
    assert "replication user needs a password" in capsys.readouterr().err
    (tmp_path / "repl").write_text("replication-secret-4\n")
    monkeypatch.setenv("KEV_ACL_SENTINEL_PASSWORD", "sentinel-secret-5")
    args = ["acl", "--profiles", "gateway", "--replication-password-file", str(tmp_path / "repl")]
    monkeypatch.setenv("KEV_ACL_GATEWAY_PASSWORD", "gateway-secret-2")
    assert main([*args, "--sentinel-user", "mon"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert list(lines) == ["default", "kev-gateway", "kev-replication", "mon"]
    assert "secret" not in out  # hashes only
    assert lines["kev-replication"].endswith("resetkeys resetchannels -@all +psync +replconf +ping")
    mon = lines["mon"].split()
    assert "&__sentinel__:hello" in mon and not any(w.startswith(("~", "%")) for w in mon)
    assert {"+info", "+slaveof", "+config|rewrite", "+multi", "+exec"} <= set(mon)
    assert mon.index("-@all") < mon.index("+info")
    # without their passwords they are simply left out
    monkeypatch.delenv("KEV_ACL_SENTINEL_PASSWORD")
    assert main(["acl", "--profiles", "gateway"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == [
        "default",
        "kev-gateway",
    ]


def test_gateway_acl_can_add_one_user_to_a_running_redis_and_leave_the_default_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--default-user keep``: what an operator adding the bridge to a deployed Redis pipes
    into redis-cli; nothing else changes there (README, "Beside an existing Backend.AI")."""
    (tmp_path / "bridge").write_text("bridge-secret-6\n")
    args = ["acl", "--profiles", "bridge", "--bridge-password-file", str(tmp_path / "bridge")]
    assert main([*args, "--format", "commands", "--default-user", "keep"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("ACL SETUSER kev-bridge reset on ")
    assert "bridge-secret-6" not in line
    monkeypatch.setenv("KEV_ACL_SUPERUSER_PASSWORD", "superuser-secret-0")
    assert main([*args, "--format", "commands"]) == 0  # the default: the default user too
    assert [w.split()[2] for w in capsys.readouterr().out.splitlines()] == ["default", "kev-bridge"]


@pytest.mark.parametrize(
    ("extra", "env", "said"),
    [
        # an aclfile without a default line: Redis makes default nopass with every right
        (["--default-user", "keep"], {}, "--default-user keep writes no default user"),
        (["--default-user", "ping", "--superuser-password-file", "root"], {},
         "--superuser-password-file is for --default-user superuser"),
        (["--superuser-password-file", "-", "--admin-password-file", "-"], {},
         "only one password can come from standard input"),
        ([], {"KEV_ACL_SUPERUSER_PASSWORD": "   "}, "superuser) needs a password"),
        # AUTH <password> alone logs in as default: a shared password is the superuser's
        ([], {"KEV_ACL_SUPERUSER_PASSWORD": "gateway-secret-2"},
         "must differ from every user's; it is the gateway user's too"),
    ],
)  # fmt: skip
def test_gateway_acl_refuses_a_default_user_anyone_could_use(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    env: dict[str, str],
    said: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "root").write_text("superuser-secret-0\n")
    for name in ("PUBLISHER", "GATEWAY", "ADMIN", "SUPERUSER"):
        monkeypatch.delenv(f"KEV_ACL_{name}_PASSWORD", raising=False)
        monkeypatch.delenv(f"KEV_ACL_{name}_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("KEV_ACL_PUBLISHER_PASSWORD", "publisher-secret-1")
    monkeypatch.setenv("KEV_ACL_GATEWAY_PASSWORD", "gateway-secret-2")
    monkeypatch.setenv("KEV_ACL_ADMIN_PASSWORD", "admin-secret-3")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["acl", *extra]) == 2
    captured = capsys.readouterr()
    assert said in captured.err and captured.out == ""


# -- partitions -----------------------------------------------------------------------------


def _rule_patterns(keys: Keys, profile: str, partitions: int) -> tuple[list[str], list[str]]:
    """The key globs (plain rules and selectors) and the channel globs of a profile, with the
    escapes of the prefix taken out (fnmatch does not know them; these prefixes need none)."""
    key_globs: list[str] = []
    channel_globs: list[str] = []
    for rule in rules(keys, profile, partitions):  # type: ignore[arg-type]
        words = rule.strip("()").split() if rule.startswith("(") else [rule]
        for word in words:
            if "~" in word:
                key_globs.append(word.split("~", 1)[1].replace("\\", ""))
            elif word.startswith("&"):
                channel_globs.append(word[1:].replace("\\", ""))
    return key_globs, channel_globs


def _name(keys: Keys, member: str) -> str:
    value = getattr(keys, member)
    if callable(value):
        return str(value(*(f"x{i}" for i in range(len(inspect.signature(value).parameters)))))
    return str(value)


def _granted_members(profile: str) -> tuple[set[str], set[str]]:
    """The members a profile has keys of (grants and selectors) and channels of."""
    selectors = {"publisher": PUBLISHER_SELECTORS, "admin": ADMIN_SELECTORS}.get(profile, {})
    key_members = {m for m, who in KEY_GRANTS.items() if profile in who} | set(selectors)
    return key_members, {m for m, who in CHANNEL_GRANTS.items() if profile in who}


#: a prefix of another deployment that starts like a partition's (``kev.p...``)
_OTHERS = ("prod", "preview", "p", "pX", "p01", "p1x", "p1.x", "p1.")


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
@pytest.mark.parametrize("n", [1, 2, 3, 8, 128])
def test_partitions_grant_their_exact_names_and_no_other_deployments(n: int, cluster: bool) -> None:
    keys = Keys("{kev}", cluster=True) if cluster else Keys("kev")
    names = Partitions(keys, n).keys
    everyone_keys: list[str] = []
    everyone_channels: list[str] = []
    for profile in PROFILES:
        key_globs, channel_globs = _rule_patterns(keys, profile, n)
        everyone_keys += key_globs
        everyone_channels += channel_globs
        key_members, channel_members = _granted_members(profile)
        # every name of partitions 0..n-1 the code makes for the profile is granted to it
        for part in names:
            for member in key_members & PARTITIONED:
                name = _name(part, member)
                assert any(fnmatch.fnmatchcase(name, g) for g in key_globs), (profile, name)
            for member in channel_members & PARTITIONED:
                name = _name(part, member)
                assert any(fnmatch.fnmatchcase(name, g) for g in channel_globs), (profile, name)
        for member in key_members - PARTITIONED:  # partition 0's only
            name = _name(names[0], member)
            assert any(fnmatch.fnmatchcase(name, g) for g in key_globs), (profile, name)
    # what is not partitioned has partition 0's names only
    for part in names[1:]:
        for member in (set(KEY_GRANTS) | set(CHANNEL_GRANTS)) - PARTITIONED:
            name = _name(part, member)
            assert not any(fnmatch.fnmatchcase(name, g) for g in everyone_keys), name
            assert not any(fnmatch.fnmatchcase(name, g) for g in everyone_channels), name
    # other deployments' names, and a partition one past the last, are nobody's
    if cluster:
        prefixes = [f"{{kev.{o}}}" for o in _OTHERS] + [f"{{kev.{o}.0}}" for o in _OTHERS]
        prefixes += [f"{{kev.p{n}.{t}}}" for t in range(1000)]  # any tag of partition n
        prefixes += [f"{{kev.p{p}}}" for p in range(1, n)]  # no tag: not the computed one
    else:
        prefixes = [f"kev.{o}" for o in _OTHERS] + [f"kev.p{n}", f"kev.p{n + 1}"]
    for prefix in prefixes:
        other = Keys.__new__(Keys)
        object.__setattr__(other, "prefix", prefix)
        for member in PARTITIONED:
            name = _name(other, member)
            assert not any(fnmatch.fnmatchcase(name, g) for g in everyone_keys), name
            assert not any(fnmatch.fnmatchcase(name, g) for g in everyone_channels), name


def test_partitions_of_an_odd_prefix_are_granted_escaped() -> None:
    keys = Keys("a.b-c{x}")
    globs = [r for r in rules(keys, "gateway", 3) if r.startswith("%R~")]
    assert "%R~a.b-c{x}.p1:events" in globs and "%R~a.b-c{x}.p2:events" in globs
    assert not any(".p*" in r or ".p?" in r for r in rules(keys, "gateway", 3))
