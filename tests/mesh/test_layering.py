"""The folders show the architecture, and imports only go down (docs/architecture.md, "Layout").

Every package of the product and of the developer tools has a layer; a module may import its own
layer and the layers below it, never one above. The lower packages are the core (data in, decision
out): they import neither mitmproxy nor our addons. No per-file exceptions: a module that needs
something from above is in the wrong place, or the thing it needs is.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# lowest first; packages on one line share a layer and may import each other
LAYERS: list[tuple[str, ...]] = [
    ("mesh.config",),
    ("discovery",),
    ("mesh.security", "mesh.telemetry"),
    ("mesh.policies", "mesh.resilience"),
    ("mesh.core",),
    ("mesh.runtime",),  # the process shell the addons use: admin server, reload, sockets, supervisor
    ("addons",),
    ("mesh.proxy",),  # mitmproxy's Master with the addon chain, and the worker process
    ("tools",),
    ("mesh.cli",),
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}

# the packages that are pure Python: no proxy, no addons
MITMPROXY_FREE = ("mesh.config", "mesh.core", "mesh.policies", "mesh.resilience", "mesh.security",
                  "mesh.telemetry", "discovery")


def dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The package (a key of RANK) a dotted module name belongs to; None outside the project."""
    for package in sorted(RANK, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return None


def modules() -> list[Path]:
    found = [p for top in ("mesh", "tools", "addons", "discovery") for p in (ROOT / top).rglob("*.py")]
    return sorted(found)


def imports(path: Path, source: str | None = None) -> list[str]:
    """Every module `path` imports, anywhere in it (also inside functions), as absolute names."""
    here = dotted(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.append(module)
            if layer_of(module) is None:  # `from mesh import core`: the names are the modules
                names += [f"{module}.{a.name}" for a in node.names]
    return names


def test_every_module_has_a_layer():
    """A new package (or a module loose in mesh/) must be given its place in LAYERS."""
    assert [str(p.relative_to(ROOT)) for p in modules() if layer_of(dotted(p)) is None
            and dotted(p) != "mesh"] == []


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in modules():
        own = layer_of(dotted(path))
        if own is None:
            continue
        for name in imports(path):
            other = layer_of(name)
            if other is not None and RANK[other] > RANK[own]:
                upward.append(f"{path.relative_to(ROOT)} ({own}) imports {name} ({other})")
    assert upward == []


def test_the_core_packages_import_neither_mitmproxy_nor_addons():
    offenders = []
    for path in modules():
        if layer_of(dotted(path)) not in MITMPROXY_FREE:
            continue
        offenders += [f"{path.relative_to(ROOT)}: {name}" for name in imports(path)
                      if name.split(".")[0] in ("mitmproxy", "addons")]
    assert offenders == []


def test_the_product_never_imports_the_scenarios():
    """Scenarios are data for the runner (tools/scenario.py loads them from their folder by path)."""
    offenders = [f"{path.relative_to(ROOT)}: {name}" for path in modules()
                 for name in imports(path) if name.split(".")[0] == "scenarios"]
    assert offenders == []


def test_the_check_sees_an_upward_import():
    """The walker itself: a relative import from the core into the runtime is read as upward."""
    probe = ROOT / "mesh" / "core" / "probe.py"
    names = imports(probe, "from ..runtime import admin\nfrom . import cluster\nfrom mesh import proxy\n")
    assert names == ["mesh.runtime", "mesh.core", "mesh", "mesh.proxy"]
    assert RANK[layer_of("mesh.runtime")] > RANK[layer_of(dotted(probe))]


def test_discovery_does_not_import_mitmproxy_addons_or_the_core():
    """discovery/ finds instances; it knows neither the proxy nor how the core uses them."""
    root = ROOT / "discovery"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("mitmproxy", "addons", "mesh")]
    assert not offenders
