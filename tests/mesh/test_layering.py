"""mesh/ is the core: data in, decision out. It must not import mitmproxy (or our addons)."""

from __future__ import annotations

import ast
from pathlib import Path

MESH = Path(__file__).resolve().parents[2] / "mesh"
ALLOWED = {
    "runtime.py",  # builds the mitmproxy Master that runs the addon chain
    "replay.py",  # reads and writes mitmproxy's flow format for record and replay
}


def test_mesh_does_not_import_mitmproxy_or_addons():
    offenders = []
    for path in MESH.rglob("*.py"):
        rel = str(path.relative_to(MESH))
        if rel in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{rel}: {n}" for n in names if n.split(".")[0] in ("mitmproxy", "addons")]
    assert not offenders


def test_discovery_does_not_import_mitmproxy_addons_or_the_core():
    """discovery/ finds instances; it knows neither the proxy nor how the core uses them."""
    root = MESH.parent / "discovery"
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
