"""ARCHITECTURE.md's floor plan, enforced.

Statically, from the import graph: import-linter's contracts in pyproject.toml
(``[tool.importlinter]``): the layers ``cli > http > replica > identity > fanout >
settings, errors, logs``; the bridge beside the HTTP edge, using none of it; only the CLI
imports the consumer; the consumer imports only the pure identity modules; ``publisher``
never imports ``gateway``; nothing shipped imports ``devtools``.

Dynamically, in a fresh interpreter: what importing the consumer, and the publisher, really
loads. The graph sees ``import a.b`` but not that it runs ``a/__init__.py`` and everything
that imports, which is how a pure module can still drag in Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: prints what importing the modules named in argv adds to sys.modules, and all of it
_PROBE = """\
import importlib, json, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({"all": sorted(sys.modules), "new": sorted(set(sys.modules) - before)}))
"""

#: the gateway's server-side dependencies, which neither the consumer nor the publisher needs
SERVER_PACKAGES = {"redis", "starlette", "sse_starlette", "uvicorn", "prometheus_client"}

#: everything ``import gateway.consumer`` may load besides the standard library
CONSUMER_MAY_LOAD = {
    "gateway",
    "gateway.consumer",
    "gateway.errors",
    "gateway.identity",
    "gateway.identity.models",
    "gateway.identity.signing",
}
#: and of other distributions: msgspec, and httpx (the client's HTTP layer; it parses SSE
#: itself), with what they themselves load (httpx loads its CLI's click and rich when they
#: are installed)
CONSUMER_THIRD_PARTY = ("msgspec", "httpx")


def _top(module: str) -> str:
    return module.partition(".")[0]


def _import_in_fresh_interpreter(*modules: str) -> tuple[set[str], set[str]]:
    """(all of sys.modules, the modules the imports added) in a new ``python``."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    return set(loaded["all"]), set(loaded["new"])


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is missing: run scripts/install"
    proc = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_consumer_loads_no_server_code() -> None:
    everything, new = _import_in_fresh_interpreter("gateway.consumer")
    assert "gateway.consumer" in new
    assert not {m for m in everything if _top(m) in SERVER_PACKAGES}, sorted(everything)
    ours = {m for m in new if _top(m) in ("gateway", "publisher", "devtools")}
    assert ours <= CONSUMER_MAY_LOAD, f"the consumer also loads {sorted(ours - CONSUMER_MAY_LOAD)}"
    assert {"msgspec", "httpx"} <= {_top(m) for m in new}
    _, by_libraries = _import_in_fresh_interpreter(*CONSUMER_THIRD_PARTY)
    third_party = {_top(m) for m in new - by_libraries} - sys.stdlib_module_names
    assert third_party <= {"gateway", "publisher"}, f"the consumer loads {sorted(third_party)}"


def test_publisher_loads_no_gateway() -> None:
    modules = ["publisher"] + [
        f"publisher.{path.stem}"
        for path in sorted((ROOT / "publisher").glob("*.py"))
        if path.stem not in ("__init__", "__main__")
    ]
    assert "publisher.cli" in modules
    everything, _ = _import_in_fresh_interpreter(*modules)
    assert set(modules) <= everything
    leaked = {m for m in everything if _top(m) in ("gateway", "devtools")}
    assert not leaked, f"importing the publisher loads {sorted(leaked)}"
    server_only = {_top(m) for m in everything} & (SERVER_PACKAGES - {"redis"})
    assert not server_only, f"importing the publisher loads {sorted(server_only)}"


def test_no_module_imports_itself_in_a_circle() -> None:
    """No import cycle anywhere in the project, imports made only for type checking included
    (a cycle there is a room that belongs to neither side: the last one, state ->
    reauthorize -> websession -> login_guard -> state, was one)."""
    import grimp

    graph = grimp.build_graph(
        "gateway", "publisher", "devtools", exclude_type_checking_imports=False
    )
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"
