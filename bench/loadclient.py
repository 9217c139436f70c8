"""The C load client (``loadclient.c`` + ``sse.c``): build it, hand it signed requests, drive it.

The client is cheaper per delivery than the gateway by a wide margin (one epoll loop, one
``read`` per readable socket, a byte scan for ``"reason":"t=``), so what the bench measures is
the gateway. It runs as its own process; this module talks to it over a pipe, one command
line and one answer line at a time, each with a timeout.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from gateway.identity.signing import signed_headers

__all__ = ["BUILD_DIR", "LoadClient", "Request", "build", "stream_request"]

HERE: Final = Path(__file__).resolve().parent
SOURCES: Final = (HERE / "loadclient.c", HERE / "sse.c")
HEADERS: Final = (HERE / "sse.h",)
BUILD_DIR: Final = HERE / "build"
BINARY: Final = BUILD_DIR / "loadclient"
CFLAGS: Final = ("-O2", "-Wall", "-Wextra", "-std=gnu11")


def build() -> Path:
    """Compile ``loadclient.c`` and ``sse.c`` into ``bench/build/`` when the binary is missing
    or stale; a compiler warning is an error."""
    newest = max(p.stat().st_mtime for p in (*SOURCES, *HEADERS))
    if BINARY.exists() and BINARY.stat().st_mtime >= newest:
        return BINARY
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("the bench needs gcc (or cc) to build bench/loadclient.c")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [gcc, *CFLAGS, "-o", str(BINARY), *map(str, SOURCES)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or result.stderr.strip():
        BINARY.unlink(missing_ok=True)
        raise RuntimeError(f"building the load client failed or warned:\n{result.stderr}")
    return BINARY


@dataclass(frozen=True, slots=True)
class Request:
    port: int
    stall: bool
    data: bytes


def stream_request(port: int, target: str, access_key: str, secret_key: str) -> bytes:
    """A signed ``GET`` of the stream, exactly as the client will send it."""
    host = f"127.0.0.1:{port}"
    headers = signed_headers("GET", target, host, access_key, secret_key)
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Accept: text/event-stream"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class LoadClient:
    """One ``loadclient`` process with its connections; a context manager that always
    stops the process (quit, then SIGTERM, then SIGKILL)."""

    def __init__(
        self, requests: list[Request], workdir: Path, *, max_seconds: float, stall_rcvbuf: int
    ) -> None:
        self.requests = requests
        self.workdir = workdir
        self.max_seconds = max_seconds
        self.stall_rcvbuf = stall_rcvbuf
        self.out = workdir / "client.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def __enter__(self) -> LoadClient:
        binary = build()
        self.workdir.mkdir(parents=True, exist_ok=True)
        req_file = self.workdir / "requests.bin"
        with req_file.open("wb") as f:
            f.write(f"{len(self.requests)}\n".encode())
            for r in self.requests:
                f.write(f"{r.port} {int(r.stall)} {len(r.data)}\n".encode())
                f.write(r.data)
        self.out.unlink(missing_ok=True)
        # fmt: off
        args = [
            str(binary), str(req_file), str(self.out),
            "--max-seconds", str(self.max_seconds),
            "--inflight", "256",
            "--stall-rcvbuf", str(self.stall_rcvbuf),
        ]
        # fmt: on
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"loadclient said nothing within {timeout}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"loadclient exited ({self.proc.poll()})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def _command(self, command: str, answer: str, timeout: float = 30.0) -> list[str]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()
        while True:
            words = self._line(timeout).split()
            if words and words[0] == answer:
                return words[1:]

    def wait_ready(self, timeout: float) -> tuple[int, int]:
        """Wait until every connection is streaming or failed: (connected, failed)."""
        while True:
            words = self._line(timeout).split()
            if words and words[0] == "ready":
                return int(words[1]), int(words[2])

    def stat(self) -> tuple[int, int, int]:
        """(events since reset, streaming connections, ended connections)."""
        events, streaming, ended = self._command("stat", "stat")
        return int(events), int(streaming), int(ended)

    def reset(self) -> None:
        self._command("reset", "reset")

    def stall(self) -> int:
        return int(self._command("stall", "stalled")[0])

    def dump(self) -> dict[str, Any]:
        self._command("dump", "dumped", timeout=60)
        summary: dict[str, Any] = json.loads(self.out.read_text())
        return summary

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
                proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
