"""Metrics: every answered request is counted with bounded labels and timed; /metrics serves them."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.conftest import BASE

CONFIG = BASE + """
  - {name: health, match: {path: {exact: /healthz}}, direct: {status: 200}}
"""


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_are_counted_by_route_and_code_class(gateway):
    labels = dict(direction="edge", route="health", cluster="", version="", code="2xx")
    before = value("mitmesh_requests_total", **labels)
    missing = dict(labels, route="", code="4xx")
    before_404 = value("mitmesh_requests_total", **missing)
    async with gateway(CONFIG) as gw:
        for _ in range(3):
            await gw.send("/healthz")
        await gw.send("/no/such/path/123")
        assert value("mitmesh_requests_total", **labels) == before + 3
        assert value("mitmesh_requests_total", **missing) == before_404 + 1  # the raw path is no label
        assert value("mitmesh_request_duration_seconds_count", direction="edge", route="health",
                     cluster="", version="") >= 3
        status, ctype, body = gw.state.admin_handlers["/metrics"]("GET", "")
        assert status == 200 and ctype.startswith("text/plain")
        text = body.decode()
        assert 'mitmesh_requests_total{cluster="",code="2xx",direction="edge",route="health",version=""}' in text
        assert 'mitmesh_registry_endpoints{cluster="catalog/v1"} 2.0' in text
        assert "/no/such/path" not in text
