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

from tools.scenario import Report, Run, main

from . import _mesh

TITLE = "every catalog instance fails for a while: the circuit breakers trip, then recover"
FAIL_MAX, RESET = 5, 2.0
THREADS = 4


def run(r: Run) -> Report:
    seconds, outage_at, outage = r.pick(25.0, 7.5), r.pick(5.0, 1.0), r.pick(8.0, 2.0)
    rate = 40
    services = {"catalog": {"circuit_breaker": {"fail_max": FAIL_MAX, "reset_timeout": f"{RESET:g}s"}}}
    with _mesh.sidecar_mesh(r, services=services) as m:
        instances, watched = _mesh.start_catalogs(r, m)
        r.say(f"load: {rate} req/s for {seconds:g} s; every instance answers 503 from {outage_at:g} s "
              f"for {outage:g} s")
        load = _mesh.catalog_load(m, rate, THREADS)
        try:
            time.sleep(outage_at)
            began, ended, during = _mesh.answer_errors(instances, outage)
            r.say("the instances answer again")
            _mesh.rest(load, seconds)
        finally:
            samples = load.stop()
            watched.stop()
        breakers = m.status()["clusters"]["catalog/v1"].get("breakers", {})

    report = Report("breaker", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances)
    report.load = (_mesh.catalog_load_text(rate, seconds, THREADS)
                   + f"; breakers fail_max {FAIL_MAX}, reset_timeout {RESET:g} s; 3 attempts on 5xx")
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
    report.check(f"calls during the outage ≤ 3 × ({FAIL_MAX} + {THREADS - 1} in flight + {probes} probes)",
                 calls <= allowed, f"{calls} calls for {len(in_outage)} requests")
    report.check("the breakers opened: the gateway answered circuit_open itself",
                 transitions.get("open", 0) >= len(instances) and fast > 0,
                 f"{int(transitions.get('open', 0))} transitions to open, {fast} circuit_open answers")
    report.check_success(f"100 % succeed from {RESET:g} s + 1 s after the recovery", report.during(settle))
    return report


if __name__ == "__main__":
    sys.exit(main("breaker"))
