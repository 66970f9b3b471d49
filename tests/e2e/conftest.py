"""End-to-end fixtures: real demo services and a real gateway process on free loopback ports.

Every process is started through mesh.runtime.procs (own process group, dies with us) and stopped in a
finally block, also when the test fails. `Mesh`, `Load` and the helpers are in tools/testbed.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.runtime import procs
# the mesh helpers live in the product (scenarios use them too); tests import them from here
from tools.testbed import (
    Load,
    Mesh,
    Sample,
    Sidecared,
    announced_at,
    get,
    sidecar_config,
    wait_until,
)

pytestmark = pytest.mark.e2e


def demo_config(tls_dir: Path | None = None) -> dict:
    """The demo topology of mesh.yaml, on free ports."""
    p = procs.free_port
    listeners = [{"name": "public", "port": p()}]
    if tls_dir is not None:
        listeners.append({"name": "public-tls", "port": p(),
                          "tls": {"cert": str(tls_dir / "edge.pem"), "key": str(tls_dir / "edge.key")}})
    return {
        "version": 1,
        "gateway": {"listeners": listeners, "admin": {"port": p()}},
        "services": {
            "users": {"versions": {"v1": {"launch": {"app": "users"}, "endpoints": [f"127.0.0.1:{p()}"]}}},
            "catalog": {"versions": {
                "v1": {"launch": {"app": "catalog"}, "endpoints": [f"127.0.0.1:{p()}", f"127.0.0.1:{p()}"]},
                "v2": {"launch": {"app": "catalog"}, "endpoints": [f"127.0.0.1:{p()}"]},
            }},
            "orders": {"versions": {"v1": {"launch": {"app": "orders"}, "endpoints": [f"127.0.0.1:{p()}"]}}},
            "payments": {"versions": {"v1": {"launch": {"app": "payments"}, "endpoints": [f"127.0.0.1:{p()}"]}}},
        },
        "routes": [
            {"name": "users", "match": {"path": {"prefix": "/users"}}, "forward": {"service": "users"}},
            {"name": "catalog-canary", "match": {"path": {"prefix": "/catalog/"}, "headers": {"x-canary": "always"}},
             "forward": {"service": "catalog", "version": "v2", "rewrite": {"prefix": "/"}}},
            {"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
             "forward": {"service": "catalog", "version": "v1", "rewrite": {"prefix": "/"}}},
            {"name": "orders", "match": {"path": {"prefix": "/orders"}}, "forward": {"service": "orders"}},
            {"name": "payments", "match": {"path": {"prefix": "/payments/"}},
             "forward": {"service": "payments", "rewrite": {"prefix": "/"}}},
        ],
    }


def _started_demo(tmp_path):
    from mesh.security import pki

    pki.init_edge(tmp_path / "certs")
    m = Mesh(tmp_path, demo_config(tmp_path / "certs"))
    m.write()
    try:
        m.start_services()
        m.start_gateway()
        yield m
    finally:
        m.stop()


@pytest.fixture
def mesh(tmp_path):
    """A started demo: services and a gateway, for this test alone. Cleaned up whatever happens."""
    yield from _started_demo(tmp_path)


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory):
    """The same, shared by a module's tests that only read it (none may change or kill anything)."""
    yield from _started_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def sidecar_mesh(tmp_path):
    """A gateway that finds sidecars over mDNS; tests start the instances. Cleaned up always."""
    m = Mesh(tmp_path, {})
    m.config = sidecar_config(f"{m.net}.1")
    m.write()
    try:
        yield m
    finally:
        m.stop()
