"""Resilience settings compiled once: per route (deadline, per-try timeout, retries, faults) and
per cluster (breakers, outlier ejection, retry budget, faults), whose live state outlasts reloads
while their settings stay the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mesh.resilience.breaker import BreakerPolicy, Breakers
from mesh.config import schema
from mesh.resilience.faults import FaultPolicy, FaultState
from mesh.resilience.outlier import OutlierDetector, OutlierPolicy
from mesh.resilience.retry import RetryBudget, RetryPolicy

DEFAULT_DEADLINE = 15.0  # Envoy's default route timeout


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    """How Forward sends one route's requests: deadline, per-try timeout, retries, faults."""

    deadline: float
    per_try: float | None
    retry: RetryPolicy | None
    fault: FaultState | None
    header_faults: bool
    stale: str = "idempotent"  # retry_stale_connection: re-send after a stale keep-alive connection


def fault_policy(cfg: schema.Fault) -> FaultPolicy:
    d, a = cfg.delay, cfg.abort
    return FaultPolicy(
        delay=d.fixed if d else 0.0, delay_percent=d.percentage if d else 100.0,
        abort=a.status if a else None, abort_percent=a.percentage if a else 100.0,
        every_nth=a.every_nth if a else None, for_seconds=a.for_seconds if a else None,
        drip=cfg.drip, reset_after=cfg.reset_after, header_triggered=cfg.header_triggered)


RouteResilience = ForwardPlan


def compile(models) -> ForwardPlan:
    """The forward plan of a route from its `timeout`, `retries` and `fault` models (None: unset)."""
    timeout, retries, fault = models.timeout, models.retries, models.fault
    retry = None
    if isinstance(retries, schema.Retries):
        retry = RetryPolicy(retries.attempts, frozenset(retries.retry_on),
                            frozenset(retries.retriable_status_codes), retries.backoff.base,
                            retries.backoff.max, retries.non_idempotent)
    return ForwardPlan(
        deadline=timeout.request if isinstance(timeout, schema.Timeout) else DEFAULT_DEADLINE,
        per_try=timeout.per_try if isinstance(timeout, schema.Timeout) else None,
        retry=retry,
        fault=FaultState(fault_policy(fault)) if isinstance(fault, schema.Fault) else None,
        header_faults=isinstance(fault, schema.Fault) and fault.header_triggered,
        stale=retries.retry_stale_connection if isinstance(retries, schema.Retries) else "idempotent",
    )


@dataclass
class Guards:
    """Live protection of one cluster."""

    settings: tuple
    breakers: Breakers | None
    outlier: OutlierDetector | None
    budget: RetryBudget
    fault: FaultState | None

    def usable(self, key: tuple) -> bool:
        """May an attempt go there at all? Not while its breaker is open."""
        return self.breakers is None or self.breakers.available(key)

    def ejected(self, endpoints) -> tuple:
        """Endpoints to avoid while others are left (when all are ejected, they are used anyway,
        as Envoy's panic routing does, rather than failing every request)."""
        if self.outlier is None:
            return ()
        return tuple(e for e in endpoints if self.outlier.ejected(e.key))

    def status(self) -> dict:
        out: dict = {"retry_budget": {"requests": self.budget.requests, "retries": self.budget.retries,
                                      "exhausted": self.budget.exhausted}}
        if self.breakers is not None:
            out["breakers"] = self.breakers.status()
            out["breaker_transitions"] = len(self.breakers.transitions)
            if self.breakers.shared is not None:  # openings shared through Redis: is it reachable?
                out["breakers_shared"] = self.breakers.shared.down or "ok"
        if self.outlier is not None:
            out["ejected"] = [f"{k[0]}:{k[1]}" for k in self.outlier.records if self.outlier.ejected(k)]
            out["ejections"] = self.outlier.total_ejections
        return out


def guards(cluster: str, svc: schema.Service, old: Guards | None,
           on_breaker: Callable[[str, str, str | None, str], None] | None = None) -> Guards:
    """Guards for a cluster; the old ones (and their state) when the settings did not change."""
    settings = (svc.circuit_breaker, svc.outlier_detection, svc.retry_budget, svc.fault)
    if old is not None and old.settings == settings:
        return old
    if old is not None and old.breakers is not None:
        old.breakers.stop()  # its task reading shared openings, if any
    cb, od, rb = svc.circuit_breaker, svc.outlier_detection, svc.retry_budget
    notify = (lambda name, a, b: on_breaker(cluster, name, a, b)) if on_breaker else None
    return Guards(
        settings=settings,
        breakers=Breakers(cluster, BreakerPolicy(cb.fail_max, cb.reset_timeout, cb.success_threshold,
                                                    cb.shared, cb.shared_poll),
                          notify) if cb else None,
        outlier=OutlierDetector(OutlierPolicy(od.consecutive_5xx, od.consecutive_gateway_failure,
                                              od.base_ejection_time, od.max_ejection_time,
                                              od.max_ejection_percent)) if od else None,
        budget=RetryBudget(rb.ratio, rb.min_per_second, rb.ttl),
        fault=FaultState(fault_policy(svc.fault)) if svc.fault else None,
    )
