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
        assert sc.state.recent[-1]["direction"] == "inbound" and sc.state.recent[-1]["status"] == 200
