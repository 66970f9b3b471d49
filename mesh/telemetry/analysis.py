"""Canary analysis of a config rollout: error rate and p99 of the canary gateways against the rest,
from the proxies' own Prometheus metrics over a window (as Argo Rollouts' analysis runs)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "mitmesh_requests"  # the family name of mitmesh_requests_total
DURATION = "mitmesh_request_duration_seconds"


@dataclass(frozen=True)
class Sample:
    """Counters of one proxy at one moment: requests, failed ones (5xx or no response), and the
    latency histogram's cumulative buckets (upper bound → count)."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()

    def __sub__(self, other: Sample) -> Sample:
        before = dict(other.buckets)
        return Sample(self.requests - other.requests, self.errors - other.errors,
                      tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets))

    def __add__(self, other: Sample) -> Sample:
        mine, theirs = dict(self.buckets), dict(other.buckets)
        return Sample(self.requests + other.requests, self.errors + other.errors,
                      tuple(sorted((le, mine.get(le, 0.0) + theirs.get(le, 0.0)) for le in {*mine, *theirs})))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile q (None without requests)."""
        total = max((n for _, n in self.buckets), default=0.0)
        if total <= 0:
            return None
        for le, n in self.buckets:
            if n >= q * total:
                return le
        return float("inf")


def parse(text: str) -> Sample:
    """A proxy's /metrics (Prometheus text) → its Sample; every direction and route summed."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == REQUESTS:
            for s in family.samples:
                if s.name.endswith("_total"):
                    requests += s.value
                    code = s.labels.get("code", "")
                    if code == "error" or code.startswith("5"):
                        errors += s.value
        elif family.name == DURATION:
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
    return Sample(requests, errors, tuple(sorted(buckets.items())))


@dataclass(frozen=True)
class Thresholds:
    max_error_increase: float = 0.02  # canary error rate may exceed the baseline's by this much
    p99_ratio: float = 2.0  # canary p99 may be this many times the baseline's ...
    p99_slack: float = 0.1  # ... or this many seconds more, whichever is larger (buckets are coarse)
    min_requests: int = 20  # fewer canary requests than this in the window: no verdict


def verdict(canary: Sample, baseline: Sample, t: Thresholds, final: bool) -> tuple[str, str]:
    """("fail" | "pass" | "wait", why). Before the window ends (`final` False) only a failure is
    a verdict; at its end too few canary requests is a failure: nothing shows the revision works."""
    figures = (f"canary {canary.requests:.0f} requests, {canary.error_rate:.1%} errors, p99 "
               f"{_ms(canary.quantile(0.99))}; baseline {baseline.requests:.0f} requests, "
               f"{baseline.error_rate:.1%} errors, p99 {_ms(baseline.quantile(0.99))}")
    if canary.requests >= t.min_requests:
        if canary.error_rate > baseline.error_rate + t.max_error_increase:
            return "fail", f"error rate {canary.error_rate:.1%} > baseline {baseline.error_rate:.1%} + " \
                           f"{t.max_error_increase:.1%} ({figures})"
        cp, bp = canary.quantile(0.99), baseline.quantile(0.99)
        if cp is not None and bp is not None and cp > max(bp * t.p99_ratio, bp + t.p99_slack):
            return "fail", f"p99 {_ms(cp)} > max({t.p99_ratio:g} x {_ms(bp)}, {_ms(bp)} + " \
                           f"{_ms(t.p99_slack)}) ({figures})"
    if not final:
        return "wait", figures
    if canary.requests < t.min_requests:
        return "fail", f"too little canary traffic to judge: {canary.requests:.0f} < {t.min_requests} " \
                       f"requests ({figures})"
    return "pass", figures


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "inf" if seconds == float("inf") else f"<= {seconds * 1000:g} ms"
