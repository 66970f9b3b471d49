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

from tools.scenario import Report, Run, main, rate_text, success
from tools.testbed import Load

from . import _mesh

TITLE = "one of three catalog instances is killed with SIGKILL under steady load"


def run(r: Run) -> Report:
    seconds, kill_at, settle = r.pick(25.0, 5.0), r.pick(5.0, 1.5), r.pick(10.0, 2.0)
    rate = 50
    with _mesh.sidecar_mesh(r) as m:
        r.say("starting the gateway and three catalog instances with their sidecars")
        instances = _mesh.start(m, *_mesh.CATALOGS)
        watched = _mesh.watch(m, instances)
        victim = instances[1]
        r.say(f"load: {rate} req/s for {seconds:g} s; SIGKILL of {victim.name} at {kill_at:g} s")
        load = Load(m.url + "/catalog/items/1", threads=4, rate=rate).start()
        try:
            time.sleep(kill_at)
            killed = time.time()
            m.kill_instance(victim)
            r.say(f"killed {victim.name} (app pid {victim.app.pid}, sidecar pid {victim.sidecar.pid})")
            time.sleep(max(load.started + seconds - time.time(), 0))
        finally:
            samples = load.stop()
            watched.stop()
        registry = {i["address"]: i for i in m.registry()}

    report = Report("instance-killed", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances)
    report.load = f"GET /catalog/items/1 through the gateway, {rate} req/s on 4 connections for {seconds:g} s"
    report.fault = (f"SIGKILL of {victim.name}'s app and sidecar (no mDNS goodbye) "
                    f"{killed - load.started:.1f} s into the load")
    report.slo = f"≥ 99.5 % of requests succeed; 100 % of those sent {settle:g} s after the kill or later"
    report.phases = [("before the kill", load.started, killed),
                     (f"kill + {settle:g} s", killed, killed + settle),
                     (f"{settle:g} s after the kill and later", killed + settle, float("inf"))]
    ok, n = success(samples)
    late_ok, late_n = success(report.during(killed + settle))
    gone = registry.get(victim.inbound)
    report.figure(f"{victim.name} in the gateway's registry",
                  "gone" if gone is None else f"healthy={gone['healthy']} ({gone['detail'] or 'no detail'})")
    report.figure(f"requests answered by {victim.name} after the kill",
                  sum(1 for s in samples if s.instance == victim.name and s.start > killed))
    report.check("≥ 99.5 % of all requests succeed", n and ok / n >= 0.995, rate_text(ok, n))
    report.check(f"100 % succeed from {settle:g} s after the kill", late_n and late_ok == late_n,
                 rate_text(late_ok, late_n))
    return report


if __name__ == "__main__":
    sys.exit(main("instance-killed"))
