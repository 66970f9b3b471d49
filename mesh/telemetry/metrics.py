"""Prometheus metrics of one proxy, every name prefixed mitmesh_, with bounded label sets.

Labels are only names from the config (route, service, cluster, version, listener), a direction
and a response status code: never raw paths or user ids. A supervisor runs its workers with
PROMETHEUS_MULTIPROC_DIR set, so `/metrics` on the shared admin listener shows the whole process
group, whichever worker answers.
"""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)

# service: the service the request was for (a sidecar's inbound: its own; outbound: the callee);
# code: the status code answered, or "error" when there was no response at all
REQUESTS = Counter(
    "mitmesh_requests_total", "Requests answered, by direction, route, service, cluster, version and status code",
    ["direction", "route", "service", "cluster", "version", "code"])
DURATION = Histogram(
    "mitmesh_request_duration_seconds", "Time from request headers to the complete response",
    ["direction", "route", "service", "cluster", "version"], buckets=LATENCY_BUCKETS)
REQUEST_BYTES = Histogram(
    "mitmesh_request_bytes", "Request body sizes", ["direction", "route"], buckets=SIZE_BUCKETS)
RESPONSE_BYTES = Histogram(
    "mitmesh_response_bytes", "Response body sizes", ["direction", "route"], buckets=SIZE_BUCKETS)
UPSTREAM_FAILURES = Counter(
    "mitmesh_upstream_failures_total", "Upstream attempts without a usable response, by kind",
    ["cluster", "kind"])
RETRIES = Counter("mitmesh_retries_total", "Upstream attempts beyond the first", ["cluster"])
RETRY_BUDGET_EXHAUSTED = Counter(
    "mitmesh_retry_budget_exhausted_total", "Retries not made because the retry budget was spent",
    ["cluster"])
BREAKER_OPEN = Gauge(
    "mitmesh_breaker_open", "1 while an endpoint's circuit breaker is open (0.5 half-open)",
    ["cluster", "endpoint"], multiprocess_mode="livemax")
BREAKER_TRANSITIONS = Counter(
    "mitmesh_breaker_transitions_total", "Circuit breaker state changes", ["cluster", "to"])
EJECTIONS = Counter("mitmesh_ejections_total", "Endpoints ejected as outliers", ["cluster"])
ENDPOINT_UNHEALTHY = Counter(
    "mitmesh_endpoint_unhealthy_total", "Endpoints taken out of rotation by liveness, by reason "
    "(connect_failure: a refused connection, passive; health_check: failed active checks)", ["reason"])
DISCOVERY_REFUSED = Counter(
    "mitmesh_discovery_refused_total", "Discovered instances refused as endpoints because they point "
    "at this proxy's own listeners, admin listener or etcd, by discovery source", ["source"])
RATELIMIT_REJECTIONS = Counter(
    "mitmesh_ratelimit_rejections_total", "Requests answered 429 by a rate limit", ["route"])
RATELIMIT_STORAGE_ERRORS = Counter(
    "mitmesh_ratelimit_storage_errors_total", "Rate-limit storage (Redis) unreachable", ["route", "outcome"])
AUTH_FAILURES = Counter(
    "mitmesh_auth_failures_total", "Requests refused by authentication or authorization, by reason",
    ["reason"])
TLS_HANDSHAKE_FAILURES = Counter(
    "mitmesh_tls_handshake_failures_total", "Downstream TLS/mTLS handshakes that failed", ["listener"])
REGISTRY_ENDPOINTS = Gauge(
    "mitmesh_registry_endpoints", "Endpoints known per cluster (healthy or not)", ["cluster"],
    multiprocess_mode="livemax")
ENDPOINTS_HEALTHY = Gauge(
    "mitmesh_endpoints_healthy", "Endpoints of a cluster in rotation (healthy)", ["cluster"],
    multiprocess_mode="livemax")
UPSTREAM_ACTIVE = Gauge(
    "mitmesh_upstream_requests_active", "Upstream requests in flight per cluster (saturation)", ["cluster"],
    multiprocess_mode="livesum")
CONFIG_RELOADS = Counter("mitmesh_config_reloads_total", "Config reloads, by result", ["result"])
CONFIG_REVISION = Gauge(
    "mitmesh_config_revision", "The config revision from etcd this proxy runs (0: a config file)", [],
    multiprocess_mode="livemax")
