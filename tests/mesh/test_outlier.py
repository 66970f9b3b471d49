"""Outlier ejection: consecutive failures eject, the time grows per ejection, the share is capped."""

from __future__ import annotations

from mesh.resilience.outlier import OutlierDetector, OutlierPolicy


def detector(now, **kw):
    return OutlierDetector(OutlierPolicy(**{"consecutive_5xx": 3, "consecutive_gateway_failure": 3,
                                           "base_ejection_time": 10, "max_ejection_time": 25,
                                           "max_ejection_percent": 50, **kw}), clock=lambda: now[0])


def test_consecutive_failures_eject_and_success_resets():
    now = [0.0]
    d = detector(now)
    d.failure("a", status=500, cluster_size=3)
    d.failure("a", status=500, cluster_size=3)
    d.success("a")
    assert d.failure("a", status=500, cluster_size=3) is None
    assert d.failure("a", status=None, cluster_size=3) is None
    assert d.failure("a", status=503, cluster_size=3) == 10
    assert d.ejected("a")
    now[0] = 10.5
    assert not d.ejected("a")
    for _ in range(2):
        d.failure("a", status=None, cluster_size=3)
    assert d.failure("a", status=None, cluster_size=3) == 20  # second ejection: twice as long
    now[0] = 31
    for _ in range(3):
        last = d.failure("a", status=None, cluster_size=3)
    assert last == 25  # capped at max_ejection_time


def test_never_more_than_the_max_share_but_at_least_one():
    now = [0.0]
    d = detector(now, max_ejection_percent=10)
    for key in ("a", "b"):
        for _ in range(3):
            d.failure(key, status=503, cluster_size=3)
    assert d.ejected("a") and not d.ejected("b")  # 10 % of 3 rounds down, but one may always go
    d2 = detector(now, max_ejection_percent=67)
    for key in ("a", "b", "c"):
        for _ in range(3):
            d2.failure(key, status=503, cluster_size=3)
    assert d2.ejected_count() == 2
