"""Observability across the mesh: one trace with every hop (gateway → orders' sidecar → orders →
its outbound sidecar → catalog's and payments' sidecars), and a real Prometheus scraping the
gateway and every sidecar."""

from __future__ import annotations

import json
import threading
import time

import pytest

from mesh.otlp import Receiver

from .conftest import Mesh, get, sidecar_config, wait_until
from .prom import Prometheus

SERVER, CLIENT = 2, 3


@pytest.fixture(scope="module")
def observed_mesh(tmp_path_factory):
    with Receiver() as receiver:
        m = Mesh(tmp_path_factory.mktemp("observed-mesh"), {})
        m.config = sidecar_config(f"{m.net}.1")
        m.config["observability"] = {"tracing": {"otlp_endpoint": receiver.url},
                                     "access_log": {"path": "logs/access.log"}}
        m.write()
        try:
            m.start_gateway()
            m.instances = m.start_instances({"service": "orders"}, {"service": "catalog"},
                                            {"service": "payments"})
            m.wait_converged(m.instances, 3)
            m.receiver = receiver
            yield m
        finally:
            m.stop()


def test_one_trace_through_every_sidecar(observed_mesh):
    m = observed_mesh
    trace, parent = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    status, body, _ = get(m.url + "/orders", data=b'{"item_id": 1}',
                          headers={"traceparent": f"00-{trace}-{parent}-01"})
    assert status == 200, body
    spans = wait_until(lambda: len(s := m.receiver.trace(trace)) >= 12 and s, timeout=10)
    children = {}
    for s in spans:
        children.setdefault(s.parent_id, []).append(s)

    def one(parent_id, kind, service):
        found = [s for s in children.get(parent_id, []) if s.kind == kind and s.service == service]
        assert len(found) == 1, (parent_id, kind, service, [(s.service, s.kind, s.name) for s in spans])
        return found[0]

    root = one(parent, SERVER, "mitmesh-gateway")  # the client's span is the root's parent
    assert root.name == "POST orders"
    hop = one(root.span_id, CLIENT, "mitmesh-gateway")
    inbound = one(hop.span_id, SERVER, "orders.sidecar")
    assert inbound.attributes["mitmesh.direction"] == "inbound"
    to_app = one(inbound.span_id, CLIENT, "orders.sidecar")
    # the orders app passed the context on to both of its calls, through its outbound listener
    outbound = [s for s in children.get(to_app.span_id, []) if s.kind == SERVER]
    assert sorted(s.attributes["mitmesh.direction"] for s in outbound) == ["outbound", "outbound"]
    reached = set()
    for out in outbound:
        call = one(out.span_id, CLIENT, "orders.sidecar")
        service = call.attributes["mitmesh.cluster"]
        far = one(call.span_id, SERVER, f"{service}.sidecar")
        one(far.span_id, CLIENT, f"{service}.sidecar")
        reached.add(service)
    assert reached == {"catalog", "payments"}
    assert len(spans) == 12
    # every proxy's access log lines of this request carry the trace id
    lines = [json.loads(line) for f in (m.tmp / "logs").glob("access.log")
             for line in f.read_text().splitlines()]
    assert {e["trace_id"] for e in lines if e["request_id"] == body["request_id"]} == {trace}


def test_prometheus_scrapes_gateway_and_sidecars(observed_mesh):
    m = observed_mesh
    targets = [m.admin.removeprefix("http://")] + [s.admin.removeprefix("http://") for s in m.instances]
    with Prometheus(m.tmp, targets) as prom:
        wait_until(prom.ready, timeout=20, interval=0.2)
        seconds, sent = 8.0, []
        stop = time.monotonic() + seconds

        def drive():  # about 10 orders a second; each calls catalog and payments through sidecars
            while time.monotonic() < stop:
                t = time.monotonic()
                sent.append(get(m.url + "/orders", data=b'{"item_id": 2}')[0])
                time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))

        driver = threading.Thread(target=drive)
        driver.start()
        time.sleep(7.5)
        by_direction = {r["metric"]["direction"]: float(r["value"][1]) for r in prom.query(
            'sum by (direction) (rate(mitmesh_requests_total{code="2xx"}[5s]))')}
        p50 = prom.scalar('histogram_quantile(0.5, sum by (le) (rate('
                          'mitmesh_request_duration_seconds_bucket{direction="edge",route="orders"}[5s])))')
        driver.join()
    assert set(sent) == {200}
    achieved = len(sent) / seconds
    edge = by_direction["edge"]
    assert abs(edge - achieved) / achieved < 0.25, (by_direction, achieved)
    # each order: one inbound at orders, one at catalog and one at payments; two outbound at orders
    assert abs(by_direction["inbound"] - 3 * edge) / (3 * edge) < 0.25, by_direction
    assert abs(by_direction["outbound"] - 2 * edge) / (2 * edge) < 0.25, by_direction
    assert p50 is not None and 0.0005 < p50 < 0.25, p50  # an order's three hops, on loopback
