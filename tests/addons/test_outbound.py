"""Outbound: the app's HTTP proxy. The host names a service; every version's instances take it."""

from __future__ import annotations

import collections
import json

from mitmproxy.proxy.layers.http import HttpConnectHook
from mitmproxy.test import tflow, tutils

from addons import keys

OUTBOUND = "regular@127.0.0.1:15001"


def config(app: int, v1: int, v2: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  orders: {{versions: {{v1: {{}}}}}}
  catalog:
    versions:
      v1: {{endpoints: ["127.0.0.1:{v1}"]}}
      v2: {{endpoints: ["127.0.0.1:{v2}"]}}
"""


async def test_outbound_routes_by_host_to_every_instance(sidecar, upstream_app):
    app, v1, v2 = await upstream_app("orders"), await upstream_app("v1"), await upstream_app("v2")
    async with sidecar(config(app, v1, v2), f"service=orders,app=127.0.0.1:{app}") as sc:
        names = collections.Counter()
        for _ in range(4):
            flow = await sc.send("/items/1", host="catalog", target="catalog", mode=OUTBOUND)
            assert flow.response.status_code == 200
            body = json.loads(flow.response.content)
            names[body["name"]] += 1
            assert body["path"] == "/items/1" and "x-forwarded-for" not in body["headers"]
        assert names == {"v1": 2, "v2": 2}
        st = keys.get(flow)
        assert st.direction == keys.OUTBOUND and st.cluster == "catalog"
        assert flow.metadata[keys.ROUTE] == "outbound.catalog"


async def test_unknown_service_is_a_json_404(sidecar, upstream_app):
    app = await upstream_app("orders")
    async with sidecar(config(app, app, app), f"service=orders,app=127.0.0.1:{app}") as sc:
        flow = await sc.send("/", host="nosuch:8080", target="nosuch", mode=OUTBOUND)
        assert flow.response.status_code == 404
        body = json.loads(flow.response.content)
        assert body["error"] == "no_route"
        assert body["reason"] == "no service named 'nosuch' in mesh 'default'; known services: catalog, orders"
        flow = await sc.send("/", host="local", target="local", mode=OUTBOUND)  # never the app itself
        assert flow.response.status_code == 404


async def test_connect_is_refused(sidecar, upstream_app):
    app = await upstream_app("orders")
    async with sidecar(config(app, app, app), f"service=orders,app=127.0.0.1:{app}") as sc:
        flow = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="catalog", port=443, authority=b"catalog:443"))
        await sc.tctx.master.addons.handle_lifecycle(HttpConnectHook(flow))
        assert flow.response.status_code == 405
        assert json.loads(flow.response.content)["error"] == "connect_not_supported"


# ---------------------------------------------------------------------------------------------
# in a pod: connections captured by nftables, the service named by its virtual address

TRANSPARENT = "transparent@127.0.0.1:15001"


def pod_config(app: int, v1: int, v2: int, egress: str) -> str:
    return config(app, v1, v2).replace("orders: {versions: {v1: {}}}", f"orders: {{versions: {{v1: {{}}}}, egress: {egress}}}")


async def test_captured_call_goes_to_the_service_of_its_virtual_address(sidecar, upstream_app):
    from mesh.core.sidecar import virtual_addresses

    app, v1, v2 = await upstream_app("orders"), await upstream_app("v1"), await upstream_app("v2")
    async with sidecar(pod_config(app, v1, v2, "deny"), f"service=orders,app=127.0.0.1:{app},capture=transparent") as sc:
        vip = virtual_addresses(["catalog", "orders"])["catalog"]
        # the Host header says nothing useful (an IP, or nothing): the original destination decides
        flow = await sc.send("/items/1", host=vip, target=vip, mode=TRANSPARENT, sockname=(vip, 80))
        assert flow.response.status_code == 200, flow.response.content
        assert json.loads(flow.response.content)["name"] in ("v1", "v2")
        assert flow.metadata[keys.ROUTE] == "outbound.catalog"


async def test_egress_deny_refuses_a_destination_outside_the_mesh(sidecar, upstream_app):
    app = await upstream_app("orders")
    async with sidecar(pod_config(app, app, app, "deny"), f"service=orders,app=127.0.0.1:{app},capture=transparent") as sc:
        flow = await sc.send("/", host="example.com", target="10.9.9.9", mode=TRANSPARENT, sockname=("10.9.9.9", 80))
        assert flow.response.status_code == 403
        body = json.loads(flow.response.content)
        assert body["error"] == "egress_denied" and "example.com:80 is not a service of mesh" in body["reason"]
        assert keys.EGRESS not in flow.metadata


async def test_egress_allow_passes_through_to_the_original_destination(sidecar, upstream_app):
    app = await upstream_app("orders")
    async with sidecar(pod_config(app, app, app, "allow"), f"service=orders,app=127.0.0.1:{app},capture=transparent") as sc:
        flow = await sc.send("/x", host="example.com", target="10.9.9.9", mode=TRANSPARENT, sockname=("10.9.9.9", 8081))
        # no answer of the proxy's own: mitmproxy connects to where the app was going
        assert flow.response is None
        assert (flow.request.host, flow.request.port) == ("10.9.9.9", 8081)
        assert flow.metadata[keys.EGRESS] == "10.9.9.9:8081"


def test_virtual_addresses_are_stable_and_distinct():
    from mesh.core.sidecar import VIRTUAL_NET, virtual_addresses
    import ipaddress

    names = [f"svc{i}" for i in range(2000)]
    vips = virtual_addresses(names)
    assert len(set(vips.values())) == 2000
    assert all(ipaddress.ip_address(v) in ipaddress.ip_network(VIRTUAL_NET) for v in vips.values())
    fewer = virtual_addresses(names[:1000])  # adding services moves no other one (barring collisions)
    moved = [n for n in fewer if fewer[n] != vips[n]]
    assert len(moved) < 40, moved
    assert virtual_addresses(["catalog", "payments"]) == virtual_addresses(["payments", "catalog"])
