"""Endpoint liveness: active health checks, and passive ejection of endpoints that refuse connections.

mDNS keeps an instance killed without a goodbye for about 19 minutes; these two take it out of
rotation instead: at once when a connection to it is refused (`eject`), and within
`unhealthy_threshold` × `interval` when nobody sends it traffic (`Checker`). Outlier detection
(ejection on 5xx rates, ejection times) grows here later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from typing import Callable, Iterable

from mesh.core.loops import Loop
from mesh.telemetry import metrics
from mesh.security import mtls
from mesh.core import podnet
from mesh.core.cluster import Endpoint
from mesh.config.schema import HealthCheck

log = logging.getLogger("mitmesh.health")

Targets = Callable[[], Iterable[tuple[Endpoint, HealthCheck]]]
# how to reach an endpoint over mTLS: (client context, required SPIFFE ID), None for plaintext;
# raises mtls.NoMtls when it must be mTLS and cannot
TlsOf = Callable[[Endpoint], "tuple[ssl.SSLContext, str] | None"]


def eject(ep: Endpoint, reason: str, threshold: int = 1) -> bool:
    """Passive ejection: take `ep` out of rotation now; an active check brings it back.

    Returns whether its health changed (the caller then refreshes the clusters)."""
    ep.failures = max(ep.failures, threshold)
    ep.successes = 0
    ep.detail = reason
    if ep.healthy:
        ep.healthy = False
        log.warning(f"endpoint {ep} ejected: {reason}")
        metrics.ENDPOINT_UNHEALTHY.labels("connect_failure").inc()
        return True
    return False


def record(ep: Endpoint, ok: bool, detail: str, hc: HealthCheck) -> bool:
    """Count one check result against the thresholds; returns whether the endpoint's health changed."""
    if ok:
        ep.successes += 1
        ep.failures = 0
        if not ep.healthy and ep.successes >= hc.healthy_threshold:
            ep.healthy, ep.detail = True, ""
            log.info(f"endpoint {ep} is healthy")
            return True
        return False
    ep.failures += 1
    ep.successes = 0
    ep.detail = detail
    if ep.healthy and ep.failures >= hc.unhealthy_threshold:
        ep.healthy = False
        log.warning(f"endpoint {ep} failed {ep.failures} health checks: {detail}")
        metrics.ENDPOINT_UNHEALTHY.labels("health_check").inc()
        return True
    return False


async def probe(ep: Endpoint, hc: HealthCheck,
                tls: tuple[ssl.SSLContext, str] | None = None) -> tuple[bool, str]:
    """One check: a connect, then `GET path` expecting a 2xx when the check has a path.

    With `tls` (the endpoint is called over mTLS) the connect is the upstream TLS handshake and
    the peer's SPIFFE ID check a request makes: an endpoint that accepts TCP but cannot prove it
    is the service (a tarpit, a rogue announcement) fails, as in Envoy, whose health checks go
    through the cluster's transport socket."""
    writer = None
    try:
        async with asyncio.timeout(hc.timeout):
            reader, writer = await podnet.open_connection(ep.address, ep.port, ssl=tls[0] if tls else None)
            if tls is not None:
                wrong = mtls.check_peer(writer.get_extra_info("ssl_object"), tls[1])
                if wrong is not None:
                    return False, f"health check refused the peer: {wrong}"
            if hc.path is None:
                return True, ""
            writer.write(f"GET {hc.path} HTTP/1.1\r\nhost: {ep.address}:{ep.port}\r\n"
                         f"user-agent: mitmesh-health\r\nconnection: close\r\n\r\n".encode())
            line = await reader.readline()
        parts = line.split(b" ", 2)
        if len(parts) >= 2 and parts[1][:1] == b"2":
            return True, ""
        return False, f"health check GET {hc.path} answered {line.strip()[:60].decode('latin-1')!r}"
    except TimeoutError:
        return False, f"health check timed out after {hc.timeout:g}s"
    except ssl.SSLError as e:
        return False, f"health check TLS handshake failed: {e.reason or e}"
    except OSError as e:
        return False, f"health check failed: {os.strerror(e.errno).lower() if e.errno else e}"
    finally:
        if writer is not None:
            writer.close()


class Checker:
    """Checks every target endpoint every `interval` (its own service's) in the background."""

    def __init__(self, targets: Targets, on_change: Callable[[], None], tick: float = 0.1,
                 tls_of: TlsOf | None = None):
        self.targets = targets
        self.tls_of = tls_of
        self.on_change = on_change
        self.tick = tick
        self._due: dict[Endpoint, float] = {}  # when each endpoint's next check is due
        self._running: set[Endpoint] = set()
        self._loop = Loop("mitmesh-health", self._run)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _probe(self, ep: Endpoint, hc: HealthCheck) -> tuple[bool, str]:
        try:
            tls = self.tls_of(ep) if self.tls_of is not None else None
        except mtls.NoMtls as e:
            return False, f"health check cannot use mTLS: {e}"
        return await probe(ep, hc, tls)

    async def check_now(self, ep: Endpoint, hc: HealthCheck) -> bool:
        """Check one endpoint at once (a sidecar's app before it announces); returns its health."""
        ok, detail = await self._probe(ep, hc)
        if record(ep, ok, detail, hc):
            self.on_change()
        self._due[ep] = time.monotonic() + hc.interval
        return ep.healthy

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            live = set()
            for ep, hc in self.targets():
                key = ep
                live.add(key)
                if key in self._running:
                    continue
                due = self._due.get(key)
                if due is None:  # first seen: check soon, spread out so checks do not come in bursts
                    self._due[key] = now + (id(key) % 97) / 97 * min(hc.interval, 1.0)
                elif now >= due:
                    self._due[key] = now + hc.interval
                    self._running.add(key)
                    asyncio.get_running_loop().create_task(self._check(ep, hc))
            for key in set(self._due) - live - self._running:
                del self._due[key]
            await asyncio.sleep(self.tick)

    async def _check(self, ep: Endpoint, hc: HealthCheck) -> None:
        try:
            ok, detail = await self._probe(ep, hc)
            if record(ep, ok, detail, hc):
                self.on_change()
        except Exception:  # a bug here must not stop the checks
            log.exception(f"health check of {ep} failed")
        finally:
            self._running.discard(ep)
