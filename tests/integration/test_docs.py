"""The README stays true to the code it documents: its configuration table, and every shell
command it shows, run against a demo cluster (or named with the reason it cannot run here)."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.cluster import LocalCluster
from devtools.demo import banner
from gateway.settings import FIELDS, Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table_with_its_default() -> None:
    defaults = Settings.load({}).flat()
    for name in FIELDS:
        row = re.search(rf"^\| `{name}` \| ([^|]*) \|", README, re.M)
        assert row, f"README's configuration table lacks {name}"
        value = defaults[name]
        if name in ("replica", "cors_origins"):
            continue
        shown = row.group(1).strip().strip("`")
        expected = str(value).lower() if isinstance(value, bool) else str(value)
        if value == ():
            expected = "(none)"
        assert shown in (expected, expected.removesuffix(".0")), (name, shown, expected)


def test_the_readme_commands_exist() -> None:
    assert "bash scripts/demo" in README and "bash scripts/test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci


# -- every shell command of the README, run against a demo cluster -----------------------------

#: commands that cannot run here, each with the reason (matched by prefix, after the demo's
#: port and paths are substituted); every other README shell command runs below
SKIPPED: dict[str, str] = {
    "bash scripts/demo": "the cluster this test runs (LocalCluster: what scripts/demo starts)",
    "bash scripts/test": "the whole suite, which this test is part of (CI runs it: .ci/run)",
    "backend.ai ": "needs the official SDK's virtualenv: tests/system/test_sdk.py runs it",
    "redis-server --aclfile": "starts a Redis of its own from a placeholder command line (...)",
    "python -m bench.": "benchmarks of minutes; the README shows their figures",
}
#: README sections whose commands another test runs, against what they need
ELSEWHERE: dict[str, str] = {
    "## Beside an existing Backend.AI": "tests/system/test_bridge_readme.py (and "
    "tests/system/test_sync_serve.py, its identities part) run them against a Backend.AI-shaped "
    "installation (its Redis and PostgreSQL)",
}
#: commands that address the compose network's `redis` host: docker compose only
COMPOSE_HOST = "@redis:6379"
#: commands that stream until stopped: run for a few seconds, then judged on their output
STREAMING = ("curl -N", "| sh")


def readme_shell_blocks() -> dict[int, list[tuple[int, str]]]:
    """The README's ``sh``/``bash`` commands grouped by section (the line of its ``## ``
    heading): each section's (line, command) in order, continuation lines joined, blank lines
    and whole-line comments left out."""
    blocks: dict[int, list[tuple[int, str]]] = {}
    lang: str | None = None
    pending, start, fence = "", 0, 0
    for number, line in enumerate(README.splitlines(), 1):
        if line.startswith("## ") and lang is None:
            fence = number  # a section's blocks are one group: they build on each other
            continue
        if line.startswith("```"):
            lang = None if lang is not None else (line[3:].strip() or "-")
            continue
        if lang not in ("sh", "bash") or not (line.strip() or pending):
            continue
        if line.lstrip().startswith("#") and not pending:
            continue
        if not pending:
            start = number
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            blocks.setdefault(fence, []).append((start, " ".join(pending.split())))
            pending = ""
    return blocks


#: a section's commands run in order, in one test: later ones use what earlier ones made
#: (`gateway keypair add` prints the key `gateway keypair deactivate AKIA...` takes; a login
#: writes the cookies a later block's curl sends)
BLOCKS = readme_shell_blocks()
COMMANDS = [command for block in BLOCKS.values() for command in block]


def _section_lines() -> dict[str, range]:
    """heading -> the README lines of that section, for each heading in ELSEWHERE."""
    lines = README.splitlines()
    out = {}
    for heading in ELSEWHERE:
        start = lines.index(heading)
        level = heading.split()[0] + " "
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith(level)), len(lines)
        )
        out[heading] = range(start + 1, end + 1)
    return out


SECTION_LINES = _section_lines()


def skip_reason(command: str, line: int = 0) -> str | None:
    for heading, lines in SECTION_LINES.items():
        if line in lines:
            return ELSEWHERE[heading]
    if COMPOSE_HOST in command:
        return "addresses the compose network's `redis` host (docker compose only)"
    bare = command.removeprefix(".venv/bin/")
    for prefix, reason in SKIPPED.items():
        if bare.startswith(prefix) or command.startswith(prefix) or prefix in bare[:40]:
            return reason
    return None


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    """A demo cluster (two replicas behind nginx, events flowing) and the shell's directory,
    with the files the README's commands read (password files, an identities document)."""
    cwd = tmp_path_factory.mktemp("readme-shell")
    for name in ("root.pw", "pub.pw", "gw.pw", "admin.pw"):
        (cwd / name).write_text(secrets.token_urlsafe(24) + "\n")
    (cwd / "identities.json").write_text(
        json.dumps({"users": [{"user_id": "bob@example.com", "role": "user",
                               "domain": "default"}], "keypairs": [], "groups": []})
    )  # fmt: skip
    with LocalCluster(replicas=2, publisher_rate=20) as cluster:
        yield cluster, cwd


