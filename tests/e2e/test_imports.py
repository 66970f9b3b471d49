"""A proxy imports only what its config uses (issue 18): a sidecar started with the demo's config
serves a request, and its admin listener's /modules (sys.modules of that process) holds no OTel
SDK, no redis client, no etcd discovery, no aiohttp, none of the gateway-only features and none of
the modules it defers (mesh/runtime/deferred.py: imported, never run); the
same sidecar with tracing and a Redis idempotency storage does load the SDK and redis, so the check
can fail."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from mesh.runtime import deferred, procs
from tools.otlp import Receiver

ROOT = Path(__file__).resolve().parents[2]
MITMESH = procs.python("-m", "mesh.cli")

# what a sidecar with the demo's config must not hold: libraries of features it does not use, the
# gateway's own features (its addons and the policy code they run), the functions runtime
NOT_IN_A_DEMO_SIDECAR = (
    "opentelemetry", "redis", "aiohttp", "limits", "jwt", "httptools", "tornado",
    "discovery.etcd", "discovery.etcdapi",
    "addons.authn", "addons.auththrottle", "addons.canary", "addons.cors", "addons.function",
    "addons.ipfilter", "addons.mirror", "addons.ratelimit", "addons.router", "addons.sanitize",
    "addons.securityheaders", "addons.transform", "addons.versioning",
    "mesh.policies.authn", "mesh.policies.jwks", "mesh.policies.apikeys", "mesh.policies.cors",
    "mesh.policies.ratelimit", "mesh.policies.transform", "mesh.core.versioning", "mesh.core.mirror",
    "mesh.functions.host", "mesh.functions.pool", "mesh.telemetry.otel",
    # imported by mitmproxy and its libraries, run only when used (mesh/runtime/deferred.py)
    # (mitmproxy's QUIC layers among them: aioquic and pylsqpack are not even imported)
    *deferred.DEFERRED, "unittest", "difflib", "attr", "idna", "aioquic", "pylsqpack",
)


def loaded(modules: list[str], prefixes) -> list[str]:
    """The modules that are one of `prefixes` or inside one of them."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.fixture
def demo_copy(tmp_path):
    """mesh.yaml beside its own certificates (the edge's, the mesh CA, catalog's workload
    certificate), with a mesh id of its own: nothing it announces reaches another test's mesh."""
    config = yaml.safe_load((ROOT / "mesh.yaml").read_text())
    config["mesh"]["id"] = f"imports-{os.getpid()}-{tmp_path.name}"
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    for argv in (["certs", "init", "--config", str(path)], ["certs", "issue", "--config", str(path), "catalog"]):
        subprocess.run(MITMESH + argv, check=True, capture_output=True, cwd=tmp_path, timeout=60)
    return path


def served_modules(config: Path, address: str, request) -> dict:
    """Start catalog's app and its sidecar (`mitmesh sidecar`, one process) with `config`, send
    `request(outbound_port)` through the sidecar until it is answered, and return the sidecar's
    /modules. Both processes are stopped however this ends."""
    logs = config.parent / "logs"
    app_port, inbound, outbound, admin = (procs.free_port(address) for _ in range(4))
    children = []
    try:
        children.append(procs.spawn("catalog", procs.python("-m", "services.catalog", "--host", address,
                                                             "--port", str(app_port)), log_dir=logs, cwd=str(ROOT)))
        sidecar = procs.spawn("sidecar", MITMESH + [
            "sidecar", "--config", str(config), "--service", "catalog", "--version", "v1",
            "--app", f"{address}:{app_port}", "--address", address, "--instance", "catalog-imports",
            "--inbound-port", str(inbound), "--outbound-port", str(outbound), "--admin-port", str(admin),
            "--verbosity", "warn"], log_dir=logs, cwd=str(ROOT))
        children.append(sidecar)
        procs.wait_log(sidecar, "sidecar ready", timeout=60)
        deadline = time.monotonic() + 30
        while True:  # the sidecar finds its own instance over mDNS once its app answers
            status = request(outbound)
            if status == 200:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no 200 through the sidecar (last {status}):\n{sidecar.tail()}")
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://{address}:{admin}/modules", timeout=10) as r:
            return json.load(r)
    finally:
        procs.stop_all(children)


def get_items(address: str):
    def send(port: int) -> int:
        conn = http.client.HTTPConnection(address, port, timeout=10)
        try:
            conn.request("GET", "http://catalog/items")
            r = conn.getresponse()
            r.read()
            return r.status
        except OSError:
            return 0
        finally:
            conn.close()
    return send


def test_a_demo_sidecar_imports_only_what_its_config_uses(demo_copy):
    address = "127.0.0.61"
    out = served_modules(demo_copy, address, get_items(address))
    modules = out["modules"]
    assert out["count"] == len(modules) and out["pid"] > 0
    # the listing is the served process's: the sidecar's chain and the policies its services use
    assert {"addons.forward", "addons.outbound", "addons.idempotency", "mesh.policies.authz",
            "mitmproxy.proxy.layers.http", "zeroconf", "prometheus_client"} <= set(modules)
    assert loaded(modules, NOT_IN_A_DEMO_SIDECAR) == []
    # all of DEFERRED but service_identity, which only aioquic imports
    assert out["deferred"] == sorted(set(deferred.DEFERRED) - {"service_identity"})
    assert out["memory_kb"]["rss"] > out["memory_kb"]["private"] > 0


def test_tracing_and_redis_in_the_config_load_their_libraries(demo_copy, redis_server):
    """The contrast: the same sidecar whose config turns tracing on and keeps idempotency records in
    Redis loads the OTel SDK and exporter when it starts, and the redis client with the first
    request that uses it (a POST to payments, which the demo's charge-once policy covers)."""
    config = yaml.safe_load(demo_copy.read_text())
    config["observability"]["tracing"] = {"otlp_endpoint": None}
    config["policies"]["charge-once"]["idempotency"]["storage"] = redis_server.url
    address = "127.0.0.62"

    def send(port: int) -> int:
        status = get_items(address)(port)
        if status != 200:
            return status
        conn = http.client.HTTPConnection(address, port, timeout=10)
        try:  # payments has no instance here: its 503 comes after the idempotency check
            conn.request("POST", "http://payments/charge", body=b"{}",
                         headers={"Idempotency-Key": "imports-1", "content-type": "application/json"})
            r = conn.getresponse()
            r.read()
        finally:
            conn.close()
        return status

    with Receiver() as receiver:
        config["observability"]["tracing"]["otlp_endpoint"] = receiver.url
        demo_copy.write_text(yaml.safe_dump(config, sort_keys=False))
        modules = served_modules(demo_copy, address, send)["modules"]
    assert loaded(modules, ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http",
                            "mesh.telemetry.otel")) != []
    assert "redis.asyncio" in modules
    # still no gateway-only feature
    assert loaded(modules, [m for m in NOT_IN_A_DEMO_SIDECAR if m.startswith(("addons.", "mesh.policies."))]) == []
