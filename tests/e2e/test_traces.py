"""`mitmesh traces` as a user runs it: the demo gateway exports to it, and it prints the trace of one
order (the orders app calls catalog and payments back through the gateway) as a tree of hops."""

from __future__ import annotations

import re

from mesh.runtime import procs

from .conftest import Mesh, demo_config, get


def test_mitmesh_traces_prints_one_request_as_a_tree_of_hops(tmp_path):
    port = procs.free_port()
    traces = procs.spawn("traces", procs.python("-m", "mesh.cli", "traces", "--port", str(port),
                                                "--count", "1", "--settle", "1"), log_dir=tmp_path)
    config = demo_config()
    config["observability"] = {"tracing": {"otlp_endpoint": f"http://127.0.0.1:{port}/v1/traces"}}
    m = Mesh(tmp_path, config)
    m.write()
    try:
        procs.wait_log(traces, "listening on ")
        m.start_services()
        m.start_gateway()
        status, body, _ = get(m.url + "/orders", data=b'{"item_id": 2}')
        assert status == 200, body
        assert traces.proc.wait(20) == 0  # it printed one trace and stopped
    finally:
        m.stop()
        traces.stop()
    lines = traces.log.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trace "))
    tree = lines[header:]
    assert re.fullmatch(r"trace [0-9a-f]{32}: 6 spans, [\d.]+ ms", tree[0]), tree
    assert re.fullmatch(r"└─ mitmesh-gateway  POST orders  200  [\d.]+ ms  \(\+0\.0 ms\)", tree[1]), tree
    host = m.url.removeprefix("http://")
    assert tree[2] == f"   │  · router: route orders matched POST /orders on host {host}"
    # the order's hop, then the two calls the orders app made back through the gateway, nested
    hops = [re.sub(r"  [\d.]+ ms  \(\+[\d.]+ ms\)$", "", line) for line in tree if "─" in line]
    ends = {name: svc["versions"]["v1"]["endpoints"] for name, svc in m.config["services"].items()}
    catalog = next((e for e in ends["catalog"] if e in hops[3]), "one of catalog/v1's endpoints")
    assert hops == [
        "└─ mitmesh-gateway  POST orders  200",
        f"   └─ mitmesh-gateway  orders/v1 attempt 1 → {ends['orders'][0]}  200",
        "      ├─ mitmesh-gateway  GET catalog  200",
        f"      │  └─ mitmesh-gateway  catalog/v1 attempt 1 → {catalog}  200",
        "      └─ mitmesh-gateway  POST payments  200",
        f"         └─ mitmesh-gateway  payments/v1 attempt 1 → {ends['payments'][0]}  200",
    ], tree
    assert "      │  │  · router: route catalog matched GET /catalog/items/2 on host " + host in tree
