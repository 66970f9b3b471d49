"""cert-expiry: short-lived workload certificates expire again and again under steady load; then
renewal stops, they run out, and renewal comes back.

catalog's sidecars are `mtls: STRICT`: the gateway calls them over mTLS with its own workload
certificate and checks each one's SPIFFE ID. Every certificate lives 10 s (20 s in the full run) and
is renewed at half its life by a real `mitmesh certs rotate --watch`; proxies pick renewed files up
within 250 ms (`mesh.identity.reload_interval`), without a restart. While the load runs:

1. renewing: certificates renew and the ones they replace expire during the load;
2. renewal stopped (the rotator is stopped, as when the CA is unreachable): once the last
   certificate's `notAfter` has passed, new handshakes must be refused (a mesh never accepts an
   expired identity). Requests on connections opened before the expiry may still be served: TLS
   checks certificates at the handshake, as Envoy does;
3. renewal resumes: proxies pick up the new certificates at once and traffic recovers.

A probe makes a fresh mTLS handshake to catalog-1's inbound every 0.25 s with the gateway's
current certificate files, as a proxy that just started would.

SLO: 100 % of requests succeed while certificates renew (at least one certificate in use expiring
during the load); no fresh handshake succeeds once every certificate has expired; 100 % of requests
and handshakes succeed from 2 s after renewal resumes.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mesh.security import mtls, pki
from mesh.runtime import procs
from mesh.config import load as load_config
from tools.scenario import Report, Run, main, rate_text, success

from . import _mesh

TITLE = "workload certificates expire under load: renewed without a failure; expired ones refused"
RELOAD = 0.25  # mesh.identity.reload_interval
RECOVERY = 2.0  # the SLO's grace after renewal resumes


@dataclass
class Probe:
    at: float
    ok: bool
    why: str


class Prober:
    """Fresh mTLS handshakes (plus one request) to one inbound, with the files on disk right now."""

    def __init__(self, address: str, cert: Path, key: Path, ca: Path, expected: str, reach=None):
        self.reach = reach or (lambda where: contextlib.nullcontext())  # the namespace it is reached from
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.cert, self.key, self.ca, self.expected = cert, key, ca, expected
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cert-probe")

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(self.ca))
        for _ in range(5):  # the rotator replaces key, then certificate: retry a mismatched pair
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key))
                return ctx
            except (ssl.SSLError, OSError):
                time.sleep(0.05)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def once(self) -> Probe:
        try:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self._context(), timeout=3)
        except (ssl.SSLError, OSError) as e:
            return Probe(time.time(), False, f"cannot load the gateway's certificate: {e}")
        at = time.time()  # once its files are read: a probe before a renewal presents the old certificate
        try:
            conn.request("GET", "/items/1")  # TLS 1.3: a refused client certificate shows on the first read
            resp = conn.getresponse()
            resp.read()
            peer = mtls.peer_identity(conn.sock)
            if peer != self.expected:
                return Probe(at, False, f"peer is {peer}, expected {self.expected}")
            return Probe(at, resp.status == 200, f"HTTP {resp.status}")
        except (ssl.SSLError, OSError, http.client.HTTPException) as e:
            return Probe(at, False, f"{type(e).__name__}: {e}")
        finally:
            conn.close()

    def _run(self) -> None:
        with self.reach(self.host):  # this thread's sockets, in the pods' mesh namespace for a pod
            while not self._stop.wait(0.25):
                self.probes.append(self.once())

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def during(self, start: float, end: float = float("inf")) -> list[Probe]:
        return [p for p in self.probes if start <= p.at < end]


def not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


class Watcher:
    """Every certificate generation of the given workloads seen on disk: (name, serial) → notAfter."""

    def __init__(self, certs: Path, names: list[str]):
        self.paths = {n: pki.workload_paths(certs, n)[0] for n in names}
        self.seen: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cert-watch")

    def poll(self) -> None:
        for name, path in self.paths.items():
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue  # being replaced
            self.seen[(name, cert.serial_number)] = cert.not_valid_after_utc.timestamp()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.poll()

    def start(self) -> Watcher:
        self.poll()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def renewals(child: procs.Child) -> int:
    return child.log.read_text(errors="replace").count("renewed workload certificate ")


def run(r: Run) -> Report:
    lifetime, renewing, after = r.pick(20.0, 10.0), r.pick(45.0, 11.0), r.pick(10.0, 4.0)
    rate = 40
    with _mesh.sidecar_mesh(r, services={"catalog": {"mtls": "STRICT"}}) as m:
        m.config["mesh"]["identity"] = {"lifetime": f"{lifetime:g}s", "renew_after": 0.5,
                                        "reload_interval": f"{RELOAD * 1000:g}ms"}
        m.write()
        config = load_config(m.path)
        certs = m.tmp / config.mesh.identity.dir
        r.say(f"issuing workload certificates ({lifetime:g} s lifetime, renewed at half life) and keeping them renewed")
        first = m.start_rotator()
        procs.wait_log(first, "renewed workload certificate gateway")
        r.say("starting the gateway and three catalog instances (STRICT mTLS) with their sidecars")
        instances = _mesh.start(m, *_mesh.CATALOGS)
        watched = _mesh.watch(m, instances)
        gateway_cert, gateway_key = pki.workload_paths(certs, "gateway")
        catalog_id = pki.spiffe_id(config.mesh.trust_domain, config.mesh.namespace, "catalog")
        prober = Prober(instances[0].inbound, gateway_cert, gateway_key, pki.mesh_ca_cert(certs),
                        catalog_id, reach=m.reach)
        watcher = Watcher(certs, ["gateway", "catalog"]).start()
        before = renewals(first)
        r.say(f"load: {rate} req/s; certificates renew for {renewing:g} s, then renewal stops until they "
              f"have all expired, then resumes for {after:g} s")
        load = _mesh.catalog_load(m, rate)
        prober.start()
        try:
            time.sleep(renewing)
            first.stop()
            stopped = time.time()
            renewed = renewals(first) - before
            expiry = max(not_after(pki.workload_paths(certs, n)[0]) for n in ["gateway", "catalog"])
            r.say(f"renewal stopped after {renewed} renewals; the last certificate expires in "
                  f"{expiry - stopped:.1f} s")
            expired = expiry + 1.0  # notAfter has whole seconds
            time.sleep(max(expired - time.time(), 0) + r.pick(3.0, 1.5))
            second = m.start_rotator("rotator-2")
            procs.wait_log(second, "renewed workload certificate")
            # when its first renewed file was written, not when its line was read: the catalog's
            # sidecar may reload (every 250 ms) and a probe succeed in between
            resumed = min(os.stat(f).st_mtime for n in ["gateway", "catalog"] for f in pki.workload_paths(certs, n))
            r.say("renewal resumed")
            time.sleep(after)
        finally:
            samples = load.stop()
            prober.stop()
            watcher.stop()
            watched.stop()

    report = Report("cert-expiry", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances) + "; catalog mtls STRICT"
    report.load = (f"GET /catalog/items/1 through the gateway (mTLS to catalog's sidecars), {rate} req/s on "
                   f"4 connections; a fresh mTLS handshake to catalog-1 every 0.25 s")
    report.fault = (f"certificates live {lifetime:g} s, renewed at half life for {stopped - load.started:.1f} s; "
                    f"renewal stopped until all expired ({expiry - load.started:.1f} s), resumed at "
                    f"{resumed - load.started:.1f} s")
    report.slo = (f"100 % success while renewing; no fresh handshake once all expired; 100 % from "
                  f"{RECOVERY:g} s after renewal resumes")
    settled = resumed + RECOVERY
    report.phases = [("renewing", load.started, stopped), ("renewal stopped", stopped, expired),
                     ("all expired", expired, resumed), ("renewal resumed", resumed, settled),
                     ("recovered", settled, float("inf"))]
    gone = sorted((name, until) for (name, _), until in watcher.seen.items() if load.started < until < stopped)
    ok, n = success(report.during(load.started, stopped))
    report.figure("renewals while renewing", renewed)
    report.figure("certificates that expired while renewing",
                  ", ".join(f"{name} at {until - load.started:.1f} s" for name, until in gone) or "none")
    report.figure("requests answered after all expired", rate_text(*success(report.during(expired, resumed)))
                  + " (connections made before the expiry)")

    def probes_text(ps: list[Probe]) -> str:
        reasons = sorted({p.why for p in ps if not p.ok})
        return (f"{sum(p.ok for p in ps)} of {len(ps)} succeeded"
                + (f"; refused: {'; '.join(reasons)[:160]}" if reasons else ""))

    report.figure("fresh handshakes while renewing", probes_text(prober.during(load.started, stopped)))
    dead = prober.during(expired, resumed)
    report.figure("fresh handshakes after all expired", probes_text(dead))
    back = prober.during(settled)
    report.figure(f"fresh handshakes from {RECOVERY:g} s after renewal resumed", probes_text(back))
    report.check("100 % succeed while certificates renew and expire", n and ok == n and gone,
                 f"{rate_text(ok, n)}, {len(gone)} certificates expired meanwhile")
    report.check("no fresh handshake succeeds once every certificate expired",
                 dead and not any(p.ok for p in dead) and all("expired" in p.why.lower() for p in dead),
                 f"{sum(p.ok for p in dead)} of {len(dead)} succeeded")
    late_ok, late_n = success(report.during(settled))
    report.check(f"100 % succeed from {RECOVERY:g} s after renewal resumes",
                 late_n and late_ok == late_n and back and all(p.ok for p in back),
                 f"{rate_text(late_ok, late_n)}; handshakes {sum(p.ok for p in back)} of {len(back)}")
    return report


if __name__ == "__main__":
    sys.exit(main("cert-expiry"))
