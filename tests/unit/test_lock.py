"""The lock is what is installed, and agrees with pyproject.toml.

* The virtualenv this suite runs in holds exactly requirements/lock.txt (for this Python and
  platform): nothing more, nothing less, no other version. ``pip`` itself (the interpreter's)
  and the project (editable, from the checkout) aside.
* Every requirement of pyproject.toml (the dependencies, the test and bench extras) and of
  requirements/build.in is met by the locked version: a change to pyproject.toml without
  ``scripts/lock`` fails here.
* requirements/run.txt is the running part of the same resolution (same versions), and
  neither file names a package index or any other address.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.lockfile import locked_versions

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
RUN = ROOT / "requirements" / "run.txt"
PROJECT = "kernel-event-gateway"


def test_the_virtualenv_holds_exactly_the_lock() -> None:
    locked = locked_versions(LOCK)
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()
    }
    installed.pop("pip", None)
    installed.pop(PROJECT, None)
    missing = {n: str(v) for n, v in locked.items() if n not in installed}
    extra = {n: str(v) for n, v in installed.items() if n not in locked}
    other = {n: f"{installed[n]} (locked {v})" for n, v in locked.items()
             if n in installed and installed[n] != v}  # fmt: skip
    assert not (missing or extra or other), (
        "the virtualenv is not the lock: run scripts/install "
        f"(missing {missing}, not locked {extra}, other versions {other})"
    )


def test_the_lock_meets_every_requirement_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("test", "bench", "publisher"):
        wanted += project["optional-dependencies"][extra]
    build = (ROOT / "requirements" / "build.in").read_text().splitlines()
    wanted += [line for line in build if line.strip() and not line.startswith("#")]
    locked = locked_versions(LOCK)
    unmet = []
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        if name not in locked or locked[name] not in requirement.specifier:
            unmet.append(f"{text} (locked: {locked.get(name)})")
    assert not unmet, f"pyproject.toml changed without scripts/lock: {unmet}"


def test_the_run_lock_is_the_same_resolution_and_no_file_names_an_address() -> None:
    full, run = locked_versions(LOCK), locked_versions(RUN)
    assert run and all(full.get(name) == version for name, version in run.items()), {
        name: (str(version), str(full.get(name))) for name, version in run.items()
    }
    for path in (LOCK, RUN):
        text = path.read_text()
        assert "://" not in text and "--index-url" not in text and "--find-links" not in text
