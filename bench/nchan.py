"""nchan, the fan-out bench's peer: the same streams, events and measurements, another server.

nchan (https://nchan.io, an nginx module in C; Debian's ``libnginx-mod-nchan``, which
``scripts/install --with-bench`` installs) in its Redis mode, in one nginx worker: the same job
as one gateway process, SSE fan-out of events that arrive through Redis. :func:`nchan_servers`
writes an nginx configuration into a temporary directory (:func:`render_config`: loopback
only, a free port, ``worker_processes 1``, the module loaded, an upstream naming the bench's
private redis-server), starts nginx in the foreground and stops it by its pid.

One nchan channel per session id: a stream of the bench's broadcast scenarios subscribes to
the one session every event names (``GET /sub/s00000``, ``Accept: text/event-stream``), a
filtered scenario's stream to its own session (``/sub/s<i>``), so each client is owed what
the gateway owes it. :class:`NchanSink` is :class:`bench.ratepub.RatePublisher`'s sink for
nchan: one HTTP ``POST /pub/<session id>`` per event (from a few connections at once), its
body the ``data`` the
gateway's v4 stream sends for it (``{"sessionId", "ownerAccessKey", "reason"}``: the publish
time travels in ``reason`` as ``t=<unix seconds>``, which the load client scans for) and the
event's name as the SSE ``event:`` (``X-EventSource-Event``), so a frame is the gateway's
within a few bytes (nchan's ``id:`` is ``<unix time>:<n>``).

What is read off it, as off a gateway (:class:`bench.procs.Server`): CPU and RSS of the nginx
master and its worker together; it has no ``/metrics``, so no evictions are counted.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import psutil

from devtools.localredis import free_port
from publisher import KernelEvent

__all__ = [
    "PACKAGE",
    "Nchan",
    "NchanSink",
    "event_data",
    "find_module",
    "missing",
    "nchan_servers",
    "render_config",
    "subscribe_request",
    "version",
]

PACKAGE: Final = "libnginx-mod-nchan"
MODULE: Final = "ngx_nchan_module.so"
#: where distributions put nginx's dynamic modules (``nginx -V``'s ``--modules-path`` first)
MODULE_DIRS: Final = ("/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/etc/nginx/modules")
SUB: Final = "/sub/"
PUB: Final = "/pub/"
#: a channel no scenario uses: the readiness probe publishes to it
PROBE_CHANNEL: Final = "bench-ready"
_CHANNEL: Final = re.compile(r"[A-Za-z0-9_-]+")


def _nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def find_module() -> tuple[str, Path] | str:
    """(the nginx binary, nchan's module file), or why there is none."""
    nginx = _nginx()
    if nginx is None:
        return "nginx is not installed"
    dirs = list(MODULE_DIRS)
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False)
    found = re.search(r"--modules-path=(\S+)", built.stderr + built.stdout)
    if found:
        dirs.insert(0, found[1])
    for folder in dirs:
        module = Path(folder) / MODULE
        if module.is_file():
            return nginx, module
    return f"nchan is not installed (no {MODULE} in {', '.join(dict.fromkeys(dirs))})"


def missing() -> str | None:
    """Why the bench cannot run nchan, with what to do about it; None when it can."""
    found = find_module()
    if isinstance(found, str):
        return f"{found}: `scripts/install --with-bench` installs {PACKAGE} (as root, Debian)"
    return None


def version() -> str:
    """The installed package's version (``dpkg-query``, without the epoch), or ``?``."""
    if shutil.which("dpkg-query") is None:
        return "?"
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    found = done.stdout.strip().partition(":")
    version = found[2] or found[0]
    return version if done.returncode == 0 and version else "?"


def render_config(
    *,
    prefix: Path,
    module: Path,
    port: int,
    redis_host: str,
    redis_port: int,
    nofile: int,
    user: str | None = None,
) -> str:
    """nginx.conf for nchan on ``127.0.0.1:port``, one worker, its messages through the Redis
    at ``redis_host:redis_port``; pid and temporary files under ``prefix``. ``user``: the
    workers' user (as root nginx would run them as ``nobody``, who cannot enter ``prefix``)."""
    if not 0 < port < 65536 or not 0 < redis_port < 65536:
        raise ValueError(f"ports out of range: {port}, {redis_port}")
    for name, value in (("prefix", str(prefix)), ("module", str(module))):
        if re.search(r"[\s;{}'\"]", value):
            raise ValueError(f"{name} {value!r}: nginx would not read it as one word")
    if not re.fullmatch(r"[\w.:-]+", redis_host):
        raise ValueError(f"redis host {redis_host!r}")
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
# nchan, the fan-out bench's peer (bench/nchan.py): loopback only, one worker, Redis mode
load_module {module};
{f"user {user};" if user else ""}
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections {nofile};
}}
http {{
    access_log off;
{temp}
    upstream bench_redis {{
        nchan_redis_server redis://{redis_host}:{redis_port};
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /ready {{
            return 200 "ready\\n";
        }}
        # one channel per session id: the broadcast streams share one, a filtered stream
        # has its own; a new subscriber gets only what is published after it came
        location ~ ^{SUB}([A-Za-z0-9_-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
            nchan_redis_pass bench_redis;
        }}
        location ~ ^{PUB}([A-Za-z0-9_-]+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_redis_pass bench_redis;
        }}
    }}
}}
"""


def subscribe_request(port: int, channel: str) -> bytes:
    """The raw ``GET`` of an EventSource subscription to ``channel``, as the load client sends
    it."""
    if not _CHANNEL.fullmatch(channel):
        raise ValueError(f"channel {channel!r}")
    lines = [
        f"GET {SUB}{channel} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: text/event-stream",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def event_data(event: KernelEvent) -> bytes:
    """The SSE ``data`` of ``event`` as the gateway's v4 stream sends it (its ``_Data``)."""
    data = {
        "sessionId": event.session_id,
        "ownerAccessKey": event.owner_access_key,
        "reason": event.reason,
    }
    return json.dumps(data, separators=(",", ":")).encode()


