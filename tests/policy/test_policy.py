"""Policy tests of a config before it is rolled out (`just rollout`, the config-rollout CI
workflow): organisation rules beyond the schema, run against MITMESH_POLICY_CONFIG (default: the
repository's mesh.yaml). Add your own rules here; each failure names the route."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh.config.lint import warnings
from mesh.config.source import parse
from mesh.core.build import build

CONFIG = os.environ.get("MITMESH_POLICY_CONFIG") or str(Path(__file__).parents[2] / "mesh.yaml")


@pytest.fixture(scope="module")
def snap():
    return build(CONFIG)


def test_no_lint_warnings(snap):
    """No route that shadows another's authentication, and the rest `mitmesh validate` warns of."""
    found = warnings(parse(Path(CONFIG).read_text(), CONFIG), snap.config)
    assert not found, "\n".join(map(str, found))


def test_every_route_can_reach_an_endpoint(snap):
    """A forward to a service version without static endpoints, a launch or discovery would 503."""
    discovery = snap.config.discovery.mdns is not None or snap.config.discovery.etcd is not None
    for route in snap.config.routes:
        if route.forward is None or discovery:
            continue
        svc = snap.config.services[route.forward.service]
        versions = [route.forward.version] if route.forward.version else list(svc.versions)
        for v in versions:
            version = svc.versions[v]
            assert version.endpoints or version.launch, \
                f"{CONFIG}: route {route.name}: {route.forward.service}/{v} has no endpoints and no discovery"
