"""etcd discovery with real sidecars and a real gateway beside mDNS: one endpoint per instance
whatever finds it, graceful stop gone in under a second, SIGKILL gone within the lease's TTL."""

from __future__ import annotations

import asyncio
import json
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


def etcd_alone(m, etcd_server) -> None:
    """catalog-a and the gateway, discovering through etcd with TLS only."""
    members = [f"127.0.0.1:{etcd_server.client_port}"]
    m.config["discovery"] = {"etcd": {"endpoints": members, "ttl": TTL, "tls": {}}}
    m.write()
    for name in ("catalog", "gateway"):
        workload_tls(etcd_server, name)
    m.start_instances({"service": "catalog", "name": "catalog-a"})
    m.start_gateway()
    m.wait_instances(1, source="etcd", timeout=30)


def test_etcd_alone(sidecar_mesh, etcd_server):
    """Without mDNS the gateway finds instances through etcd only, and routes to them."""
    m = sidecar_mesh
    etcd_alone(m, etcd_server)
    from tools.testbed import get
    status, body, _ = get(m.url + "/catalog/items")
    assert status == 200, body


def test_only_a_service_registers_its_own_instances(sidecar_mesh, etcd_server):
    """etcd with TLS lets every workload certificate of the mesh CA write every key. users'
    certificate registered an instance of catalog at an address of its choosing, and the gateway
    sent catalog's requests there (mTLS STRICT would have stopped them at the handshake; a
    DISABLE service, not). Now a proxy takes an instance of catalog only as catalog's own sidecar
    signed it."""
    from discovery.etcd import instance_key
    from discovery.etcdapi import Etcd
    from discovery.registry import Instance
    from mesh.runtime import procs
    from mesh.security import pki
    from mesh.security.instances import InstanceSigner

    m = sidecar_mesh
    mesh = m.config["mesh"]["id"]
    etcd_alone(m, etcd_server)
    attacker = workload_tls(etcd_server, "users")
    catalog_id = pki.spiffe_id("mitmesh.local", "demo", "catalog")

    async def forge() -> None:
        etcd = Etcd([etcd_server.client_url], tls=attacker)
        try:
            real = (await etcd.get_prefix(f"/mitmesh/{mesh}/instances/"))[0][0]
            ports = iter(procs.free_port() for _ in range(3))

            def record(port: int) -> dict:
                return {"service": "catalog", "version": "v1", "address": "127.0.0.1",
                        "port": port, "identity": catalog_id}
            forged = [record(next(ports)),  # unsigned
                      InstanceSigner(mesh, attacker.cert, attacker.key)(record(next(ports))),
                      {**json.loads(real.value), "port": next(ports)}]  # catalog's, moved
            for rec in forged:
                inst = Instance(name="x", service="catalog", version="v1", address="127.0.0.1",
                                port=rec["port"])
                await etcd.put(instance_key(mesh, inst), json.dumps(rec))
        finally:
            await etcd.close()
    asyncio.run(forge())
    time.sleep(1.5)  # what the gateway would have taken by now, it took at once
    assert [i["workload"] for i in m.registry() if i["source"] == "etcd"] == ["catalog-a"]
    log = m.children["gateway"].log.read_text()
    assert log.count("not registered by service 'catalog' itself") == 3, log[-3000:]
    assert "its certificate is spiffe://mitmesh.local/ns/demo/sa/users's" in log
    assert "the signature does not match its content" in log and "it is not signed" in log
