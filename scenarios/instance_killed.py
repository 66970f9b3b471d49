"""instance-killed: one of three catalog instances is killed with SIGKILL under steady load.

The gateway finds the three instances over mDNS and sends GET /catalog/items/1 with the route policy
`resilient` (per-try timeout 1 s, 3 attempts on 5xx, connect-failure and reset). One instance's app
and sidecar get SIGKILL: no goodbye, so its record stays in every mDNS cache for ~19 minutes.
Requests in flight to it are reset and retried on another instance (GET is idempotent); the first
refused connection ejects it at once (passive ejection), health checks keep it out.

SLO (issue 7's acceptance): at least 99.5 % of the requests succeed, and 100 % of those sent 10 s
after the kill or later (2 s in the short run).
"""

from __future__ import annotations

import sys
import time

from tools.scenario import Report, Run, main

from . import _mesh

TITLE = "one of three catalog instances is killed with SIGKILL under steady load"


def run(r: Run) -> Report:
    seconds, kill_at, settle = r.pick(25.0, 5.0), r.pick(5.0, 1.5), r.pick(10.0, 2.0)
    rate = 50
    with _mesh.sidecar_mesh(r) as m:
        instances, watched = _mesh.start_catalogs(r, m)
        victim = instances[1]
        r.say(f"load: {rate} req/s for {seconds:g} s; SIGKILL of {victim.name} at {kill_at:g} s")
        load = _mesh.catalog_load(m, rate)
        try:
            time.sleep(kill_at)
            killed = time.time()
            m.kill_instance(victim)
            r.say(f"killed {victim.name} (app pid {victim.app.pid}, sidecar pid {victim.sidecar.pid})")
            _mesh.rest(load, seconds)
        finally:
            samples = load.stop()
            watched.stop()
        registry = {i["address"]: i for i in m.registry()}

    report = Report("instance-killed", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances)
    report.load = _mesh.catalog_load_text(rate, seconds)
    report.fault = (f"SIGKILL of {victim.name}'s app and sidecar (no mDNS goodbye) "
                    f"{killed - load.started:.1f} s into the load")
    report.slo = f"≥ 99.5 % of requests succeed; 100 % of those sent {settle:g} s after the kill or later"
    report.phases = [("before the kill", load.started, killed),
                     (f"kill + {settle:g} s", killed, killed + settle),
                     (f"{settle:g} s after the kill and later", killed + settle, float("inf"))]
    gone = registry.get(victim.inbound)
    report.figure(f"{victim.name} in the gateway's registry",
                  "gone" if gone is None else f"healthy={gone['healthy']} ({gone['detail'] or 'no detail'})")
    report.figure(f"requests answered by {victim.name} after the kill",
                  sum(1 for s in samples if s.instance == victim.name and s.start > killed))
    report.check_success("≥ 99.5 % of all requests succeed", samples, 0.995)
    report.check_success(f"100 % succeed from {settle:g} s after the kill", report.during(killed + settle))
    return report


if __name__ == "__main__":
    sys.exit(main("instance-killed"))
