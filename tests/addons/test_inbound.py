"""Inbound: a sidecar's inbound listener sends every request to its local app, and only there."""

from __future__ import annotations

import json

from addons import keys


def config(app: int, other: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{other}"]}}}}}}
"""


async def test_inbound_goes_to_the_local_app_only(sidecar, upstream_app):
    app = await upstream_app("the-app")
    other = await upstream_app("another-users-instance")
    async with sidecar(config(app, other), f"service=users,app=127.0.0.1:{app},inbound=16006") as sc:
        flow = await sc.send("/users/alice?x=1", host="users", mode="reverse:http://127.0.0.1:9@127.0.0.1:16006",
                             headers={"x-forwarded-for": "10.0.0.1", "x-forwarded-proto": "https"})
        assert flow.response.status_code == 200
        body = json.loads(flow.response.content)
        assert body["name"] == "the-app" and body["path"] == "/users/alice?x=1"
        assert body["headers"]["host"] == "users"
        # a hop inside the mesh: the caller's address is appended, the edge's scheme is kept
        assert body["headers"]["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert body["headers"]["x-forwarded-proto"] == "https"
        st = keys.get(flow)
        assert st.direction == keys.INBOUND and flow.metadata[keys.DIRECTION] == "inbound"
        assert st.cluster == "local" and [who for who, _ in st.decisions] == ["inbound", "forward"]
        last = sc.state.recent.latest()[-1]
        assert last["direction"] == "inbound" and last["status"] == 200


async def test_the_services_caller_side_policies_are_not_applied_again_at_its_inbound(sidecar, upstream_app):
    """Retries, faults, breakers and outlier detection of a service act at its callers, per instance:
    its own sidecar neither retries its one app, nor injects the fault a second time, nor trips."""
    from aiohttp import web

    calls: list = []

    async def failing(request):
        calls.append(request.path)
        return web.json_response({"error": "down"}, status=503)

    app = await upstream_app("the-app", handler=failing)
    text = f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  users:
    versions: {{v1: {{}}}}
    policies: [calls]
    circuit_breaker: {{fail_max: 1, reset_timeout: 30s}}
    fault: {{abort: {{status: 500, percentage: 100}}}}
policies:
  calls:
    retries: {{attempts: 3, retry_on: [5xx]}}
    fault: {{delay: {{fixed: 1s}}}}
"""
    async with sidecar(text, f"service=users,app=127.0.0.1:{app},inbound=16006") as sc:
        flows = [await sc.send("/users/alice", host="users", mode="reverse:http://127.0.0.1:9@127.0.0.1:16006")
                 for _ in range(3)]
        # the app's own 503, once per request: no retry, no injected 500 or delay, no open breaker
        assert [f.response.status_code for f in flows] == [503, 503, 503]
        assert len(calls) == 3 and all(f.response.headers["x-mitmesh-attempts"] == "1" for f in flows)
        assert all(json.loads(f.response.content) == {"error": "down"} for f in flows)
        local = sc.state.status()["clusters"]["local"]
        assert "breakers" not in local and "ejected" not in local