CONFIG_SIGNED_UNTIL = Gauge(
    "mitmesh_config_signature_expiry_timestamp_seconds", "When the operator certificate that "
    "signed the config revision this proxy runs expires (Unix time; etcds:// stores): a proxy "
    "started later refuses that revision", [], multiprocess_mode="livemin")
MIRROR_DIFFERENCES = Counter(
    "mitmesh_mirror_differences_total", "Mirrored responses that differed from the primary", ["route"])
MIRROR_REQUESTS = Counter("mitmesh_mirror_requests_total", "Requests copied to a mirror cluster", ["route"])
MIRROR_COMPARED = Counter(
    "mitmesh_mirror_compared_total", "Mirrored responses compared with the primary's", ["route"])
MIRROR_ERRORS = Counter(
    "mitmesh_mirror_errors_total", "Mirrored requests that got no response (timeout, refused, ...)", ["route"])
RATELIMIT_STORAGE_OUTAGES = Counter(
    "mitmesh_ratelimit_storage_outages_total", "Times a rate-limit storage (Redis) became unreachable")
FUNCTION_CALLS = Counter(
    "mitmesh_function_calls_total", "Function calls, by outcome (ok, error, timeout, crash, full, "
    "queue_timeout, start_failed)", ["function", "outcome"])
FUNCTION_COLD_START = Histogram(
    "mitmesh_function_cold_start_seconds", "Time from starting a function instance to its handler "
    "being imported and ready", ["function"], buckets=LATENCY_BUCKETS)
FUNCTION_INSTANCES = Gauge(
    "mitmesh_function_instances", "Function instance processes running", ["function"],
    multiprocess_mode="livesum")
PLUGIN_ERRORS = Counter(
    "mitmesh_plugin_errors_total", "User plugin hooks that failed, by plugin, hook and kind "
    "(exception: answered 500; timeout: an async hook past its timeout, answered 504)",
    ["plugin", "hook", "kind"])
PLUGIN_SLOW = Counter(
    "mitmesh_plugin_slow_total", "User plugin hooks that ran longer than their budget", ["plugin", "hook"])
PLUGIN_DURATION = Histogram(
    "mitmesh_plugin_hook_duration_seconds", "Time spent in a user plugin's hook (flows it applies to)",
    ["plugin", "hook"], buckets=LATENCY_BUCKETS)
PLUGIN_RELOADS = Counter(
    "mitmesh_plugin_reloads_total", "User plugin (re)loads after an edit of its file, by result",
    ["plugin", "result"])

# The "counters" of /status, by their name there, and the metric each one sums (over its labels and,
# under a supervisor, over every worker): /status and /metrics can never disagree.
STATUS_COUNTERS = {
    "mirror_requests": "mitmesh_mirror_requests",
    "mirror_compared": "mitmesh_mirror_compared",
    "mirror_diffs": "mitmesh_mirror_differences",
    "mirror_errors": "mitmesh_mirror_errors",
    "ratelimit_storage_errors": "mitmesh_ratelimit_storage_errors",
    "ratelimit_storage_outages": "mitmesh_ratelimit_storage_outages",
}


def shared_dir() -> str | None:
    """The directory a supervisor's workers share (Prometheus multiprocess files, and the rings of
    mesh/telemetry/records.py); None for a proxy that runs alone."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def multiprocess() -> bool:
    return shared_dir() is not None


def _registry():
    """Every worker's metrics when running under a supervisor (read from their files), else ours."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The exposition text of this proxy: every worker's metrics when running under a supervisor."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def totals() -> dict[str, int]:
    """The /status counters: each metric of STATUS_COUNTERS summed, read as `render()` reads them."""
    key = {metric: name for name, metric in STATUS_COUNTERS.items()}
    out = dict.fromkeys(STATUS_COUNTERS, 0)
    for family in _registry().collect():
        name = key.get(family.name)
        if name is not None:
            out[name] += int(sum(s.value for s in family.samples if s.name == family.name + "_total"))
    return out


def worker_died(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters keep counting in the totals)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)


def code(status: int | None) -> str:
    return str(status) if status else "error"
