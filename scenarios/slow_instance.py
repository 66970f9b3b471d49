"""slow-instance: one of three catalog instances turns slow (1 s per request) under steady load.

The catalog route has a per-try timeout of 200 ms (a lookup normally takes a few milliseconds) and
3 attempts; a per-try timeout counts as a failure, so it is retried on another instance, and
outlier detection (on by default: 5 failures in a row) ejects the slow instance.

SLO: at least 99.9 % of the requests succeed, and their p99 latency stays within 300 ms (the
per-try timeout plus 100 ms) although one instance in three takes 1 s; the slow instance is ejected.
"""

from __future__ import annotations

import sys
import time

from tools.scenario import Report, Run, main, ms, percentile

from . import _mesh

TITLE = "one of three catalog instances turns slow (1 s per request) under steady load"
PER_TRY = 0.2
SLOW = 1.0
SNAPPY = {"timeout": {"request": "3s", "per_try": f"{PER_TRY * 1000:g}ms"},
          "retries": {"attempts": 3, "retry_on": ["5xx", "connect-failure", "reset"],
                      "backoff": {"base": "5ms", "max": "50ms"}}}


def run(r: Run) -> Report:
    seconds, slow_at = r.pick(25.0, 5.0), r.pick(5.0, 1.5)
    rate = 50
    with _mesh.sidecar_mesh(r, policies={"snappy": SNAPPY}, catalog_policies=["snappy"]) as m:
        instances, watched = _mesh.start_catalogs(r, m)
        slow = instances[0]
        r.say(f"load: {rate} req/s for {seconds:g} s; {slow.name} answers in {SLOW:g} s from {slow_at:g} s on")
        load = _mesh.catalog_load(m, rate)
        try:
            time.sleep(slow_at)
            slowed = time.time()
            slow.knobs(latency=SLOW)
            _mesh.rest(load, seconds)
        finally:
            samples = load.stop()
            watched.stop()
        cluster = m.status()["clusters"]["catalog/v1"]
        hits = {s.name: s.knobs()["hits"] for s in instances}

    report = Report("slow-instance", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances)
    report.load = (_mesh.catalog_load_text(rate, seconds) + "; "
                   f"route: per-try timeout {PER_TRY * 1000:g} ms, 3 attempts")
    report.fault = f"{slow.name} answers every request after {SLOW:g} s, from {slowed - load.started:.1f} s on"
    report.slo = f"≥ 99.9 % succeed; p99 ≤ {(PER_TRY + 0.1) * 1000:g} ms; the slow instance is ejected"
    report.phases = [("before", load.started, slowed), ("one instance slow", slowed, float("inf"))]
    p99 = percentile([s.latency for s in samples if s.status], 99)
    ejected = [e for e in cluster.get("ejected", [])]
    report.figure("ejected endpoints at the end", ", ".join(ejected) or "none")
    report.figure("requests each instance's app received", ", ".join(f"{k} {v}" for k, v in hits.items()))
    report.figure("requests that needed a retry", sum(1 for s in samples if s.attempts > 1))
    report.check_success("≥ 99.9 % of all requests succeed", samples, 0.999)
    report.check(f"p99 latency ≤ {(PER_TRY + 0.1) * 1000:g} ms (per-try timeout + 100 ms)",
                 p99 is not None and p99 <= PER_TRY + 0.1, ms(p99))
    report.check(f"{slow.name} ejected by outlier detection", slow.inbound in ejected,
                 f"ejected: {', '.join(ejected) or 'none'}")
    return report


if __name__ == "__main__":
    sys.exit(main("slow-instance"))
