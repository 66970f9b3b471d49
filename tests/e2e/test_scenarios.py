"""Every failure scenario in its short run, as CI runs them: `mitmesh scenario NAME --short` exits 0
(PASS) and its report carries the figures it promises. As root (CI) they run on pods, the real
deployment mode (each instance in a network namespace of its own), once each. Two scenarios run at a time (each is a mesh
of its own: own loopback /24, own mesh id, own namespaces), so the file takes about half the sum."""

from __future__ import annotations

import concurrent.futures
import re
import subprocess

import pytest

from tools import netns, pods
from mesh.runtime import procs
from tools.scenario import PASS, SKIPPED

pytestmark = pytest.mark.e2e

RUNNABLE = ["partition", "cert-expiry", "zone-outage", "payments-error-burst", "instance-killed", "breaker",
            "slow-instance", "charge-exactly-once", "region-outage", "control-plane-loss"]
# every run: progress through the start-up (no silent wait for the mesh), a row per phase with
# success and latency, and the proxies' figures
COMMON = [r"\d\.\ds  waiting for .*\n(.*\n)*?\s+\d+\.\ds  .*knows the \d+ instances\n",
          r"phase\s+requests\s+success\s+p50\s+p99", r"\nall\s+\d+\s+[\d.]+ %\s+[\d.]+ ms\s+[\d.]+ ms",
          r"\n  retries\s+\d+", r"breaker transitions\s+\d+", r"outlier ejections\s+\d+",
          r"endpoints out of rotation\s+\d+"]
EXPECTED = {
    "instance-killed": [r"PASS  ≥ 99\.5 % of all requests succeed", r"PASS  100 % succeed from 2 s after the kill",
                        r"catalog-2 in the gateway's registry\s+healthy=False",
                        r"requests answered by catalog-2 after the kill\s+0\n"],
    "slow-instance": [r"PASS  ≥ 99\.9 % of all requests succeed", r"PASS  p99 latency ≤ 300 ms",
                      r"PASS  catalog-1 ejected by outlier detection", r"upstream failures\s+\d+ \(timeout \d+"],
    "payments-error-burst": [r"PASS  100 % of the orders succeed", r"PASS  calls to payments ≤",
                             r"charges each payments app received\s+payments-1 \d+, payments-2 \d+, payments-3 \d+"],
    "breaker": [r"PASS  calls during the outage ≤", r"breaker transitions\s+\d+ \(.*to open ([3-9]|\d\d)",
                r"PASS  the breakers opened", r"PASS  100 % succeed from 2 s \+ 1 s after the recovery"],
    "zone-outage": [r"PASS  before the outage ≥ 99 % answered in zone a", r"answers by zone before the outage\s+a \d+\n",
                    r"answers by zone from 2 s after\s+b \d+\n", r"PASS  from 2 s after, every answer from zone b"],
    "cert-expiry": [r"PASS  100 % succeed while certificates renew and expire\s+100\.00 %",
                    r"certificates that expired while renewing\s+\w+ at", r"renewals while renewing\s+[1-9]",
                    r"PASS  no fresh handshake succeeds once every certificate expired\s+0 of [1-9]",
                    r"fresh handshakes after all expired\s+0 of \d+ succeeded; refused: .*expired",
                    r"PASS  100 % succeed from 2 s after renewal resumes"],
    "charge-exactly-once": [r"PASS  payments crashed right after a charge\s+payments-1, payments-2",
                            r"PASS  every order charged exactly once\s+(\d+) of \1 once; twice or more 0; never 0",
                            r"PASS  every client gets an answer", r"charges each payments app made\s+payments-1 \d+"],
    "region-outage": [r"PASS  before the outage ≥ 99 % answered in eu-1", r"answers by region while eu is gone\s+us \d+\n",
                      r"PASS  … every answer from region us", r"answers by zone after eu returns\s+eu-1 \d+\n",
                      r"PASS  from 2 s after eu returns ≥ 99 % answered in eu-1"],
    "control-plane-loss": [r"PASS  100 % succeed while quorum is lost", r"PASS  one member lost: revision 2 applied",
                           r"PASS  quorum lost: config and discovery flagged stale within 15 s",
                           r"PASS  quorum lost: last config and last known endpoints kept\s+revision 2, instances \['catalog-1'\]",
                           r"PASS  back: not stale within 30 s, revision 3 applied without a restart"],
    "partition": [r"PASS  ≥ 99\.9 % of all requests succeed", r"PASS  from 2 s after the cut until the heal",
                  r"h2 in the gateway's cluster during the partition\s+healthy=False",
                  r"answers by h2 while partitioned\s+0\n", r"PASS  h2 answers again within 10 s"],
}


def run_scenario(name: str, tmp) -> tuple[int, str]:
    child = procs.spawn(f"scenario-{name}", procs.python("-m", "mesh.cli", "scenario", name, "--short"),
                        log_dir=tmp)
    try:
        code = child.proc.wait(90)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        child.stop(timeout=15)  # SIGTERM: the scenario stops everything it started
    return code, child.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Every selected scenario, started at once on two workers; a test waits for its own."""
    tmp = tmp_path_factory.mktemp("scenarios")
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_scenario, name, tmp) for name in RUNNABLE if name in selected}
        yield futures
        for f in futures.values():
            f.cancel()


@pytest.mark.parametrize("name", RUNNABLE)
def test_scenario_passes_with_its_report(runs, name):
    code, out = runs[name].result()
    if name in ("partition", "control-plane-loss") and netns.why_not() is not None:
        assert code == SKIPPED and f"SKIP  {name}: {netns.why_not()}" in out, out
        pytest.skip(netns.why_not())
    assert code == PASS, out
    assert re.search(rf"\nPASS  {name}\n", out), out
    # on pods where they can be made (region-outage's etcd is on this host's loopback: loopback)
    if pods.why_not() is None and name != "region-outage":
        assert "(short run, isolation pod)" in out and re.search(r"\nmesh .*\bpods?\b", out), out
    if pods.why_not() is None and name == "region-outage":
        assert "(short run, isolation loopback; no pods: its etcd listens on this host's loopback" in out, out
    assert "\n  FAIL  " not in out, out
    for pattern in COMMON + EXPECTED[name]:
        assert re.search(pattern, out), f"{pattern!r} not in the report:\n{out}"


def test_list_names_every_scenario_and_what_is_not_available():
    out = subprocess.run(procs.python("-m", "mesh.cli", "scenario", "--list"), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == ["instance-killed", "slow-instance", "payments-error-burst", "breaker", "zone-outage",
                     "partition", "cert-expiry", "charge-exactly-once",
                     "region-outage", "control-plane-loss"]
    assert "not yet available" not in out.stdout
    unknown = subprocess.run(procs.python("-m", "mesh.cli", "scenario", "nope"), capture_output=True,
                             text=True, timeout=30)
    assert unknown.returncode == 2 and "unknown scenario 'nope'" in unknown.stderr
