"""The official Backend.AI client SDK (PyPI ``backend.ai-client``), unmodified, one generation
per virtualenv, run only in subprocesses: its CLI (``backend.ai events``) and a short script of
its Python API (:data:`LISTEN`), with a scratch working directory (it reads a ``.env`` from
there) and the ``BACKEND_*`` environment. Nothing in the test process imports the SDK.

Each generation's venv is cached in the checkout at ``.venv-sdk/<release>/`` (ignored by git
and docker), built from the interpreter that generation needs and its lock file
``tests/sdk/<release>.txt`` (every package pinned, installed with ``--no-deps``: exactly what
was tested), and rebuilt when either changes. An interpreter that is missing (no
``python3.X`` on ``PATH``, under pyenv or known to uv) skips that generation's tests with the
reason; pip unable to reach the package index skips too; any other install failure fails.
Concurrent runs take turns on an exclusive lock of the venv's directory (flock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import pytest

from tests.support.identities import Person

__all__ = [
    "GENERATIONS",
    "LISTEN",
    "Child",
    "Client",
    "Generation",
    "Lines",
    "Sdk",
    "build_sdk",
    "find_python",
]

ROOT: Final = Path(__file__).resolve().parents[2]  # the checkout
LOCKS: Final = ROOT / "tests" / "sdk"
VENVS: Final = ROOT / ".venv-sdk"
#: pip's words when it could not reach the package index (as opposed to a bad pin)
_UNREACHABLE: Final = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
)


@dataclass(frozen=True)
class Generation:
    """One SDK release and the Python it runs on (the newest it installs on)."""

    release: str
    python: str
    #: the API version it negotiates against the gateway's default (``api_version=auto``)
    speaks: str

    @property
    def lock(self) -> Path:
        return LOCKS / f"{self.release}.txt"

    @property
    def major_minor(self) -> tuple[int, int]:
        year, month, _ = self.release.split(".")
        return int(year), int(month)

    @property
    def v4(self) -> bool:
        """It streams ``/stream/kernel/_/events`` (v4 names and data)."""
        return int(self.speaks[1:].split(".")[0]) < 6

    @property
    def reconnects(self) -> bool:
        """It reconnects by itself after a stream that ends without ``server_close`` (20.03
        on; 19.09's CLI ends with the stream)."""
        return self.major_minor >= (20, 3)


#: the generations the suite runs (issue 23: at least these four), oldest first
GENERATIONS: Final = (
    Generation("19.9.10", "3.8", "v4.20190615"),
    Generation("22.3.2", "3.8", "v6.20220315"),
    Generation("23.9.10", "3.11", "v7.20230615"),
    Generation("26.9.6", "3.13", "v9.20250722"),
)


def find_python(version: str) -> str | None:
    """A working interpreter of ``version`` (``"3.8"``): ``python3.8`` on ``PATH`` (a pyenv
    shim without that version selected does not count), the newest pyenv build of it, or one
    uv knows; None when there is none."""
    candidates: list[str] = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [
        str(build / "bin" / f"python{version}")
        for build in sorted(pyenv.glob(f"{version}.*"), reverse=True)
    ]
    uv = shutil.which("uv")
    if uv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(
                [uv, "python", "find", "--no-python-downloads", version],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if proc.returncode == 0 and proc.stdout.strip():
                candidates.append(proc.stdout.strip())
    want = f"{version}."
    for candidate in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(
                [candidate, "-c", "import sys, venv; print('%d.%d.' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env=clean_env(),
            )
            if proc.returncode == 0 and proc.stdout.strip() == want:
                return candidate
    return None


def clean_env() -> dict[str, str]:
    """This environment without anything that would point a child at the checkout, its
    venv, the gateway's settings or some Backend.AI endpoint."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "GATEWAY_", "KEV_", "BACKEND_", "SORNA_", "PIP_REQUIRE"))
        and k != "VIRTUAL_ENV"
    }


@dataclass(frozen=True)
class Sdk:
    generation: Generation
    venv: Path

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "backend.ai")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def _stamp(generation: Generation, python: str) -> str:
    """What a venv must have been built from: the lock file's text and the interpreter."""
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    return f"{python} {version}\n{generation.lock.read_text()}"


def _usable(venv: Path, stamp: str) -> bool:
    stamp_file = venv / "kev-sdk-stamp.txt"
    if not stamp_file.is_file() or stamp_file.read_text() != stamp:
        return False
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ai.backend.client.session"],
        capture_output=True,
        timeout=60,
        check=False,
        env=clean_env(),
    )
    return probe.returncode == 0 and (venv / "bin" / "backend.ai").is_file()


def _build(venv: Path, python: str, generation: Generation, stamp: str) -> None:
    (venv / "kev-sdk-stamp.txt").unlink(missing_ok=True)
    subprocess.run(
        [python, "-m", "venv", "--clear", str(venv)],
        check=True,
        timeout=120,
        env=clean_env(),
    )
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input", "--no-deps"]
    pip += ["--disable-pip-version-check", "--retries", "2", "--timeout", "20"]
    proc = subprocess.run(
        [*pip, "-r", str(generation.lock)],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        env=clean_env(),
    )
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        tail = "\n".join(output.strip().splitlines()[-6:])
        if any(marker in output for marker in _UNREACHABLE):
            pytest.skip(
                f"pip cannot reach the package index to install {generation.lock.name} "
                f"(needed once; then {venv} is cached):\n{tail}"
            )
        pytest.fail(f"pip install -r {generation.lock} failed:\n{output[-3000:]}")
    (venv / "kev-sdk-stamp.txt").write_text(stamp)


def build_sdk(generation: Generation) -> Sdk:
    """The generation's venv, built if it is missing or stale (skips without its Python)."""
    python = find_python(generation.python)
    if python is None:
        pytest.skip(
            f"backend.ai-client {generation.release} needs Python {generation.python}, and "
            f"there is none here (python{generation.python} on PATH, pyenv or uv)"
        )
    started = time.monotonic()
    venv = VENVS / generation.release
    venv.mkdir(parents=True, exist_ok=True)
    fd = os.open(venv, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        stamp = _stamp(generation, python)
        built = not _usable(venv, stamp)
        if built:
            _build(venv, python, generation, stamp)
    finally:
        os.close(fd)  # releases the lock
    how = "built" if built else "cached"
    print(f"SDK {generation.release} venv {venv}: {how} in {time.monotonic() - started:.1f} s")
    return Sdk(generation, venv)


# -- running it -----------------------------------------------------------------------------------


class Lines:
    """A child's output, read line by line in a thread of its own (it ends when the pipe
    closes), so the test waits for lines with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                with self._cond:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                    self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, check: Callable[[list[str]], bool], timeout: float, what: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.closed or check(self.lines), timeout)
            if not check(self.lines):
                state = "ended" if self.closed else f"timed out after {timeout}s"
                raise AssertionError(f"{state} waiting for {what}; got:\n" + self.text)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    out: Lines
    err: Lines

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.out.join(5)
        self.err.join(5)
        return code

    def describe(self) -> str:
        return f"stdout:\n{self.out.text}\nstderr:\n{self.err.text}"


@dataclass
class Client:
    """Runs the SDK (its CLI or a script of its API) as ``person`` against ``base_url``."""

    sdk: Sdk
    workdir: Path
    base_url: str

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The SDK loads the first .env from its working directory upwards (overriding the
        # environment): an empty one here stops the search.
        (self.workdir / ".env").write_text("")

    def env(self, person: Person, secret: str | None = None) -> dict[str, str]:
        env = clean_env()
        env.update(
            HOME=str(self.workdir),
            PYTHONUTF8="1",
            PYTHONUNBUFFERED="1",  # print() into a pipe: each line as it comes
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
            BACKEND_ENDPOINT=self.base_url,
            BACKEND_ENDPOINT_TYPE="api",
            BACKEND_ACCESS_KEY=person.access_key,
            BACKEND_SECRET_KEY=person.secret_key if secret is None else secret,
        )
        return env

    @contextlib.contextmanager
    def start(
        self, argv: Sequence[str], person: Person, secret: str | None = None
    ) -> Iterator[Child]:
        """The child, stopped by its PID when the block ends, whatever happened in it."""
        proc = subprocess.Popen(
            list(argv),
            cwd=self.workdir,
            env=self.env(person, secret),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        child = Child(proc, Lines(proc.stdout), Lines(proc.stderr))
        try:
            yield child
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            child.out.join(5)
            child.err.join(5)

    def events_cli(self, session: str, *, owner: str | None = None) -> list[str]:
        argv = [self.sdk.cli, "events", session]
        return argv + (["--owner", owner] if owner else [])

    def listen_script(self, **ask: Any) -> list[str]:
        return [self.sdk.python, "-c", LISTEN, json.dumps(ask)]


#: The SDK's Python API, run in its venv, as each generation spells it (19.09:
#: ``session.Kernel(name).stream_events()``, events as dicts from ``fetch_events()``; 20.03 on:
#: ``session.ComputeSession(name).listen_events()``, events as ``SSEMessage``): ``argv[1]`` is
#: JSON ``{"session", "version" (null: negotiate), "until" {scope: the event that ends that
#: listener}, "timeout"}``. Prints one JSON object per line: ``api_version`` (null before
#: 20.03: no negotiation), ``ready`` once every listener's response has begun, each event
#: (``scope``, ``event``, ``id``, ``data``), ``warnings``, or ``error``. Scopes other than
#: ``*`` need API v6.
LISTEN: Final = """\
import asyncio, contextlib, json, sys, warnings
from ai.backend.client.config import APIConfig
from ai.backend.client.exceptions import BackendAPIError
from ai.backend.client.session import AsyncSession

ask = json.loads(sys.argv[1])

def emit(**fields):
    print(json.dumps(fields), flush=True)

def field(ev, name):
    return ev[name] if isinstance(ev, dict) else getattr(ev, name)

async def drain(scope, response, until):
    events = response.fetch_events() if hasattr(response, "fetch_events") else response
    async for ev in events:
        name = field(ev, "event")
        emit(scope=scope, event=name, id=field(ev, "id"), data=json.loads(field(ev, "data")))
        if name in (until, "server_close"):
            return

async def main():
    if ask["version"]:
        session = AsyncSession(config=APIConfig(version=ask["version"]), proxy_mode=True)
    else:
        session = AsyncSession()
    async with session as api:
        version = getattr(api, "api_version", None)
        emit(api_version=list(version) if version else None)
        compute = getattr(api, "ComputeSession", None) or api.Kernel
        compute = compute(ask["session"])
        async with contextlib.AsyncExitStack() as stack:
            responses = {}
            for scope in ask["until"]:
                if not hasattr(compute, "listen_events"):
                    listening = compute.stream_events()
                elif scope == "*":
                    listening = compute.listen_events()
                else:
                    listening = compute.listen_events(scope=scope)
                responses[scope] = await stack.enter_async_context(listening)
            emit(ready=True)
            await asyncio.gather(
                *(drain(s, r, ask["until"][s]) for s, r in responses.items())
            )

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        asyncio.run(asyncio.wait_for(main(), ask["timeout"]))
    except BackendAPIError as exc:
        emit(error={"status": exc.status, "reason": exc.reason, "data": exc.data})
emit(warnings=[f"{w.category.__name__}: {w.message}" for w in caught])
"""
