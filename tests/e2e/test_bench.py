"""The bench runs end to end and ends with its machine-readable line (figures are not asserted:
speed is measured by `just bench`, never by a test)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.timeout(300)  # as long as its bench may run: every target, the hop in pods too, on a loaded machine
def test_bench_smoke():
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "bench", "--seconds", "1", "--requests", "2000", "--no-warmup",
                          "--workers", "2", "--engine-rounds", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"gateway_vs_mitmdump=[\d.]+ workers_scaling=[\d.]+ added_p50_ms=-?[\d.]+ "
                        r"rss_growth_pct=-?[\d.]+ sidecars_added_p50_ms=-?[\d.]+ policies_vs_bare=[\d.]+ policies_cpu_vs_bare=[\d.]+ policies_cpu_vs_bare_paired=[\d.]+ "
                        r"mirror_idle_p50_vs_bare=[\d.]+ mirror_cpu_vs_bare_paired=[\d.]+ "
                        r"mirror_busy_p50_vs_bare_paired=[\d.]+ "
                        r"h2_vs_h1=[\d.]+( pod_sidecars_added_p50_ms=-?[\d.]+)? "
                        r"function_cold_ms=[\d.]+ function_warm_p50_ms=[\d.]+ "
                        r"fast_vs_standard=[\d.]+ fast_newconn_vs_standard=[\d.]+ fast_added_p50_ms=-?[\d.]+ "
                        r"standard_added_p50_ms=-?[\d.]+ fast_cpu_per_request_vs_standard=[\d.]+", lines[-1]), lines[-1]
    table = "\n".join(lines)
    for row in ("| direct (demo service) |", "| mitmdump --mode reverse |", "| nginx (2 workers) |",
                "| 2 sidecars (outbound → inbound) |",
                "| mitmesh gateway, 1 worker |", "| mitmesh gateway, 2 workers |",
                "| mitmesh, 1 worker, 10k routes |"):
        assert row in table
    assert re.search(r"HTTP/1\.1 over TLS, 1 worker +\d+ req/s", table)
    assert re.search(r"HTTP/2 over TLS, 1 worker +\d+ req/s", table)
    assert re.search(r"function, 1 worker +cold start [\d.]+ ms", table)
    assert re.search(r"engine: fast, 1 worker +keep-alive \d+ req/s +new connections \d+ req/s", table)
    assert re.search(r"demo policies, 1 worker +\d+ req/s", table) and re.search(r"bare route, 1 worker +\d+ req/s", table)
    mirrored = r"mirrored route, 1 worker, @1 +paced p50 [\d.]+ ms +wrk p50 [\d.]+ ms +worker CPU"
    assert re.search(mirrored, table), table
    assert "Every request mirrored" in table
    copies = re.search(r"mirror copies +(\d+) sent, (\d+) compared, (\d+) differed", table)
    assert copies and int(copies[1]) > 0 and int(copies[3]) > 0, table  # v2 answers differently
    assert "WARNING" not in table  # no failed requests through any target
    from tools import pods
    if pods.why_not() is None:  # the same hop in pods: the caller's call captured by nftables
        assert "| 2 sidecars in pods (captured) |" in table and "pod_sidecars_added_p50_ms=" in lines[-1]


@pytest.mark.timeout(180)
def test_bench_policies_only_smoke():
    """--policies-only: the demo's policies against a bare route on one gateway, and that bare route
    against the same route on a gateway with no policies in its config."""
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "bench", "--policies-only", "--seconds", "1",
                          "--no-warmup"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"policies_vs_bare=[\d.]+ policies_cpu_vs_bare=[\d.]+ policies_cpu_vs_bare_paired=[\d.]+ "
                        r"bare_cpu_vs_unloaded_paired=[\d.]+", lines[-1]), lines[-1]
    table = "\n".join(lines)
    for label in ("demo policies, 1 worker", "bare route, 1 worker", "bare route, no policies loaded"):
        assert re.search(re.escape(label) + r" +\d+ req/s", table), table
    assert "on a gateway with no policies in its config" in table


@pytest.mark.timeout(180)
def test_bench_mirror_only_smoke():
    """--mirror-only: every request mirrored to a catalog v2 that answers differently, against the
    bare route on one gateway, with a paced client and with wrk at one connection."""
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "bench", "--mirror-only", "--seconds",
                          "1", "--no-warmup"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"mirror_idle_p50_vs_bare=[\d.]+ mirror_cpu_vs_bare_paired=[\d.]+ "
                        r"mirror_busy_p50_vs_bare_paired=[\d.]+", lines[-1]), lines[-1]
    table = "\n".join(lines)
    copies = re.search(r"mirror copies +(\d+) sent, (\d+) compared, (\d+) differed", table)
    assert copies and int(copies[1]) > 0 and int(copies[3]) > 0, table
    assert "WARNING" not in table
