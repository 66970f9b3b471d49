"""Forwarded: the upstream learns the client's address, scheme and host from the proxy, and never
from what the client says about itself at the edge."""

from __future__ import annotations

import json

from addons import keys


def config(app: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{app}"]}}}}}}
routes:
  - name: users
    match: {{path: {{prefix: /users}}}}
    forward: {{service: users}}
"""


CLAIMS = {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example",
          "x-forwarded-port": "443", "x-forwarded-prefix": "/admin", "x-forwarded-path": "/admin",
          "x-real-ip": "10.0.0.1", "forwarded": "for=1.2.3.4;host=evil;proto=https"}


async def test_at_the_edge_what_the_client_says_about_itself_is_replaced(gateway, upstream_app):
    app = await upstream_app("users")
    async with gateway(config(app)) as gw:
        flow = await gw.send("/users/a", host="shop.test",
                             headers={"x-forwarded-for": "10.9.9.9", **CLAIMS, "x-kept": "1"})
        got = json.loads(flow.response.content)["headers"]
        assert got["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"  # appended: the last entry is ours
        assert (got["x-forwarded-proto"], got["x-forwarded-host"]) == ("http", "shop.test")
        for name in ("x-forwarded-port", "x-forwarded-prefix", "x-forwarded-path", "x-real-ip",
                     "forwarded"):
            assert name not in got, name
        assert got["x-kept"] == "1"
        said = [what for who, what in keys.get(flow).decisions if who == "forwarded"]
        assert said == [f"removed {name} sent by the client" for name in CLAIMS]


async def test_every_spelling_and_repetition_of_a_claim_is_removed(gateway, upstream_app):
    app = await upstream_app("users")
    async with gateway(config(app)) as gw:
        flow = await gw.send("/users/a", host="shop.test", headers=[
            ("X-Forwarded-Host", "evil.example"), ("X-REAL-IP", "10.0.0.1"),
            ("x-forwarded-host", "evil2.example"), ("X-Forwarded-For", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2")])
        got = json.loads(flow.response.content)["headers"]
        assert got["x-forwarded-host"] == "shop.test" and "x-real-ip" not in got
        assert got["x-forwarded-for"] == "1.1.1.1, 2.2.2.2, 127.0.0.1"


async def test_without_claims_the_proxys_fields_and_no_decision(gateway, upstream_app):
    app = await upstream_app("users")
    async with gateway(config(app)) as gw:
        flow = await gw.send("/users/a", host="shop.test")
        got = json.loads(flow.response.content)["headers"]
        assert (got["x-forwarded-for"], got["x-forwarded-proto"], got["x-forwarded-host"]) == (
            "127.0.0.1", "http", "shop.test")
        assert not [who for who, _ in keys.get(flow).decisions if who == "forwarded"]


async def test_at_a_sidecar_inbound_what_the_edge_said_stays(sidecar, upstream_app):
    app = await upstream_app("the-app")
    async with sidecar(config(app), f"service=users,app=127.0.0.1:{app},inbound=16006") as sc:
        inbound = "reverse:http://127.0.0.1:9@127.0.0.1:16006"
        flow = await sc.send("/users/a", host="users", mode=inbound,
                             headers={"x-forwarded-for": "10.0.0.1", **CLAIMS})
        got = json.loads(flow.response.content)["headers"]
        assert got["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert {name: got.get(name) for name in CLAIMS} == CLAIMS
        assert not [who for who, _ in keys.get(flow).decisions if who == "forwarded"]
