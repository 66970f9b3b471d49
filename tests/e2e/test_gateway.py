"""The gateway end to end: routes reach each demo service, errors are JSON, HTTPS and HTTP/2 work."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.request

from .conftest import get


def test_routes_reach_each_service(shared_mesh):
    mesh = shared_mesh
    status, body, headers = get(mesh.url + "/users/alice")
    assert status == 200 and body["service"] == "users" and body["user"]["name"] == "Alice"
    assert headers["x-request-id"] == body["request_id"]

    instances = {get(mesh.url + "/catalog/items")[1]["instance"] for _ in range(6)}
    assert len(instances) == 2 and all(i.startswith("catalog-v1") for i in instances)
    status, body, _ = get(mesh.url + "/catalog/items/2", headers={"x-canary": "always"})
    assert body["version"] == "v2" and body["item"]["price_cents"] == 1950

    status, body, _ = get(mesh.url + "/orders", data=json.dumps({"item_id": 3, "quantity": 2}).encode())
    assert status == 200 and body["service"] == "orders"
    assert body["order"]["catalog"].startswith("catalog-v1") and body["order"]["payments"].startswith("payments")

    status, body, _ = get(mesh.url + "/payments/charge", data=b'{"amount": 5}')
    assert status == 200 and body["service"] == "payments" and body["amount"] == 5


def test_no_route_is_json_404(shared_mesh):
    mesh = shared_mesh
    status, body, headers = get(mesh.url + "/nope")
    assert status == 404 and body["error"] == "no_route"
    assert headers["content-type"] == "application/json"


def test_killed_upstream_is_json_503_at_once(mesh):
    mesh.children["users-v1-1"].kill()
    start = time.monotonic()
    status, body, _ = get(mesh.url + "/users/alice")
    assert status == 503 and body["error"] == "upstream_connect_failure"
    assert time.monotonic() - start < 1.0
    assert get(mesh.url + "/catalog/items")[0] == 200  # the gateway itself is fine


def test_https_with_the_edge_certificate_and_http2(shared_mesh):
    mesh = shared_mesh
    context = ssl.create_default_context(cafile=str(mesh.tmp / "certs" / "edge-ca.pem"))
    with urllib.request.urlopen(mesh.tls_url + "/users/bob", context=context, timeout=5) as r:
        assert json.load(r)["user"]["name"] == "Bob"
    # plain HTTP to the HTTPS listener is told to use https
    status, body, _ = get(mesh.tls_url.replace("https", "http") + "/users/bob")
    assert status == 400 and body["error"] == "tls_required"
    curl = shutil.which("curl")
    assert curl, "curl is needed for the HTTP/2 check (.ci/run installs it)"
    out = subprocess.run([curl, "-sS", "--http2", "--cacert", str(mesh.tmp / "certs" / "edge-ca.pem"),
                          "-w", "\n%{http_version}", mesh.tls_url + "/catalog/items"],
                         capture_output=True, text=True, timeout=10)
    body, version = out.stdout.rsplit("\n", 1)
    assert version == "2" and json.loads(body)["service"] == "catalog"


def test_status_lists_config_routes_and_endpoints(shared_mesh):
    mesh = shared_mesh
    status = mesh.status()
    assert status["config"]["version"] == 1
    assert [r["name"] for r in status["routes"]][:2] == ["users", "catalog-canary"]
    assert len(status["clusters"]["catalog/v1"]["endpoints"]) == 2