class NchanSink:
    """:class:`bench.ratepub.RatePublisher`'s sink for nchan: a POST per event, each checked
    (nchan answers 201, or 202 when nobody listens). The calls only queue the request;
    ``connections`` threads, each on a keep-alive connection of its own, send them, as that
    many publishers would. nchan answers a publish once it has been through Redis, from the
    nginx worker that also writes to every stream: one publisher waiting for each answer
    falls below the scenario's rate exactly when nchan is busiest (at 2,000 x 100 ev/s on a
    2-core machine, one POST at a time took 5.1 s for 3 s of events, and the latency measured
    was mostly the driver's queue). The gateway's publisher does not wait for the gateway
    either: with enough connections every event reaches nchan when it is due, and what nchan
    cannot keep up with shows in its own figures, latency and delivered share.
    ``max_backlog``: the most requests that waited for a free connection (0 or 1: the rate
    was offered as due). :meth:`close` sends what is queued, then raises if any was
    refused."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", *, connections: int = 64, timeout: float = 10.0
    ) -> None:
        self._queue: queue.SimpleQueue[tuple[str, bytes, dict[str, str]] | None]
        self._queue = queue.SimpleQueue()
        self._errors: list[str] = []
        self.max_backlog = 0
        self._threads = [
            threading.Thread(
                target=self._send, args=(host, port, timeout), name=f"nchan-publisher-{n}"
            )
            for n in range(connections)
        ]
        for thread in self._threads:
            thread.start()

    def publish(self, event: KernelEvent, /) -> None:
        if self._errors:
            raise RuntimeError(f"nchan refused a publish: {self._errors[0]}")
        headers = {"Content-Type": "application/json", "X-EventSource-Event": event.name}
        self._queue.put((PUB + event.session_id, event_data(event), headers))
        self.max_backlog = max(self.max_backlog, self._queue.qsize())

    def publish_many(self, events: list[KernelEvent], /) -> None:
        for event in events:  # nchan takes one message per request
            self.publish(event)

    def _send(self, host: str, port: int, timeout: float) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            while (item := self._queue.get()) is not None:
                path, body, headers = item
                try:
                    conn.request("POST", path, body, headers)
                    resp = conn.getresponse()
                    answer = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    self._errors.append(repr(exc))
                    conn.close()  # the next request connects anew
                    continue
                if resp.status not in (201, 202):
                    self._errors.append(f"{resp.status} {answer[:200]!r}")
        finally:
            conn.close()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=60)
        if self._errors:
            raise RuntimeError(
                f"nchan refused {len(self._errors)} publish(es), the first: {self._errors[0]}"
            )


@dataclass
class Nchan:
    """One running nginx with nchan: its master process and its one worker (``ps``, which
    holds the streams and the Redis connections)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    master: psutil.Process
    ps: psutil.Process

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [self.master.pid, self.ps.pid]

    def cpu(self) -> float:
        """User + system CPU seconds so far, master and worker."""
        total = 0.0
        for proc in (self.master, self.ps):
            times = proc.cpu_times()
            total += times.user + times.system
        return total

    def user_cpu(self) -> float:
        """User CPU seconds so far, master and worker."""
        return float(sum(proc.cpu_times().user for proc in (self.master, self.ps)))

    def rss(self) -> int:
        return int(self.master.memory_info().rss + self.ps.memory_info().rss)

    def metrics(self) -> dict[str, float]:
        """nchan has no Prometheus endpoint: no counters (no evictions to count)."""
        return {}


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    """Until nginx answers and a publish goes through Redis (nchan connects to it lazily)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx (nchan) exited with {proc.returncode}: {log.read_text()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("POST", PUB + PROBE_CHANNEL, b"ready")
            resp = conn.getresponse()
            resp.read()
            if resp.status in (201, 202):
                return
            last = f"publish answered {resp.status}"
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(
        f"nchan on port {port} not ready within {timeout}s ({last}): {log.read_text()}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (nginx's fast shutdown: the master stops its worker), SIGKILL to the process
    group nginx was started in (its own) past the deadline."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def nchan_servers(redis_url: str, log_dir: Path) -> Iterator[list[Nchan]]:
    """One nginx with nchan on a free loopback port, its messages through the Redis at
    ``redis_url`` (a plain ``redis://host:port``), ready; stopped and its directory removed
    on exit. A list of one, as :func:`bench.procs.gateways` yields."""
    found = find_module()
    if isinstance(found, str):
        raise RuntimeError(found)
    nginx, module = found
    where = urlsplit(redis_url)
    if where.scheme != "redis" or where.hostname is None or where.port is None:
        raise ValueError(f"nchan needs a plain redis://host:port URL, not {redis_url!r}")
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = Path(tempfile.mkdtemp(prefix="kev-nchan-"))
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        render_config(
            prefix=prefix,
            module=module,
            port=port,
            redis_host=where.hostname,
            redis_port=where.port,
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            user="root" if os.geteuid() == 0 else None,
        )
    )
    log = log_dir / "nchan.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a worker left behind goes with it
        )
    try:
        _wait_ready(proc, port, log, timeout=20)
        master = psutil.Process(proc.pid)
        workers = master.children()
        if len(workers) != 1:
            raise RuntimeError(f"nginx (nchan) has {len(workers)} workers, not 1")
        yield [Nchan("nchan", port, proc, master, workers[0])]
    finally:
        _stop(proc)
        shutil.rmtree(prefix, ignore_errors=True)
