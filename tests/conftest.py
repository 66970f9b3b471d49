"""Shared test helpers: config files from text, a minimal valid config."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

BASE = """
version: 1
gateway:
  listeners:
    - {name: public, port: 18080}
  admin: {port: 19901}
services:
  catalog:
    versions:
      v1: {endpoints: ["127.0.0.1:19101", "127.0.0.1:19102"]}
      v2: {endpoints: ["127.0.0.1:19111"]}
  users:
    versions:
      v1: {endpoints: ["127.0.0.1:19001"]}
routes:
  - name: users
    match: {path: {prefix: /users}}
    forward: {service: users}
  - name: catalog
    match: {path: {prefix: /catalog/}}
    forward: {service: catalog, weights: {v1: 90, v2: 10}, rewrite: {prefix: /}}
"""


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def write_config(tmp_path: Path):
    def write(text: str = BASE, name: str = "mesh.yaml") -> Path:
        path = tmp_path / name
        path.write_text(dedent(text))
        return path
    return write


from tests.redis_server import redis_server  # noqa: E402,F401  (a real redis-server, for rate limits)


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The repository's mesh.yaml through `mitmesh up` on free ports, started once for the modules
    that only send it requests (tests/e2e/test_security.py, tests/security/test_demo_routes.py)."""
    from tools.testbed import running_demo

    with running_demo(tmp_path_factory.mktemp("demo")) as running:
        yield running
