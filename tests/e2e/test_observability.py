"""Observability end to end at the gateway: a real Prometheus scraping two gateway workers as one,
and record/replay of real traffic (traces across the mesh: test_observability_mesh.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from mesh.security import pki
from tools.otlp import Receiver

from .conftest import Mesh, demo_config, get, wait_until
from .prom import Prometheus

MITMESH = [sys.executable, "-m", "mesh.cli"]


@pytest.fixture
def observed(tmp_path):
    """The demo with users answering after 50 ms, two gateway workers, traces to a receiver."""
    pki.init_edge(tmp_path / "certs")
    config = demo_config(tmp_path / "certs")
    config["services"]["users"]["versions"]["v1"]["launch"]["latency"] = "50ms"
    with Receiver() as receiver:
        config["observability"] = {"tracing": {"otlp_endpoint": receiver.url},
                                   "access_log": {"path": "logs/access.log"}}
        m = Mesh(tmp_path, config)
        m.write()
        try:
            m.start_services()
            m.start_gateway(workers=2)
            m.receiver = receiver
            yield m
        finally:
            m.stop()


def test_prometheus_rate_and_quantile_across_workers(observed):
    admin = observed.admin.removeprefix("http://")
    with Prometheus(observed.tmp, [admin]) as prom:
        wait_until(prom.ready, timeout=20, interval=0.2)  # scraping has begun
        seconds, sent = 9.0, []
        stop = time.monotonic() + seconds

        def drive():  # 20 requests per second, each on a new connection: both workers serve
            while time.monotonic() < stop:
                t = time.monotonic()
                sent.append(get(observed.url + "/users/alice")[0])
                time.sleep(max(0.0, 0.05 - (time.monotonic() - t)))

        driver = threading.Thread(target=drive)
        driver.start()
        time.sleep(8.5)  # query while traffic still flows, with a 5 s window full of 1 s scrapes
        rate = prom.scalar('sum(rate(mitmesh_requests_total{route="users",code="200"}[5s]))')
        p50 = prom.scalar('histogram_quantile(0.5, sum by (le) '
                          '(rate(mitmesh_request_duration_seconds_bucket{route="users"}[5s])))')
        driver.join()
    assert set(sent) == {200}
    achieved = len(sent) / seconds
    assert rate is not None and abs(rate - achieved) / achieved < 0.25, (rate, achieved)
    assert p50 is not None and 0.05 <= p50 <= 0.1, p50  # 50 ms upstream latency: the 50–100 ms bucket


def test_record_and_replay_against_another_version(observed):
    out = observed.tmp / "flows.mitm"
    rec = subprocess.Popen(MITMESH + ["record", "--admin", observed.admin, "--seconds", "8",
                                      "--config", str(observed.path), "--filter", "~u /catalog/",
                                      "-o", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the recorder is a new process: under load its start alone can take seconds
        wait_until(lambda: get(observed.admin + "/record")[1]["recording"], timeout=30)
        time.sleep(0.5)  # every worker has picked the recording up
        for i in (1, 2, 3, 4, 1, 2):
            assert get(observed.url + f"/catalog/items/{i}")[0] == 200
        get(observed.url + "/users/alice")  # filtered out
        output, _ = rec.communicate(timeout=20)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 0 and "wrote 6 flows" in output, output

    same = subprocess.run(MITMESH + ["replay", str(out), "--against", "catalog/v1", "--config",
                                     str(observed.path)], capture_output=True, text=True)
    assert same.returncode == 0 and "6 same, 0 differ, 0 failed" in same.stdout, same.stdout
    differ = subprocess.run(MITMESH + ["replay", str(out), "--against", "catalog/v2", "--config",
                                       str(observed.path)], capture_output=True, text=True)
    assert differ.returncode == 1 and "0 same, 6 differ" in differ.stdout, differ.stdout
    assert "DIFF GET /items/1" in differ.stdout
    assert "item.price: 49.9 vs (absent)" in differ.stdout
    assert "item.price_cents: (absent) vs 4990" in differ.stdout
