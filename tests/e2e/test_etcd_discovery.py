"""etcd discovery with real sidecars and a real gateway beside mDNS: one endpoint per instance
whatever finds it, graceful stop gone in under a second, SIGKILL gone within the lease's TTL."""

from __future__ import annotations

import time

from tests.etcd_server import etcd_server, workload_tls  # noqa: F401 (fixture)

from .conftest import wait_until

TTL = 3


def test_etcd_beside_mdns_graceful_stop_and_sigkill(sidecar_mesh, etcd_server):
    m = sidecar_mesh
    members = [f"127.0.0.1:{etcd_server.client_port}"]
    # tls: {}: each proxy presents its workload certificate, and checks etcd's against the mesh CA
    m.config["discovery"]["etcd"] = {"endpoints": members, "ttl": TTL, "tls": {}}
    m.write()
    for name in ("catalog", "gateway"):
        workload_tls(etcd_server, name)
    a, b, c = m.start_instances(*({"service": "catalog", "name": f"catalog-{x}", "zone": "a"} for x in "abc"))
    m.start_gateway()
    m.wait_instances(3, source="etcd", timeout=30)
    m.wait_instances(3, source="mdns", timeout=30)
    status = m.status()
    endpoints = status["clusters"]["catalog/v1"]["endpoints"]
    assert len(endpoints) == 3, endpoints  # 6 announcements, 3 endpoints: each counted once
    etcd_view = [i for i in status["registry"]["instances"] if i["source"] == "etcd"]
    assert {i["workload"] for i in etcd_view} == {"catalog-a", "catalog-b", "catalog-c"}
    assert status["control_plane"]["stale"] is False
    assert status["control_plane"]["discovery"]["endpoints"] == [etcd_server.client_url]

    # graceful stop: the lease is revoked (and mDNS says goodbye): gone from the gateway < 1 s
    m.begin_stop(b)
    sent = time.monotonic()
    wait_until(lambda: not [i for i in m.registry() if i["address"] == b.inbound], timeout=1.0, interval=0.02)
    assert time.monotonic() - sent < 1.0
    m.stop_instance(b)

    # SIGKILL: no revoke; etcd drops the key when the lease's TTL runs out
    m.kill_instance(c)
    killed = time.monotonic()
    wait_until(lambda: not [i for i in m.registry() if i["address"] == c.inbound and i["source"] == "etcd"],
               timeout=TTL + 2, interval=0.05)
    took = time.monotonic() - killed
    assert took <= TTL + 1.0, took
    assert [i["workload"] for i in m.registry() if i["source"] == "etcd"] == ["catalog-a"]


def test_etcd_alone(sidecar_mesh, etcd_server):
    """Without mDNS the gateway finds instances through etcd only, and routes to them."""
    m = sidecar_mesh
    members = [f"127.0.0.1:{etcd_server.client_port}"]
    m.config["discovery"] = {"etcd": {"endpoints": members, "ttl": TTL, "tls": {}}}
    m.write()
    for name in ("catalog", "gateway"):
        workload_tls(etcd_server, name)
    (a,) = m.start_instances({"service": "catalog", "name": "catalog-a"})
    m.start_gateway()
    m.wait_instances(1, source="etcd", timeout=30)
    from tools.testbed import get
    status, body, _ = get(m.url + "/catalog/items")
    assert status == 200, body
