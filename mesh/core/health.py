"""Endpoint liveness: active health checks, and passive ejection of endpoints that refuse connections.

mDNS keeps an instance killed without a goodbye for about 19 minutes; these two take it out of
rotation instead: at once when a connection to it is refused (`eject`), and within
`unhealthy_threshold` × `interval` when nobody sends it traffic (`Checker`). Outlier detection
(ejection on 5xx rates, ejection times) grows here later.

A new endpoint enters rotation only once its first check passed (`await_first_check`): discovery
is unauthenticated, and a rogue announcement must not take traffic while its checks are pending.
"""

from __future__ import annotations

import asyncio
import contextlib
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


AWAITING = "awaiting its first health check"


def await_first_check(ep: Endpoint) -> Endpoint:
    """A new endpoint of a health-checked cluster: out of rotation until its first check passes.

    As Envoy marks a host added to a cluster with active health checks FAILED_ACTIVE_HC, and with
    ignore_new_hosts_until_first_hc also PENDING_ACTIVE_HC (upstream_impl.cc,
    updateDynamicHostList): not chosen, and not counted in panic mode (mesh/core/cluster.py)."""
    ep.pending, ep.healthy, ep.detail = True, False, AWAITING
    return ep


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
    """Count one check result against the thresholds; returns whether the endpoint's health changed
    (or it was awaiting its first check: it now counts in the cluster's shares and panic mode)."""
    if ep.pending:
        # the first result decides at once, whatever the thresholds: a pass puts it in rotation
        # (Envoy's handleSuccess moves a host to healthy on its first_check_), a failure keeps it
        # out (it was failing already, as Envoy's FAILED_ACTIVE_HC); no longer pending either way
        ep.pending = False
        ep.successes, ep.failures = (1, 0) if ok else (0, 1)
        ep.healthy, ep.detail = ok, "" if ok else detail
        if ok:  # every proxy checks every new endpoint once: the usual case is not news
            log.debug(f"endpoint {ep} passed its first health check")
        else:
            log.warning(f"endpoint {ep} failed its first health check: {detail}")
        return True
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
    """Checks every target endpoint every `interval` (its own service's) in the background; an
    endpoint awaiting its first check is checked at once (`wake` on every membership change)."""

    def __init__(self, targets: Targets, on_change: Callable[[], None], tick: float = 0.1,
                 tls_of: TlsOf | None = None):
        self.targets = targets
        self.tls_of = tls_of
        self.on_change = on_change
        self.tick = tick
        self._due: dict[Endpoint, float] = {}  # when each endpoint's next check is due
        self._running: dict[Endpoint, asyncio.Task] = {}  # the checks under way
        self._wake = asyncio.Event()
        self._loop = Loop("mitmesh-health", self._run)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def wake(self) -> None:
        """The targets changed: look for new endpoints now, not at the next tick."""
        self._wake.set()

    async def _probe(self, ep: Endpoint, hc: HealthCheck) -> tuple[bool, str]:
        try:
            tls = self.tls_of(ep) if self.tls_of is not None else None
        except mtls.NoMtls as e:
            return False, f"health check cannot use mTLS: {e}"
        return await probe(ep, hc, tls)

    def _start(self, ep: Endpoint, hc: HealthCheck) -> asyncio.Task:
        """The check of `ep` under way, or one started now; the next is due an interval later."""
        task = self._running.get(ep)
        if task is None:
            self._due[ep] = time.monotonic() + hc.interval
            task = self._running[ep] = asyncio.get_running_loop().create_task(self._check(ep, hc))
        return task

    async def first_checks(self, endpoints: Iterable[Endpoint], hc: HealthCheck) -> None:
        """Wait for the first checks of those of `endpoints` awaiting theirs (started now unless
        under way; each within the check's timeout): a request to a cluster none of whose
        endpoints has been checked yet waits here, as Envoy's cluster warming waits for the first
        check of every host before the cluster is used (upstream_impl.cc, onInitDone)."""
        tasks = {self._start(ep, hc) for ep in endpoints if ep.pending}
        if tasks:
            await asyncio.wait(tasks)  # a cancelled caller leaves the checks running

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            live = set()
            for ep, hc in self.targets():
                live.add(ep)
                if ep in self._running:
                    continue
                due = self._due.get(ep)
                if ep.pending or (due is not None and now >= due):
                    # a new endpoint at once: it is out of rotation until this check passes
                    self._start(ep, hc)
                elif due is None:  # first seen: check soon, spread out so checks come in no bursts
                    self._due[ep] = now + (id(ep) % 97) / 97 * min(hc.interval, 1.0)
            for key in set(self._due) - live - set(self._running):
                del self._due[key]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self._wake.wait()

    async def _check(self, ep: Endpoint, hc: HealthCheck) -> None:
        try:
            ok, detail = await self._probe(ep, hc)
            if record(ep, ok, detail, hc):
                self.on_change()
        except Exception:  # a bug here must not stop the checks
            log.exception(f"health check of {ep} failed")
        finally:
            self._running.pop(ep, None)
