"""breaker: every catalog instance fails for a while; the circuit breakers trip, then recover.

The gateway has a circuit breaker per catalog endpoint (`fail_max: 5`, `reset_timeout: 2s`) and
the route retries 5xx on other endpoints (3 attempts, within the retry budget). When all three
instances answer 503, each breaker opens after fail_max failures and the gateway answers a fast
`503 circuit_open` without calling them; every reset_timeout one request probes each endpoint
(half-open). When the instances recover, the next probe closes the breaker.

SLO (issue 7's acceptance): the breakers stop the calls: during the outage the instances get at most
fail_max calls each (plus those already in flight, and one probe per breaker per reset_timeout);
the proxy answers the rest itself (503 circuit_open); after the instances recover, 100 % of the
requests succeed from reset_timeout + 1 s on.
"""

from __future__ import annotations

import math
import sys
import time

from tools.scenario import Report, Run, main, rate_text, success
from tools.testbed import Load

from . import _mesh

TITLE = "every catalog instance fails for a while: the circuit breakers trip, then recover"
FAIL_MAX, RESET = 5, 2.0
THREADS = 4


def run(r: Run) -> Report:
    seconds, outage_at, outage = r.pick(25.0, 7.5), r.pick(5.0, 1.0), r.pick(8.0, 2.0)
    rate = 40
    services = {"catalog": {"circuit_breaker": {"fail_max": FAIL_MAX, "reset_timeout": f"{RESET:g}s"}}}
    with _mesh.sidecar_mesh(r, services=services) as m:
        r.say("starting the gateway and three catalog instances with their sidecars")
        instances = _mesh.start(m, *_mesh.CATALOGS)
        watched = _mesh.watch(m, instances)
        r.say(f"load: {rate} req/s for {seconds:g} s; every instance answers 503 from {outage_at:g} s "
              f"for {outage:g} s")
        load = Load(m.url + "/catalog/items/1", threads=THREADS, rate=rate).start()
        try:
            time.sleep(outage_at)
            began = time.time()
            before = {s.name: s.knobs(error_rate=1.0, error_status=503)["hits"] for s in instances}
            time.sleep(outage)
            during = {s.name: s.knobs(error_rate=0.0)["hits"] - before[s.name] for s in instances}
            ended = time.time()
            r.say("the instances answer again")
            time.sleep(max(load.started + seconds - time.time(), 0))
        finally:
            samples = load.stop()
            watched.stop()
        breakers = m.status()["clusters"]["catalog/v1"].get("breakers", {})

    report = Report("breaker", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances)
    report.load = (f"GET /catalog/items/1 through the gateway, {rate} req/s on {THREADS} connections for "
                   f"{seconds:g} s; breakers fail_max {FAIL_MAX}, reset_timeout {RESET:g} s; 3 attempts on 5xx")
    report.fault = (f"every catalog instance answers 503 from {began - load.started:.1f} s "
                    f"to {ended - load.started:.1f} s")
    report.slo = (f"≤ {FAIL_MAX} calls per instance (+ in flight, + 1 probe per {RESET:g} s) during the outage; "
                  f"100 % success from {RESET:g} s + 1 s after recovery")
    settle = ended + RESET + 1
    report.phases = [("before the outage", load.started, began), ("outage", began, ended),
                     ("recovering", ended, settle), ("recovered", settle, float("inf"))]
    in_outage = report.during(began, ended)
    fast = sum(1 for s in in_outage if s.status == 503 and (s.body or {}).get("error") == "circuit_open")
    probes = math.ceil(outage / RESET)
    allowed = len(instances) * (FAIL_MAX + THREADS - 1 + probes)
    calls = sum(during.values())
    transitions = watched.by("mitmesh_breaker_transitions_total", "to")
    report.figure("calls each instance got during the outage", ", ".join(f"{k} {v}" for k, v in during.items()))
    report.figure("answered 503 circuit_open by the gateway", f"{fast} of {len(in_outage)} during the outage")
    report.figure("breakers at the end", ", ".join(f"{k} {v}" for k, v in breakers.items()) or "none")
    late_ok, late_n = success(report.during(settle))
    report.check(f"calls during the outage ≤ 3 × ({FAIL_MAX} + {THREADS - 1} in flight + {probes} probes)",
                 calls <= allowed, f"{calls} calls for {len(in_outage)} requests")
    report.check("the breakers opened: the gateway answered circuit_open itself",
                 transitions.get("open", 0) >= len(instances) and fast > 0,
                 f"{int(transitions.get('open', 0))} transitions to open, {fast} circuit_open answers")
    report.check(f"100 % succeed from {RESET:g} s + 1 s after the recovery", late_n and late_ok == late_n,
                 rate_text(late_ok, late_n))
    return report


if __name__ == "__main__":
    sys.exit(main("breaker"))
