"""Where a gateway's CPU goes during a scenario: ``py-spy record --native`` (raw, collapsed
stacks) on the gateway process over the measured window, summarised as the top functions by
own time (the leaf frame of a sample: a syscall such as ``write`` or the C event loop get
their own lines), by own time with native time charged to the innermost Python frame, and by
total time (anywhere on the stack).

py-spy samples only while the thread is on CPU (idle samples are left out), so the shares are
of busy time. Native unwinding pauses the process per sample: the profiled run's latency
figures are not comparable, which is why it is a run of its own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

__all__ = ["available", "pyspy_profiler", "summarise"]

RATE: Final = 200  # samples per second
#: native frames too: syscalls and the C event loop get their own lines
ARGS: Final = ("--native",)
_FRAME: Final = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def available() -> str | None:
    """The py-spy binary, if installed (``pip install py-spy``)."""
    beside = Path(sys.executable).parent / "py-spy"  # the virtualenv's, when not on PATH
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def _function(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({_short(m['file'])})"


def _is_python(frame: str) -> bool:
    m = _FRAME.match(frame.strip())
    return m is not None and m["file"].endswith(".py")


def summarise(raw: str, top: int = 10) -> dict[str, Any]:
    """Top functions from py-spy's raw (collapsed) output: by own time counting native frames
    (syscalls, the C event loop), by own time charging native time to the innermost Python
    frame, and by total time."""
    own: Counter[str] = Counter()
    own_python: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        names = [_function(f) for f in frames]
        samples += count
        own[names[-1]] += count
        python = [n for f, n in zip(frames, names, strict=True) if _is_python(f)]
        own_python[python[-1] if python else names[-1]] += count
        for name in set(names):
            total[name] += count

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "share": n / samples if samples else 0.0}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": samples,
        "rate_hz": RATE,
        "native": "--native" in ARGS,
        "top_own": rows(own),
        "top_own_python": rows(own_python),
        "top_total": rows(total),
    }


def pyspy_profiler(out: Path) -> Callable[[list[int], float], Callable[[], dict[str, Any]]]:
    """A profiler hook for :func:`bench.scenarios.run_scenario`: records the first gateway
    for the measured window, returns its summary (raw stacks kept in ``out``)."""
    binary = available()
    if binary is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")

    def start(pids: list[int], seconds: float) -> Callable[[], dict[str, Any]]:
        out.parent.mkdir(parents=True, exist_ok=True)
        # fmt: off
        args = [
            binary, "record", "--pid", str(pids[0]), "--duration", str(max(1, int(seconds))),
            "--rate", str(RATE), "--format", "raw", "--output", str(out), *ARGS,
        ]
        # fmt: on
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def stop() -> dict[str, Any]:
            try:
                _, err = proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=10)
                return {"error": "py-spy did not finish"}
            if proc.returncode != 0 or not out.exists():
                return {"error": err.decode(errors="replace")[-500:]}
            summary = summarise(out.read_text())
            summary["raw"] = str(out)
            return summary

        return stop

    return start
