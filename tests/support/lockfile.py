"""Reading the lock files (requirements/*.txt, made by scripts/lock)."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name
from packaging.version import Version

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def locked_versions(path: Path) -> dict[str, Version]:
    """``canonical name -> version`` of the lock's entries whose markers hold here."""
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        found = _PIN.match(line)
        if found is None:
            continue
        name, version, marker = found.groups()
        if marker is None or Marker(marker).evaluate():
            pins[canonicalize_name(name)] = Version(version)
    return pins


def frozen_versions(freeze_output: str) -> dict[str, Version]:
    """``pip freeze``'s ``name==version`` lines as canonical names (other lines, such as a
    project installed from a directory, are left out)."""
    pins: dict[str, Version] = {}
    for line in freeze_output.splitlines():
        name, sep, version = line.partition("==")
        if sep and " " not in name:
            pins[canonicalize_name(name)] = Version(version)
    return pins
