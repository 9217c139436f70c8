"""The wheel as a user gets it: built from a copy of the checkout, installed alone (with its
runtime dependencies, none of the test extras) into a new virtualenv, and every console script
it ships run from there: ``--help`` of each command and subcommand, then the real thing
against a private redis-server: identities added, ``gateway serve`` until ``/ready``, a
request signed by ``gateway sign``, ``gateway tail`` receiving what ``kev-publish emit``
publishes, ``kev-publish demo``, and a SIGTERM the server drains and exits 0 on.

Nothing of the checkout is importable in that virtualenv (its commands run in a scratch
directory), so a module, data file or dependency the wheel lacks fails here.
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest

from devtools.localredis import PrivateRedis, free_port
from tests.support.lockfile import frozen_versions, locked_versions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "kernel-event-gateway"
#: the checkout's ignored files (.gitignore) and its history stay out of the build's copy
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".venv-sdk", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", "artifacts", "node_modules", "results", "htmlcov", ".coverage*",
)  # fmt: skip
DRAIN_DEADLINE = 5.0

#: run in the clean venv: every command path of every console script of the distribution,
#: read from the argparse parser its entry point builds (caught at parse_known_args)
_COMMAND_PATHS = """\
import argparse, json, sys
from importlib.metadata import distribution

class Parsed(Exception):
    pass

def caught(self, args=None, namespace=None):
    raise Parsed(self)

argparse.ArgumentParser.parse_known_args = caught

def paths(parser, prefix):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from paths(sub, [*prefix, name])

found = {}
for ep in distribution(sys.argv[1]).entry_points:
    if ep.group == "console_scripts":
        try:
            ep.load()([])
        except Parsed as parsed:
            found[ep.name] = list(paths(parsed.args[0], []))
