"""The package's layers, read from the source with ``ast`` (imports inside functions count).

    runtime, create_app
      └ api (routes)  →  serving  →  providers  →  uploads  →  accounts  →  {qwen, wire, ops}  →  core

A module may import its own package and any lower layer, never a higher one nor a sibling of
its own layer; nothing imports in a cycle; routes never import ``qwen.*``; ``workers/`` never
import ``api`` or ``serving``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

CORE = {"config", "errors", "events", "content", "jwt", "db", "netutil", "private"}
LAYERS: list[set[str]] = [
    CORE,
    {"qwen", "wire", "ops"},
    {"accounts"},
    {"uploads"},
    {"providers"},
    {"serving"},
    {"api"},
    {"runtime", "__init__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# runtime/ holds the process entry (serve, top) and two tools every layer may use: starting
# Chromium (the browser login, the browser pool) and supervising worker processes
RANK |= {"runtime.chromium": 1, "runtime.supervisor": 1}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from x import y`` counts ``x.y`` when
    that is a module of ours, else ``x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def area(module: str) -> str:
    """The layer key of a ``qwenproxy`` module: its package under ``qwenproxy`` (or the
    module itself where ``RANK`` names it)."""
    parts = module.split(".")
    if ".".join(parts[1:3]) in RANK:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else "__init__"


def sources(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    areas = {area(module_name(p)) for p in sources("qwenproxy")}
    assert areas <= set(RANK), f"give these a layer in this test: {areas - set(RANK)}"


def test_no_module_imports_upward_or_sideways() -> None:
    wrong = []
    for path in sources("qwenproxy"):
        here = module_name(path)
        for target in imports(path):
            if not target.startswith("qwenproxy.") or area(target) == area(here):
                continue
            if area(target) in CORE and area(here) in CORE:  # core is one flat layer
                continue
            if RANK[area(target)] >= RANK[area(here)]:
                wrong.append(f"{here} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_routes_never_import_qwen() -> None:
    wrong = [
        f"{module_name(p)} -> {t}"
        for p in sources("qwenproxy/api")
        for t in imports(p)
        if t == "qwenproxy.qwen" or t.startswith("qwenproxy.qwen.")
    ]
    assert not wrong, wrong


def test_workers_never_import_routes_or_serving() -> None:
    wrong = [
        f"{module_name(p)} -> {t}"
        for p in sources("workers")
        for t in imports(p)
        if t.startswith(("qwenproxy.api", "qwenproxy.serving")) or t == "qwenproxy"
    ]
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    graph = {module_name(p): {t for t in imports(p) if t.startswith("qwenproxy")} for p in sources("qwenproxy")}
    # a package's __init__ is imported with any of its modules: only its own imports count
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif state.get(nxt) is None:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_a_wrong_import(tmp_path) -> None:
    """The reader resolves relative imports as Python does (else the tests above see nothing)."""
    probe = ROOT / "qwenproxy" / "qwen" / "client.py"
    found = imports(probe)
    assert "qwenproxy.errors" in found and "qwenproxy.qwen.protocol" in found
    assert area("qwenproxy.qwen.client") == "qwen" and RANK["api"] > RANK["serving"] > RANK["providers"]
