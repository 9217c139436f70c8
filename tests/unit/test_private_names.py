"""No code of this project reaches into another library's private names, and none calls
``asyncio.wait_for``.

* A private name (``_x``) of another library can change in any release, as redis-py 8.2's did
  for this project: the one place allowed to use uvicorn's internals is
  ``gateway/http/uvicorn_internals.py``, which names the versions it was tested with and has a
  guard test. Everywhere else (the packages, devtools, bench and these tests), every access
  to a private attribute of anything but ``self``/``cls`` (``x._y``, or ``getattr(x, "_y")``)
  must be one of :data:`KNOWN`, each with the reason it is not another library's internal:
  the check cannot tell a library's object from the project's by the spelling of a name, so
  a new one is read by a person once. Imports of another package's private modules or names,
  and of uvicorn, sse-starlette or httpx-sse submodules, are flagged outright.
* ``asyncio.wait_for`` swallows a cancellation on Python 3.11 (``publisher/tasks.py``): the
  project uses ``asyncio.timeout``; the tests may use ``wait_for`` around their own awaits.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = ("gateway", "publisher", "devtools", "bench", "tests")
#: the one module allowed to use another library's internals (it has a version guard test)
ALLOWED = {Path("gateway/http/uvicorn_internals.py")}
#: libraries whose public API is their top-level package: a submodule is an internal
#: (uvicorn documents ``uvicorn.run``, ``Config`` and ``Server``; its ``supervisors`` or
#: ``protocols`` are not), so importing one is flagged like a private name
TOP_LEVEL_ONLY = ("uvicorn", "sse_starlette", "httpx_sse")
#: every access to a private attribute of an object other than ``self``/``cls``, and why it is
#: not another library's internal (by the expression as written, wherever it appears)
KNOWN: dict[str, str] = {
    "argparse._SubParsersAction": "the standard library: typeshed's name for add_subparsers()",
    "parts._replace": "the standard library: a named tuple's public _replace",
    "pub._core": "tests: the project's publisher, looked at from inside",
    "pub._send": "tests: the project's publisher, its send wrapped to inject faults",
    "pub._writer": "tests: the project's publisher's writer task",
    "conn._progress": "tests: the project's Connection, its socket probe replaced",
    "c._held": "tests: the project's Connection, its replay hold",
    "hub._index": "tests: the project's Hub, its indexes",
    "client._wait": "tests: the project's Connection, its writer's wait",
    "self.gw.state.hub._clients": "tests: the project's Hub, its streams",
}


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            relative = path.relative_to(ROOT)
            yield relative, ast.parse(path.read_text(), filename=str(relative))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(path: Path, module: ast.Module) -> Iterator[tuple[Path, int, str]]:
    for node in ast.walk(module):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            yield path, node.lineno, f"attribute {ast.unparse(node)}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1:
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    target = node.args[0]
                    own = isinstance(target, ast.Name) and target.id in ("self", "cls")
                    if _private(name.value) and not own:
                        yield path, node.lineno, f"{node.func.id}(..., {name.value!r})"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            ours = node.module.partition(".")[0] in TREES
            if not ours and any(_private(part) for part in node.module.split(".")):
                yield path, node.lineno, f"import from {node.module}"
            elif node.module.partition(".")[0] in TOP_LEVEL_ONLY and "." in node.module:
                yield path, node.lineno, f"import from {node.module} (internal)"
            for alias in node.names:
                if not ours and _private(alias.name):
                    yield path, node.lineno, f"import {alias.name} from {node.module}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(part) for part in alias.name.split(".")):
                    yield path, node.lineno, f"import {alias.name}"
                elif alias.name.partition(".")[0] in TOP_LEVEL_ONLY and "." in alias.name:
                    yield path, node.lineno, f"import {alias.name} (internal)"


def test_no_private_name_of_another_library_outside_the_one_guarded_module() -> None:
    found = [
        f"{where}:{line}: {what}"
        for path, module in _sources()
        if path not in ALLOWED
        for where, line, what in _private_uses(path, module)
        if what.removeprefix("attribute ") not in KNOWN
    ]
    assert not found, (
        "private names, each either another library's internal (use its public API, or move "
        "it into a guarded module) or the project's own (add it to KNOWN, with why):\n"
        + "\n".join(found)
    )


def test_every_known_access_is_still_there() -> None:
    used = {
        what.removeprefix("attribute ")
        for path, module in _sources()
        for _, _, what in _private_uses(path, module)
    }
    assert set(KNOWN) <= used, f"stale entries in KNOWN: {sorted(set(KNOWN) - used)}"


def test_the_check_finds_what_it_is_for() -> None:
    """The check itself, on the accesses this project once had."""
    samples = {
        "from httpx_sse._decoders import SSEDecoder": "import from httpx_sse._decoders",
        "import httpx_sse\nhttpx_sse._decoders.SSEDecoder()": "attribute httpx_sse._decoders",
        "from sse_starlette import EventSourceResponse as E\nE._listen_for_exit_signal()": (
            "attribute E._listen_for_exit_signal"
        ),
        "from uvicorn.supervisors import Multiprocess": (
            "import from uvicorn.supervisors (internal)"
        ),
    }
    samples["conn._writer.close()"] = "attribute conn._writer"  # spelled like one of ours
    samples["getattr(request, '_receive')"] = "getattr(..., '_receive')"
    for code, expected in samples.items():
        found = [w for _, _, w in _private_uses(Path("x.py"), ast.parse(code))]
        assert expected in found, (code, found)


def test_the_project_never_calls_asyncio_wait_for() -> None:
    found = []
    for path, module in _sources():
        if path.parts[0] == "tests":
            continue
        for node in ast.walk(module):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for":
                if isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                    found.append(f"{path}:{node.lineno}")
    assert not found, "asyncio.wait_for (use asyncio.timeout: publisher/tasks.py): " + ", ".join(
        found
    )


def test_the_project_starts_no_task_group() -> None:
    """A TaskGroup cancels each child once when it ends; redis-py's ``wait_for`` can swallow
    that cancel on Python 3.11 (publisher/tasks.py), and the group then waits forever. The
    bridge's lease keeper and follower did (a test teardown hung for good): project code
    starts tasks and stops them with ``cancel_and_wait``. The tests and bench may use one
    around tasks with no Redis in them."""
    found = []
    for path, module in _sources():
        if path.parts[0] in ("tests", "bench"):
            continue
        for node in ast.walk(module):
            if isinstance(node, ast.Attribute) and node.attr == "TaskGroup":
                found.append(f"{path}:{node.lineno}")
    assert not found, "asyncio.TaskGroup (use cancel_and_wait: publisher/tasks.py): " + ", ".join(
        found
    )
