"""Forward: reaches a real upstream with rewrite and X-Forwarded-*, and turns failures into JSON."""

from __future__ import annotations

import asyncio
import json
import socket

from aiohttp import web

from addons import keys
from mesh.runtime import procs


def config(users_port: int, catalog_ports: list[int], timeout: str = "2s") -> str:
    eps = ", ".join(f'"127.0.0.1:{p}"' for p in catalog_ports)
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{users_port}"]}}}}}}
  catalog: {{versions: {{v1: {{endpoints: [{eps}]}}}}}}
routes:
  - name: users
    match: {{path: {{prefix: /users}}}}
    forward: {{service: users}}
    policies: [short]
  - name: catalog
    match: {{path: {{prefix: /catalog/}}}}
    forward: {{service: catalog, rewrite: {{prefix: /}}}}
policies:
  short: {{timeout: {{request: {timeout}}}}}
"""


async def test_forwards_with_rewrite_query_and_forwarded_headers(gateway, upstream_app):
    users = await upstream_app("users")
    cat1 = await upstream_app("cat1")
    cat2 = await upstream_app("cat2")
    async with gateway(config(users, [cat1, cat2])) as gw:
        flow = await gw.send("/catalog/items?page=2", host="shop.test", headers={"x-forwarded-for": "10.0.0.1"})
        assert flow.response.status_code == 200
        body = json.loads(flow.response.content)
        assert body["path"] == "/items?page=2"
        assert body["headers"]["host"] == "shop.test"
        assert body["headers"]["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert body["headers"]["x-forwarded-proto"] == "http"
        assert body["headers"]["x-forwarded-host"] == "shop.test"
        assert body["headers"]["x-request-id"] == flow.response.headers["x-request-id"]
        assert flow.metadata[keys.CLUSTER] == "catalog/v1"
        names = {json.loads((await gw.send("/catalog/x")).response.content)["name"] for _ in range(4)}
        assert names == {"cat1", "cat2"}  # round robin over both endpoints


async def test_post_body_is_forwarded(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users, [users])) as gw:
        flow = await gw.send("/users", method="POST", body=b'{"a": 1}')
        assert json.loads(flow.response.content)["body"] == '{"a": 1}'


async def test_refused_upstream_is_json_503(gateway):
    dead = procs.free_port()
    async with gateway(config(dead, [dead])) as gw:
        flow = await gw.send("/users")
        assert flow.response.status_code == 503
        body = json.loads(flow.response.content)
        assert body["error"] == "upstream_connect_failure"
        assert body["reason"] == "users/v1: no endpoint could be connected to (1 attempt)"
        # the address and the system's words are for the operator: decision log and logs only
        assert f"users/v1 endpoint 127.0.0.1:{dead}" in str(flow.metadata[keys.DECISIONS])
        assert str(dead) not in flow.response.text


async def test_slow_upstream_is_json_504_at_the_route_timeout(gateway, upstream_app):
    async def slow(request):
        await asyncio.sleep(2)
        return web.Response(text="late")

    users = await upstream_app("users", handler=slow)
    async with gateway(config(users, [users], timeout="200ms")) as gw:
        loop = asyncio.get_running_loop()
        start = loop.time()
        flow = await gw.send("/users")
        assert flow.response.status_code == 504
        assert json.loads(flow.response.content)["error"] == "upstream_timeout"
        assert loop.time() - start < 1.0


async def test_reset_upstream_is_json_502(gateway, upstream_app):
    async def reset(request):
        request.transport.abort()
        await asyncio.sleep(0.1)
        return web.Response(text="never")

    users = await upstream_app("users", handler=reset)
    async with gateway(config(users, [users])) as gw:
        flow = await gw.send("/users", method="POST")
        assert flow.response.status_code == 502
        assert json.loads(flow.response.content)["error"] == "upstream_reset"


async def test_refused_endpoint_is_ejected_and_another_takes_the_request(gateway, upstream_app):
    users = await upstream_app("users")
    good = await upstream_app("good")
    doomed = socket.create_server(("127.0.0.1", 0))  # passes its first health check, then dies
    dead = doomed.getsockname()[1]
    async with gateway(config(users, [dead, good])) as gw:
        catalog = gw.state.snapshot.clusters["catalog/v1"]
        await gw.state.checker.first_checks(catalog.endpoints, catalog.health_check)
        assert all(e.healthy for e in catalog.endpoints)
        doomed.close()
        names = [json.loads((await gw.send("/catalog/x", method="POST")).response.content)["name"]
                 for _ in range(4)]
        assert names == ["good"] * 4  # the request was never sent to the dead one: safe to resend
        ejected = gw.state.endpoints[("127.0.0.1", dead)]
        assert not ejected.healthy and "connect_failure" in ejected.detail
        flow = await gw.send("/catalog/x")
        assert keys.get(flow).attempts == 1  # no longer picked


def hashed(users: int, catalog_ports: list[int], hash_on: str) -> str:
    eps = ", ".join(f'"127.0.0.1:{p}"' for p in catalog_ports)
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{users}"]}}}}}}
  catalog:
    lb: {{policy: consistent_hash, hash_on: {hash_on}}}
    versions: {{v1: {{endpoints: [{eps}]}}}}
routes:
  - name: catalog
    match: {{path: {{prefix: /catalog/}}}}
    forward: {{service: catalog, rewrite: {{prefix: /}}}}
"""


async def test_consistent_hash_on_a_header_or_cookie(gateway, upstream_app):
    ports = [await upstream_app(f"c{i}") for i in range(3)]
    for hash_on, header in (("{header: x-user}", "x-user"), ("{cookie: session}", "cookie")):
        async with gateway(hashed(ports[0], ports, hash_on)) as gw:
            owners = {}
            for user in (f"u{i}" for i in range(30)):
                value = user if header == "x-user" else f"session={user}; other=1"
                seen = {json.loads((await gw.send("/catalog/x", headers={header: value})).response.content)["name"]
                        for _ in range(3)}
                assert len(seen) == 1
                owners[user] = seen.pop()
            assert len(set(owners.values())) == 3


async def test_consistent_hash_on_the_source_ip(gateway, upstream_app):
    ports = [await upstream_app(f"c{i}") for i in range(3)]
    async with gateway(hashed(ports[0], ports, "{source_ip: true}")) as gw:
        names = {json.loads((await gw.send("/catalog/x")).response.content)["name"] for _ in range(10)}
        assert len(names) == 1  # one downstream address, one endpoint
