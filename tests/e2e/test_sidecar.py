"""Sidecars end to end: orders calls catalog and payments through its sidecar and theirs, never
directly; hops reuse keep-alive connections; /status shows the registry; mitmdump runs the chain."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request

import pytest
import yaml

from tools import launcher
from mesh.runtime import procs

from .conftest import Mesh, get, sidecar_config, wait_until


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """catalog, payments and orders, each with its sidecar, and a gateway: all found over mDNS."""
    m = Mesh(tmp_path_factory.mktemp("sidecars"), {})
    m.config = sidecar_config(f"{m.net}.1")
    m.write()
    try:
        m.instances = {s.inst.service: s for s in m.start_instances(
            {"service": "catalog", "zone": "a", "weight": 2}, {"service": "payments"},
            {"service": "orders"})}
        m.start_gateway()
        m.wait_converged(list(m.instances.values()), 3)
        yield m
    finally:
        m.stop()


def proxied(proxy: str, url: str, method: str = "GET") -> tuple[int, dict]:
    """One request through an HTTP proxy (a sidecar's outbound listener), as an app would send it."""
    p = urllib.parse.urlsplit(proxy)
    conn = http.client.HTTPConnection(p.hostname, p.port, timeout=5)
    try:
        conn.request(method, url)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def test_orders_calls_catalog_through_both_sidecars(demo):
    catalog, payments, orders = (demo.instances[n] for n in ("catalog", "payments", "orders"))
    rid = "order-through-sidecars-1"
    status, body, _ = get(demo.url + "/orders", headers={"x-request-id": rid},
                          data=json.dumps({"item_id": 3, "quantity": 2}).encode())
    assert status == 200, body
    assert body["order"]["catalog"] == catalog.name and body["order"]["payments"] == payments.name

    # orders' app knows no address of catalog: it asks its sidecar's outbound listener for
    # http://catalog, which sent the request to catalog's sidecar (its inbound), never to the app
    assert "http://catalog" in orders.app.argv and orders.outbound in orders.app.argv
    out = [f for f in orders.flows() if f["request_id"] == rid and f["direction"] == "outbound"]
    assert {(f["host"], f["endpoint"], f["status"]) for f in out} == {
        ("catalog", catalog.inbound, 200), ("payments", payments.inbound, 200)}
    inbound = [f for f in catalog.flows() if f["request_id"] == rid]
    assert len(inbound) == 1 and inbound[0]["direction"] == "inbound"
    assert inbound[0]["endpoint"] == f"{catalog.inst.host}:{catalog.inst.port}"  # its own app
    assert inbound[0]["client"].split(":")[0] == orders.inst.sidecar.address  # from orders' sidecar
    assert [who for who, _ in inbound[0]["decisions"]] == ["inbound", "forward"]
    # and the gateway reached orders through orders' sidecar too
    assert any(f["request_id"] == rid and f["direction"] == "inbound" for f in orders.flows())


def test_hops_reuse_keep_alive_connections(demo):
    orders = demo.instances["orders"]

    def order(rid: str) -> None:
        status, body, _ = get(demo.url + "/orders", headers={"x-request-id": rid},
                              data=json.dumps({"item_id": 1, "quantity": 1}).encode())
        assert status == 200, body

    # the pool of orders' sidecar is cold when this test runs first on its worker, and closes what
    # idled past the clusters' idle_timeout (4 s) when other tests ran in between: one order opens
    # its three hops (to the app, to catalog's and to payments' sidecars) before the count starts
    order("keepalive-warm-up")
    before = json.load(urllib.request.urlopen(orders.admin + "/status"))["upstream"]["connections_opened"]
    for i in range(30):
        order(f"keepalive-{i}")
    after = json.load(urllib.request.urlopen(orders.admin + "/status"))["upstream"]["connections_opened"]
    assert after - before <= 2  # 90 upstream requests (60 sidecar→sidecar), on the pool's warm connections
    # the app keeps its connections to its sidecar: 60 outbound requests came over very few
    clients = {f["client"] for f in orders.flows()
               if f["direction"] == "outbound" and f["request_id"].startswith("keepalive-")}
    assert 1 <= len(clients) <= 4


def test_status_shows_the_registry(demo):
    catalog = demo.instances["catalog"]
    status = json.load(urllib.request.urlopen(catalog.admin + "/status"))
    assert status["role"] == "sidecar" and status["mesh"] == demo.config["mesh"]["id"]
    assert status["workload"]["instance"] == catalog.name and status["workload"]["announced"]
    assert status["workload"]["app_healthy"] is True
    assert {l["direction"] for l in status["listeners"]} == {"inbound", "outbound"}
    mine = next(i for i in status["registry"]["instances"] if i["service"] == "catalog")
    assert (mine["zone"], mine["weight"], mine["healthy"], mine["address"]) == ("a", 2, True, catalog.inbound)
    assert mine["identity"] == "spiffe://mitmesh.local/ns/demo/sa/catalog"
    gateway = demo.status()
    assert gateway["zone"] == "a" and len(gateway["registry"]["instances"]) == 3
    eps = gateway["clusters"]["catalog/v1"]["endpoints"]
    assert [(e["address"], e["weight"], e["zone"], e["healthy"]) for e in eps] == [(catalog.inbound, 2, "a", True)]


def test_outbound_refuses_unknown_services_and_connect(demo):
    orders = demo.instances["orders"]
    status, body = proxied(orders.outbound, "http://nosuch/x")
    assert status == 404 and body["error"] == "no_route"
    assert "no service named 'nosuch'" in body["reason"] and "catalog" in body["reason"]
    status, body = proxied(orders.outbound, "catalog:443", method="CONNECT")
    assert status == 405 and body["error"] == "connect_not_supported"
    status, body = proxied(orders.outbound, "http://catalog/items/2")  # and the proxy still works
    assert status == 200 and body["item"]["name"] == "mouse"


def test_mitmdump_runs_the_sidecar_chain(tmp_path):
    """`mitmdump -s addons/sidecar.py` for inspection: the same chain, inbound and outbound."""
    m = Mesh(tmp_path, {})
    m.config = sidecar_config(f"{m.net}.1")
    m.write()
    host = m.host()
    app_port, inbound, outbound, admin = (procs.free_port(host) for _ in range(4))
    workload = (f"service=users,app={host}:{app_port},address={host},instance=users-dump,"
                f"inbound={inbound},outbound={outbound},admin={admin}")
    try:
        app = procs.spawn("users", procs.python("-m", "services.users", "--host", host, "--port", str(app_port),
                                                "--instance", "users-dump"), log_dir=tmp_path / "logs")
        m.children["users"] = app
        procs.wait_ports(app, [(host, app_port)])
        dump = procs.spawn("mitmdump", [procs.tool("mitmdump"), "-s", str(launcher.ROOT / "addons" / "sidecar.py"),
                                        "--set", f"mesh_config={m.path}", "--set", f"mesh_workload={workload}",
                                        "--set", "listen_host=127.0.0.1", "--set", f"confdir={tmp_path / 'conf'}",
                                        # mitmdump binds its default listener before the script
                                        # replaces it: a free port, never 8080 (a demo may hold it)
                                        "--set", f"listen_port={procs.free_port()}"],
                           log_dir=tmp_path / "logs")
        m.children["mitmdump"] = dump
        procs.wait_log(dump, "announced ")
        status, body, _ = get(f"http://{host}:{inbound}/users/alice")
        assert status == 200 and body["instance"] == "users-dump"
        # outbound to its own service: found over mDNS (its own announcement), through its inbound
        status, body = wait_until(lambda: (r := proxied(f"http://{host}:{outbound}", "http://users/users/bob"))[0] == 200 and r)
        assert body["user"]["name"] == "Bob"
    finally:
        m.stop()
