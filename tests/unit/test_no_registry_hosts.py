"""No file of the repository names a package or image registry's host: installs come from
the lock through whatever index the machine is configured with, and images are named without
a registry (a Kubernetes comment once named a chart registry's host; this finds the kind)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_HOSTS = re.compile(
    r"\b(?:registry-1\.docker\.io|docker\.io|ghcr\.io|quay\.io|gcr\.io|[\w-]+\.pkg\.dev"
    r"|pypi\.org|files\.pythonhosted\.org|registry\.npmjs\.org|deb\.debian\.org"
    r"|[\w.-]+\.amazonaws\.com|[\w-]+\.azurecr\.io)\b"
)


def test_no_file_names_a_registry_host() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary fixtures
        for number, line in enumerate(text.splitlines(), 1):
            if REGISTRY_HOSTS.search(line) and path.name != "test_no_registry_hosts.py":
                found.append(f"{name.decode()}:{number}: {line.strip()[:100]}")
    assert not found, "registry hosts in the repository:\n" + "\n".join(found)