print(json.dumps(found))
"""


class Venv:
    """A virtualenv and the environment its commands run in: none of the checkout's."""

    def __init__(self, path: Path, workdir: Path) -> None:
        self.path = path
        self.bin = path / "bin"
        self.workdir = workdir
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "GATEWAY_", "KEV_", "BACKEND_")) and k != "VIRTUAL_ENV"
        }
        self.env["PATH"] = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"

    def run(
        self, program: str, *args: str, timeout: float = 30, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin / program), *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if ok:
            assert proc.returncode == 0, (
                f"{program} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def start(self, program: str, *args: str, out: IO[bytes] | int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self.bin / program), *args],
            cwd=self.workdir,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out != subprocess.PIPE else subprocess.PIPE,
        )


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    out = tmp / "dist"
    # with the locked build backend of this interpreter: the build fetches nothing
    build = ["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(src)]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *build],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr  # e.g. a data directory setuptools skips
    (wheel,) = out.glob("*.whl")
    return wheel


def _check_contents(wheel: Path) -> dict[str, str]:
    """The file list; returns the console scripts (name -> entry point)."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(entry_points).decode()
    dist_info = entry_points.split("/")[0]

    assert {n.split("/")[0] for n in names} == {"gateway", "publisher", dist_info}
    assert not [n for n in names if n.startswith(("devtools/", "tests/"))]
    assert {"gateway/py.typed", "publisher/py.typed"} <= names
    static = {
        f"gateway/http/static/{p.name}"
        for p in (ROOT / "gateway/http/static").iterdir()
        if p.is_file()
    }
    assert static, "no static files in the checkout?"
    assert static <= names, f"missing from the wheel: {sorted(static - names)}"
    modules = {
        p.relative_to(ROOT).as_posix()
        for package in ("gateway", "publisher")
        for p in (ROOT / package).rglob("*.py")
    }
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"

    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keep the case
    parser.read_string(text)
    scripts = dict(parser["console_scripts"])
    assert {"gateway", "kev-publish"} <= scripts.keys()
    return scripts


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _wait_for(
    what: str, check: Callable[[], bool], deadline: float, *procs: subprocess.Popen[bytes]
) -> None:
    while True:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args!r} exited {proc.returncode} before {what}"
        try:
            if check():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _clients(base: str) -> float:
    status, body = _get(f"{base}/metrics")
    match = re.search(rb"^kev_clients (\S+)$", body, re.MULTILINE)
    assert status == 200 and match, body[:500]
    return float(match.group(1))


def _help_all(venv: Venv, commands: dict[str, list[list[str]]]) -> int:
    runs: list[Sequence[str]] = [
        [script, *path, "--help"] for script, paths in commands.items() for path in paths
    ]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda argv: venv.run(*argv), runs))
    for argv, proc in zip(runs, results, strict=True):
        assert proc.stdout.startswith("usage: "), (argv, proc.stdout[:200])
    return len(runs)


def test_wheel_installs_alone_and_every_command_runs(tmp_path: Path) -> None:
    started = time.monotonic()
    wheel = _build_wheel(tmp_path)
    scripts = _check_contents(wheel)

    work = tmp_path / "work"
    work.mkdir()
    venv = Venv(tmp_path / "venv", work)
    subprocess.run([sys.executable, "-m", "venv", str(venv.path)], check=True, timeout=120)
    # Its dependencies resolved from the wheel's own metadata, held to the locked versions
    # (the lanes --latest and --lowest try the rest of the ranges): the suite stays the same
    # from one day to the next.
    constraints = tmp_path / "constraints.txt"
    locked = locked_versions(ROOT / "requirements" / "run.txt")
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in locked.items()))
    venv.run("python", "-m", "pip", "install", "--quiet", "-c", str(constraints), str(wheel),
             timeout=240)  # fmt: skip
    venv.run("python", "-m", "pip", "check")

    # The checkout is nowhere on this interpreter's path: devtools (not shipped) is missing,
    # and gateway/publisher come from the venv.
    proc = venv.run("python", "-c", "import devtools", ok=False)
    assert proc.returncode != 0 and "No module named 'devtools'" in proc.stderr, proc.stderr
    where = venv.run("python", "-c", "import gateway, publisher; print(gateway.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv.path)

    # --help of every command and subcommand of every console script the wheel ships
    for name in scripts:
        assert (venv.bin / name).exists(), f"{name} is not installed"
    commands = json.loads(venv.run("python", "-c", _COMMAND_PATHS, DISTRIBUTION).stdout)
    assert commands.keys() == scripts.keys(), "a console script without an argparse parser?"
    paths = {(script, *path) for script, ps in commands.items() for path in ps}
    assert {("gateway", "serve"), ("gateway", "sign"), ("gateway", "tail")} <= paths
    assert {("gateway", "user", "add"), ("gateway", "keypair", "add")} <= paths
    assert {("kev-publish", "emit"), ("kev-publish", "demo")} <= paths
    helped = _help_all(venv, commands)

    procs: list[subprocess.Popen[bytes]] = []
    stream: http.client.HTTPResponse | None = None
    log = (tmp_path / "serve.log").open("wb")
    with PrivateRedis() as redis_server:
        url = redis_server.url
        try:
            # identities
            user = venv.run("gateway", "user", "add", "alice", "--role", "user", "--domain",
                            "default", "--redis-url", url, "--json")  # fmt: skip
            assert json.loads(user.stdout)["user_id"] == "alice"
            added = venv.run("gateway", "keypair", "add", "--user", "alice", "--redis-url", url,
                             "--json")  # fmt: skip
            keypair = json.loads(added.stdout)
            ak, sk = keypair["access_key"], keypair["secret_key"]
            listed = venv.run("gateway", "keypair", "list", "--redis-url", url, "--json")
            assert ak in listed.stdout

            # serve until ready
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            server = venv.start(
                "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--redis-url", url, "--drain-deadline", str(DRAIN_DEADLINE), out=log,
            )  # fmt: skip
            procs.append(server)
            deadline = time.monotonic() + 30
            _wait_for("/ready", lambda: _get(f"{base}/ready")[0] == 200, deadline, server)
            status, script = _get(f"{base}/static/dashboard.js")
            assert status == 200
            assert script == (ROOT / "gateway/http/static/dashboard.js").read_bytes()

            # a stream opened with the headers `gateway sign` prints
            path = "/stream/kernel/_/events?sessionId=*"
            signed = venv.run("gateway", "sign", "--access-key", ak, "--secret-key", sk,
                              "--host", f"127.0.0.1:{port}", "--path", path)  # fmt: skip
            headers = dict(line.split(": ", 1) for line in signed.stdout.splitlines())
            assert "Authorization" in headers, signed.stdout
            request = urllib.request.Request(base + path, headers=headers)
            stream = urllib.request.urlopen(request, timeout=10)
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")

            # tail, then one event
            tail = venv.start("gateway", "tail", "--url", base, "--access-key", ak,
                              "--secret-key", sk, "--count", "1", "--json",
                              out=subprocess.PIPE)  # fmt: skip
            procs.append(tail)
            deadline = time.monotonic() + 20
            _wait_for("tail's stream", lambda: _clients(base) == 2, deadline, server, tail)
            emitted = venv.run("kev-publish", "emit", "--redis-url", url, "--name",
                               "kernel_started", "--session-id", "wheel-1",
                               "--owner-access-key", ak, "--owner-user-id", "alice")  # fmt: skip
            stream_id = emitted.stdout.strip()
            out, err = tail.communicate(timeout=20)
            assert tail.returncode == 0, err.decode()
            (line,) = out.decode().splitlines()
            event = json.loads(line)
            assert (event["id"], event["event"], event["sessionId"]) == (
                stream_id,
                "kernel_started",
                "wheel-1",
            ), event
            seen = b""
            while f"id: {stream_id}".encode() not in seen:  # bounded by the socket timeout
                chunk = stream.readline()
                assert chunk, f"the signed stream ended early: {seen!r}"
                seen += chunk

            # the simulator, briefly
            demo = venv.run("kev-publish", "demo", "--redis-url", url, "--duration", "1",
                            "--rate", "50", "--seed", "7")  # fmt: skip
            assert "published" in demo.stdout, demo.stdout + demo.stderr

            # SIGTERM: the open stream (an SDK's: signed, no id) ends, handed off (no
            # server_close: the SDK reconnects by itself); the server exits 0 in time
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=DRAIN_DEADLINE + 5)
            assert code == 0, (tmp_path / "serve.log").read_text()
            rest = stream.read()
            assert b"event: server_close" not in rest, rest[-500:]
        finally:
            if stream is not None:
                stream.close()
            log.close()
            for child in procs:  # by PID, whatever failed above
                if child.poll() is None:
                    child.kill()
                    child.wait(timeout=10)

    elapsed = time.monotonic() - started
    print(f"wheel test: {helped} --help runs, {elapsed:.1f} s")


def test_the_image_build_installs_exactly_the_lock(tmp_path: Path) -> None:
    """The Dockerfile's build stage, run here (no Docker engine: the same commands in a new
    virtualenv, on a copy of what its COPY lines take): the image gets requirements/run.txt,
    hash-checked, and nothing else but the gateway; its server starts."""
    steps = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    build = steps.split("\nFROM ")[1]  # the first stage, after its FROM line
    src = tmp_path / "src"
    src.mkdir()
    for line in build.splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            for item in words[1:-1]:
                source = ROOT / item
                target = src / (words[-1] if words[-1] not in ("./", ".") else item)
                if source.is_dir():
                    shutil.copytree(source, target, ignore=_NOT_SOURCE)
                else:
                    shutil.copy(source, target if words[-1] not in ("./", ".") else src / item)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    runs = [line.strip()[4:] for line in build.splitlines() if line.strip().startswith("RUN ")]
    install = [run for run in runs if "pip install" in run]
    assert install, "no pip install in the build stage"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    for run in install:
        command = run.replace("/opt/venv", str(venv))
        proc = subprocess.run(
            ["bash", "-c", command], cwd=src, env=env, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True,
        check=True, timeout=60,
    ).stdout  # fmt: skip
    locked = locked_versions(ROOT / "requirements" / "run.txt")
    locked.pop("setuptools")  # the build backend: pip freeze leaves it out
    assert frozen_versions(frozen) == locked
    helped = subprocess.run(
        [str(venv / "bin" / "gateway"), "serve", "--help"], capture_output=True, text=True,
        check=False, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert helped.returncode == 0 and helped.stdout.startswith("usage: ")
