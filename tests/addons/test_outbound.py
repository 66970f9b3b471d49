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
