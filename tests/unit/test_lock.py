"""The lock is what is installed, and agrees with pyproject.toml.

* The virtualenv this suite runs in holds exactly requirements/lock.txt (for this Python and
  platform): nothing more, nothing less, no other version. ``pip`` itself (the interpreter's)
  and the project (editable, from the checkout) aside.
* The lock is exactly what pyproject.toml (its dependencies, every extra) and
  requirements/build.in need, followed through each package's own requirements (from the
  installed packages' metadata): every package needed is locked at a version its requirers
  accept, and nothing else is locked; run.txt likewise for the dependencies alone. A change
  to pyproject.toml without ``scripts/lock`` fails here: a new or removed dependency, a new
  extra of one (``httpx[http2]``), a new group of extras, a raised bound.
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


def _needed(requirements: list[str]) -> dict[str, list[Requirement]]:
    """Every package ``requirements`` need here, followed through the installed packages'
    own requirements (their extras included), with each requirement naming it."""
    needed: dict[str, list[Requirement]] = {}
    queue = [(Requirement(text), "") for text in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        requirement, extra = queue.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        needed.setdefault(name, []).append(requirement)
        if (name, frozenset(requirement.extras)) in seen or name == canonicalize_name(PROJECT):
            continue
        seen.add((name, frozenset(requirement.extras)))
        try:
            declared = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed: the check against the lock says so
        for text in declared:
            for wanted_extra in ("", *requirement.extras):
                queue.append((Requirement(text), wanted_extra))
    return needed


def _project() -> tuple[list[str], list[str]]:
    """pyproject.toml's runtime requirements, and those of every extra and of the build."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = list(project["dependencies"])
    build = (ROOT / "requirements" / "build.in").read_text().splitlines()
    build = [line for line in build if line.strip() and not line.startswith("#")]
    extras = [text for group in project["optional-dependencies"].values() for text in group]
    return runtime + build, runtime + build + extras


def _mismatches(locked: dict[str, Version], needed: dict[str, list[Requirement]]) -> list[str]:
    problems = []
    for name, requirers in sorted(needed.items()):
        if name == canonicalize_name(PROJECT):
            continue
        if name not in locked:
            problems.append(f"{name} is needed ({requirers[0]}) and not locked")
            continue
        for requirement in requirers:
            if locked[name] not in requirement.specifier:
                problems.append(f"{name}=={locked[name]} does not meet {requirement}")
    stale = set(locked) - set(needed)
    problems += [f"{name} is locked and nothing needs it" for name in sorted(stale)]
    return problems


def test_the_lock_is_exactly_what_pyproject_needs() -> None:
    runtime, everything = _project()
    problems = _mismatches(locked_versions(LOCK), _needed(everything))
    problems += [f"run.txt: {p}" for p in _mismatches(locked_versions(RUN), _needed(runtime))]
    assert not problems, "pyproject.toml changed without scripts/lock:\n" + "\n".join(problems)


def test_the_run_lock_is_the_same_resolution_and_no_file_names_an_address() -> None:
    full, run = locked_versions(LOCK), locked_versions(RUN)
    assert run and all(full.get(name) == version for name, version in run.items()), {
        name: (str(version), str(full.get(name))) for name, version in run.items()
    }
    for path in (LOCK, RUN):
        text = path.read_text()
        assert "://" not in text and "--index-url" not in text and "--find-links" not in text