def shell_env(cluster: LocalCluster) -> dict[str, str]:
    """This environment (no GATEWAY_*, KEV_*, BACKEND_* of its own), the venv first on PATH,
    plus what the demo's banner tells the user to export."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_", "BACKEND_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    for line in banner(cluster.url, cluster.redis_url).splitlines():
        if line.strip().startswith("export "):
            name, _, value = line.strip().removeprefix("export ").partition("=")
            env[name] = value.strip("'")
    return env


OUTPUTS: dict[int, str] = {}


@pytest.mark.slow  # a demo cluster and a process per command
@pytest.mark.parametrize("block", list(BLOCKS), ids=[f"L{n}" for n in BLOCKS])
def test_the_readme_shell_block_runs_against_the_demo(
    demo: tuple[LocalCluster, Path], block: int
) -> None:
    ran = [_run(demo, line, command) for line, command in BLOCKS[block]]
    if not any(ran):
        reasons = {skip_reason(command, line) for line, command in BLOCKS[block]}
        pytest.skip(f"README line {block}: {'; '.join(sorted(r for r in reasons if r))}")


def _run(demo: tuple[LocalCluster, Path], line: int, command: str) -> bool:
    """Run one README command against the demo and judge it; False when it cannot run here
    (:func:`skip_reason`)."""
    if skip_reason(command, line) is not None:
        return False
    cluster, cwd = demo
    port = cluster.url.rsplit(":", 1)[1]
    shell = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    shell = shell.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    if "AKIA..." in shell:  # the key an earlier command printed (`gateway keypair add`)
        printed = re.findall(r"\bAKIA[A-Z0-9]{16}\b", "".join(OUTPUTS.values()))
        assert printed, "no earlier command printed an access key"
        shell = shell.replace("AKIA...", printed[-1])
    streaming = any(mark in command for mark in STREAMING)
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", shell],
        cwd=cwd,
        env=shell_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a pipeline is one process group: stopped as one
    )
    try:
        out, err = proc.communicate(timeout=4 if streaming else 30)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        code = None  # stopped by us: a stream that was still open
    OUTPUTS[line] = out
    assert "Traceback" not in err, err
    if streaming:
        assert code is None, f"README line {line}: the stream ended ({code}): {err}{out}"
        assert re.search(r"^event: kernel_\w+$", out, re.M), f"no event from {shell}:\n{out}"
    else:
        assert code == 0, f"README line {line}: `{shell}` exited {code}:\n{err}{out}"
    return True


def test_the_commands_that_cannot_run_here_are_few_and_named() -> None:
    # those another test runs are not skipped, only moved (the test named exists)
    for heading, reason in ELSEWHERE.items():
        assert any(n in SECTION_LINES[heading] for n, _ in COMMANDS), heading
        assert (ROOT / reason.split()[0]).is_file(), reason
    skipped = [
        (n, c, skip_reason(c, n))
        for n, c in COMMANDS
        if skip_reason(c, n) and skip_reason(c, n) not in ELSEWHERE.values()
    ]
    assert len(skipped) <= len(COMMANDS) // 2, skipped
    for prefix in SKIPPED:  # no stale entry: each still matches a README command
        assert any(prefix in c for _, c, _ in skipped), f"SKIPPED[{prefix!r}] matches nothing"
