"""Functions in the running demo (`mitmesh up`): greet runs at the gateway, catalog-view runs as a
mesh service beside its own sidecar and calls catalog through it with its own workload identity."""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlsplit

import pytest

from tools import launcher
from tools.testbed import get, running_demo, wait_until

SA = "spiffe://mitmesh.local/ns/demo/sa/"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with running_demo(tmp_path_factory.mktemp("functions")) as running:
        yield running


def sidecar_admins(demo) -> list[str]:
    state = json.loads((launcher.state_dir(demo["config"]) / "up.json").read_text())
    return state["admins"][1:]


def flows(admin: str) -> list[dict]:
    with urllib.request.urlopen(admin + "/flows", timeout=5) as r:
        return json.load(r)["flows"]


def test_a_function_route_at_the_gateway(demo):
    status, body, headers = get(demo["url"] + "/greet?name=ada", headers={"x-request-id": "fn-greet-1"})
    assert status == 200, body
    assert body == {"message": "hello, ada", "function": "greet", "request_id": "fn-greet-1"}
    assert "ratelimit-limit" in headers  # the route's policies apply as on any route


def test_a_function_calls_catalog_through_its_sidecar_with_its_own_identity(demo):
    status, body, _ = get(demo["url"] + "/catalog-view/", headers={"x-request-id": "fn-view-1"}, timeout=15)
    assert status == 200, body
    assert body["items"] == 4 and body["cheapest"] == "cable" and body["served_by"]["service"] == "catalog"
    # catalog's sidecar verified the caller's certificate: the function's own workload identity
    seen = wait_until(lambda: [f for admin in sidecar_admins(demo) for f in flows(admin)
                               if f["request_id"] == "fn-view-1" and f["direction"] == "inbound"
                               and f["path"].startswith("/items")])
    assert [f["peer"] for f in seen] == [SA + "catalog-view"]


def test_other_services_call_the_function_by_name(demo):
    # from orders' sidecar, as orders would: http://catalog-view/ through its outbound listener
    orders = next(a for a in sidecar_admins(demo)
                  if json.loads(urllib.request.urlopen(a + "/status", timeout=5).read())["workload"]["service"] == "orders")
    proxy = f"http://{urlsplit(orders).hostname}:15001"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    req = urllib.request.Request("http://catalog-view/", headers={"x-request-id": "fn-view-2"})
    with opener.open(req, timeout=15) as r:
        assert r.status == 200 and json.load(r)["items"] == 4
    seen = wait_until(lambda: [f for admin in sidecar_admins(demo) for f in flows(admin)
                               if f["request_id"] == "fn-view-2" and f["direction"] == "inbound"
                               and f["peer"] == SA + "orders"])
    assert seen
