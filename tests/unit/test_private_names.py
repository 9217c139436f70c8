"""No code of this project reaches into another library's private names, and none calls
``asyncio.wait_for``.

* A private name (``_x``) of another library can change in any release, as redis-py 8.2's did
  for this project: the one place allowed to use uvicorn's internals is
  ``gateway/http/uvicorn_internals.py``, which names the versions it was tested with and has a
  guard test. Everywhere else (the packages, devtools, bench and these tests), an attribute or
  an import whose name starts with one underscore must be a name this project defines itself.
  The check reads the code (AST): a private attribute is flagged unless this project defines
  a name of that spelling somewhere (a function, class, assignment, slot, parameter), so a
  library's ``_decoders`` or ``_listen_for_exit_signal`` stands out.
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
#: private-looking names of the standard library that are its public API (``_SubParsersAction``:
#: the type typeshed gives ``add_subparsers()``, stable since Python 2.7)
STDLIB_PUBLIC = {
    "_exit",
    "_replace",
    "_asdict",
    "_fields",
    "_make",
    "_current_frames",
    "_SubParsersAction",
}


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            relative = path.relative_to(ROOT)
            yield relative, ast.parse(path.read_text(), filename=str(relative))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_names(modules: list[tuple[Path, ast.Module]]) -> set[str]:
    """Every private name this project defines: definitions, assignments (to names and to
    attributes), parameters, slots, import aliases."""
    own: set[str] = set()
    for _, module in modules:
        for node in ast.walk(module):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.alias) and node.asname:
                own.add(node.asname)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.isidentifier():
                    own.add(node.value)  # __slots__ entries, getattr names
    return {name for name in own if _private(name)}


def _foreign_private_uses(
    path: Path, module: ast.Module, own: set[str]
) -> Iterator[tuple[Path, int, str]]:
    for node in ast.walk(module):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if node.attr not in own and node.attr not in STDLIB_PUBLIC:
                yield path, node.lineno, f"attribute {ast.unparse(node)}"
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
    modules = list(_sources())
    own = _own_names(modules)
    found = [
        f"{path}:{line}: {what}"
        for path, module in modules
        if path not in ALLOWED
        for path, line, what in _foreign_private_uses(path, module, own)
    ]
    assert not found, "private names of other libraries:\n" + "\n".join(found)


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
    for code, expected in samples.items():
        found = [w for _, _, w in _foreign_private_uses(Path("x.py"), ast.parse(code), set())]
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
