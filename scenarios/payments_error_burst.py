"""payments-error-burst: two of three payments instances answer 503 to every charge for a while.

Orders are placed through the gateway (POST /orders); the orders app charges through its sidecar,
which applies the payments service's policy (`services.payments.policies`): a 503 from payments
means the charge was refused before it was made, so the route opts in to retrying it, POST as it is
(`retriable-status-codes: [503]`, `non_idempotent: true`, 3 attempts, each on another instance).
Outlier detection ejects a failing instance; the retry budget (20 % of requests plus 10 per second)
bounds how many extra calls the burst can cause.

SLO: 100 % of the orders succeed (with three attempts on three instances one of them is the healthy
one), and the calls payments receives stay within the budget: at most the orders plus 20 % plus
10 per second of the run.
"""

from __future__ import annotations

import json
import sys
import time

from tools.scenario import Report, Run, main
from tools.testbed import Load

from . import _mesh

TITLE = "two of three payments instances answer 503 to every charge for a while"
CHARGE_RETRIES = {"retries": {"attempts": 3, "retry_on": ["retriable-status-codes"],
                              "retriable_status_codes": [503], "non_idempotent": True,
                              "backoff": {"base": "5ms", "max": "50ms"}},
                  "timeout": {"request": "5s", "per_try": "1s"}}
BUDGET = {"ratio": 0.2, "min_per_second": 10, "ttl": "10s"}


def run(r: Run) -> Report:
    seconds, burst_at, burst = r.pick(30.0, 5.5), r.pick(5.0, 1.5), r.pick(10.0, 2.5)
    rate = 20
    services = {"payments": {"policies": ["charge-retries"], "retry_budget": BUDGET}}
    with _mesh.sidecar_mesh(r, services=services, policies={"charge-retries": CHARGE_RETRIES}) as m:
        r.say("starting the gateway, orders, catalog and three payments instances with their sidecars")
        instances = _mesh.start_orders(m)
        payments = instances[2:]
        bad = payments[:2]
        watched = _mesh.proxies(m, instances)
        watched.baseline()
        before = {s.name: s.knobs()["hits"] for s in payments}
        r.say(f"load: {rate} orders/s for {seconds:g} s; {bad[0].name} and {bad[1].name} answer 503 "
              f"from {burst_at:g} s for {burst:g} s")
        watched.start()
        load = Load(m.url + "/orders", threads=4, rate=rate, method="POST",
                    body=json.dumps({"item_id": 1, "quantity": 1}).encode()).start()
        try:
            time.sleep(burst_at)
            began, ended, _ = _mesh.answer_errors(bad, burst)
            r.say("the burst is over")
            _mesh.rest(load, seconds)
        finally:
            samples = load.stop()
            watched.stop()
        calls = {s.name: s.knobs()["hits"] - before[s.name] for s in payments}

    report = Report("payments-error-burst", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances)
    report.load = (f"POST /orders through the gateway, {rate} req/s on 4 connections for {seconds:g} s; "
                   f"each order: orders → catalog, orders → payments (through the sidecars)")
    report.fault = (f"{bad[0].name} and {bad[1].name} answer 503 to every charge from "
                    f"{began - load.started:.1f} s to {ended - load.started:.1f} s")
    budget = 0.2 * len(samples) + 10 * seconds
    report.slo = "100 % of orders succeed; calls to payments ≤ orders + 20 % + 10/s (the retry budget)"
    report.phases = [("before the burst", load.started, began), ("burst", began, ended),
                     ("after the burst", ended, float("inf"))]
    n = len(samples)
    total = sum(calls.values())
    charged = sum(1 for s in samples if s.ok)
    by_instance = {}
    for s in samples:
        if s.ok and s.body:
            who = s.body.get("order", {}).get("payments")
            by_instance[who] = by_instance.get(who, 0) + 1
    report.figure("charges each payments app received", ", ".join(f"{k} {v}" for k, v in calls.items()))
    report.figure("orders charged by", ", ".join(f"{k} {v}" for k, v in sorted(by_instance.items())))
    report.check_success("100 % of the orders succeed", samples)
    report.check(f"calls to payments ≤ {n} + 20 % + 10/s × {seconds:g} s = {n + budget:.0f}",
                 total <= n + budget, f"{total} calls for {n} orders ({charged} charged)")
    return report


if __name__ == "__main__":
    sys.exit(main("payments-error-burst"))
