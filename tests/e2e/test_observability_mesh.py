"""Observability across the mesh: one trace with every hop (gateway → orders' sidecar → orders →
its outbound sidecar → catalog's and payments' sidecars), a real Prometheus scraping the gateway
and every sidecar, found through the gateway's HTTP service discovery with the shipped config, and
every query of the shipped alert rules and dashboard answered."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request

import pytest
import yaml

from tools import launcher
from tools.otlp import Receiver

from .conftest import Mesh, get, sidecar_config, wait_until
from .prom import Prometheus, binary

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
            'sum by (direction) (rate(mitmesh_requests_total{code=~"2.."}[5s]))')}
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


OBSERVABILITY = launcher.ROOT / "observability"
THRESHOLD = re.compile(r"(==|!=|>=|<=|>|<)\s*-?[\d.]+(e[+-]?\d+)?")


def shipped_prometheus(gateway_admin: str) -> dict:
    """observability/prometheus.yml as shipped, discovering this mesh through its gateway's admin
    listener, scraping and evaluating every second."""
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(OBSERVABILITY / f) for f in config["rule_files"]]
    for sd in config["scrape_configs"][0]["http_sd_configs"]:
        sd["url"] = sd["url"].replace("http://127.0.0.1:9901", gateway_admin)
        sd["refresh_interval"] = "1s"
    return config


@pytest.fixture(scope="module")
def scraped(observed_mesh):
    """The shipped Prometheus config on the observed mesh, after a few seconds of orders, a
    refusal and a missing route."""
    m = observed_mesh
    (m.tmp / "shipped").mkdir()
    with Prometheus(m.tmp / "shipped", config=shipped_prometheus(m.admin)) as prom:
        wait_until(lambda: prom.ready() and prom.scalar("count(up == 1)") == 1 + len(m.instances),
                   timeout=20, interval=0.2)  # every proxy discovered and scraped
        stop = time.monotonic() + 6
        while time.monotonic() < stop:
            assert get(m.url + "/orders", data=b'{"item_id": 2}')[0] == 200
            get(m.url + "/no-such-route")
            time.sleep(0.05)
        time.sleep(2)  # two more scrapes and rule evaluations
        yield prom


def test_http_service_discovery_lists_every_proxy_with_its_labels(observed_mesh, scraped):
    m = observed_mesh
    with urllib.request.urlopen(m.admin + "/prometheus/targets", timeout=5) as r:
        groups = json.load(r)
    gateway, *sidecars = groups
    assert gateway["targets"] == [m.admin.removeprefix("http://")]
    assert gateway["labels"] == {"mesh": m.config["mesh"]["id"], "proxy": "gateway", "instance": "gateway",
                                 "zone": "a"}
    assert {(g["targets"][0], g["labels"]["service"], g["labels"]["instance"], g["labels"]["proxy"])
            for g in sidecars} == {(s.admin.removeprefix("http://"), s.inst.service, s.name, "sidecar")
                                   for s in m.instances}
    active = scraped.api("targets?state=active")["activeTargets"]
    assert {t["labels"]["instance"]: (t["health"], t["labels"].get("service")) for t in active} == {
        "gateway": ("up", None), **{s.name: ("up", s.inst.service) for s in m.instances}}


def test_each_query_of_the_alerts_and_the_dashboard_returns_series(scraped):
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    queries = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                queries[rule["record"]] = rule["expr"]
            else:  # the alert's expression with each threshold made to hold: it must find series
                assert THRESHOLD.search(rule["expr"]), rule
                queries[rule["alert"]] = THRESHOLD.sub(">= -Inf", rule["expr"])
    dashboard = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$service", ".*")
            queries[f"{panel['title']} {target['refId']}"] = expr
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"]).groups()
            queries[f"${var['name']}"] = f"count by ({label}) ({metric})"
    empty = [name for name, expr in queries.items() if not scraped.query(expr)]
    assert not empty, empty
    assert len(queries) >= 20
    # the series name the service they were for, and their exact status
    codes = {(r["metric"].get("direction"), r["metric"].get("service"), r["metric"]["code"])
             for r in scraped.query("mitmesh:requests:rate1m")}
    assert {("edge", "orders", "200"), ("inbound", "catalog", "200"), ("outbound", "payments", "200"),
            ("edge", None, "404")} <= codes, codes


def test_promtool_accepts_the_shipped_config_and_rules():
    out = subprocess.run([binary("promtool"), "check", "config", str(OBSERVABILITY / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 11 rules found" in out.stdout + out.stderr
