"""Discovery under steady load: scaling a service from 1 to 3 instances, stopping one gracefully and
killing one with SIGKILL, all found (and lost) over mDNS by a gateway that keeps serving."""

from __future__ import annotations

import time

from .conftest import Load, wait_until


def test_scale_up_graceful_stop_and_sigkill_under_load(sidecar_mesh):
    m = sidecar_mesh
    (first,) = m.start_instances({"service": "catalog", "name": "catalog-a"})
    m.start_gateway()
    m.wait_instances(1)
    load = Load(m.url + "/catalog/items", threads=3).start()
    try:
        wait_until(lambda: load.seen("catalog-a"), timeout=5)

        # 1 → 3 instances: each takes traffic within 2 s of its announcement
        second, third = m.start_instances({"service": "catalog", "name": "catalog-b"},
                                          {"service": "catalog", "name": "catalog-c"})
        for s in (second, third):
            got = wait_until(lambda s=s: load.seen(s.name), timeout=10)
            assert got.start - s.announced <= 2.0, (s.name, got.start - s.announced)

        # graceful stop: goodbye, drain, exit; no request fails
        stopped = time.time()
        m.begin_stop(second)
        left = m.wait_instances(2, timeout=1.0)  # the gateway saw the goodbye within 1 s
        assert second.inbound not in {i["address"] for i in left}
        m.stop_instance(second)  # the sidecar drained and exited; now its app goes
        time.sleep(0.5)
        assert not [s for s in load.samples if s.status != 200], "a request failed during scale-up or graceful stop"
        assert not [s for s in load.samples if s.instance == "catalog-b" and s.start > stopped + 1.0]

        # SIGKILL: no goodbye; liveness takes it out of rotation
        # `killed`: when its sidecar was dead; a request sent until then may have reached it
        killed = m.kill_instance(third)
        out = wait_until(lambda: [i for i in m.registry() if i["address"] == third.inbound
                                  and i["healthy"] is False], timeout=10)
        assert out and time.time() - killed <= 10
        time.sleep(1.0)
    finally:
        samples = load.stop()
    failed = [s for s in samples if s.status != 200]
    # only requests already in flight to the killed instance may fail (retries come later); the
    # client is not told the endpoint, the gateway's access log (its stdout here) says which it was
    log = m.children["gateway"].log.read_text().splitlines()

    def went_to_killed(s) -> bool:
        rid = (s.body or {}).get("request_id")
        return bool(rid) and any(rid in line and third.inbound in line for line in log)
    assert all(s.start <= killed and went_to_killed(s) for s in failed), (killed, failed)
    after = [s for s in samples if s.start > killed]
    assert len(after) > 30 and all(s.status == 200 and s.instance == "catalog-a" for s in after)
