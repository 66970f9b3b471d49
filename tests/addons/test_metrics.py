"""Metrics: every answered request is counted with bounded labels and timed; /metrics serves them."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.conftest import BASE

CONFIG = BASE + """
  - {name: health, match: {path: {exact: /healthz}}, direct: {status: 200}}
"""


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_are_counted_by_route_service_and_exact_status(gateway, upstream_app):
    labels = dict(direction="edge", route="health", service="", cluster="", version="", code="200")
    before = value("mitmesh_requests_total", **labels)
    missing = dict(labels, route="", code="404")
    before_404 = value("mitmesh_requests_total", **missing)
    up = await upstream_app("users")
    users = dict(direction="edge", route="users", service="users", cluster="users/v1", version="v1", code="200")
    before_users = value("mitmesh_requests_total", **users)
    async with gateway(CONFIG.replace("127.0.0.1:19001", f"127.0.0.1:{up}")) as gw:
        for _ in range(3):
            await gw.send("/healthz")
        await gw.send("/no/such/path/123")
        await gw.send("/users/alice")
        assert value("mitmesh_requests_total", **labels) == before + 3
        assert value("mitmesh_requests_total", **missing) == before_404 + 1  # the raw path is no label
        assert value("mitmesh_requests_total", **users) == before_users + 1
        assert value("mitmesh_request_duration_seconds_count", direction="edge", route="health",
                     service="", cluster="", version="") >= 3
        status, ctype, body = gw.state.admin_handlers["/metrics"]("GET", "")
        assert status == 200 and ctype.startswith("text/plain")
        text = body.decode()
        assert ('mitmesh_requests_total{cluster="",code="200",direction="edge",route="health",service="",'
                'version=""}') in text
        assert 'mitmesh_registry_endpoints{cluster="catalog/v1"} 2.0' in text
        assert 'mitmesh_endpoints_healthy{cluster="users/v1"} 1.0' in text
        assert 'mitmesh_upstream_requests_active{cluster="users/v1"} 0.0' in text
        assert "/no/such/path" not in text


async def test_a_sidecars_series_name_its_service(sidecar, upstream_app):
    app = await upstream_app("the-app")
    inbound = dict(direction="inbound", route="inbound", service="users", cluster="local", version="v2", code="200")
    before = value("mitmesh_requests_total", **inbound)
    config = "version: 1\ngateway: {listeners: [{name: public, port: 18080}]}\n"
    async with sidecar(config, f"service=users,version=v2,app=127.0.0.1:{app},inbound=16006") as sc:
        await sc.send("/users/alice", host="users", mode="reverse:http://127.0.0.1:9@127.0.0.1:16006")
    assert value("mitmesh_requests_total", **inbound) == before + 1
