"""``gateway bridge`` and ``gateway sync-identities`` on a port already taken: one line naming
the port and the settings, status 1 (the newcomer review got uvicorn's exit 3)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from gateway.listen import ListenError, check_listen


def test_a_free_port_passes_and_a_taken_one_is_named() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ListenError, match=rf"port {port} is already in use.*--port"):
            check_listen("127.0.0.1", port, flags="--port")
    check_listen("127.0.0.1", port, flags="--port")  # let go: free again
    with pytest.raises(ListenError, match="not an address of this machine"):
        check_listen("192.0.2.1", 9, flags="--host")  # TEST-NET-1: no machine has it


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["bridge"], {"GATEWAY_BRIDGE_FROM_REDIS": "redis://127.0.0.1:1",
                      "GATEWAY_BRIDGE_FROM_DB": "postgresql://u@127.0.0.1:1/db"}),
        (["sync-identities"], {"GATEWAY_SYNC_FROM_DB": "postgresql://u@127.0.0.1:1/db"}),
    ],
)  # fmt: skip
def test_the_processes_say_so_in_one_line(command: list[str], env: dict[str, str]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *command, "--port", str(port)],
            env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 1, done
    (line,) = done.stderr.strip().splitlines()
    assert f"port {port} is already in use" in line and "--port/GATEWAY_" in line
