"""Faults: percentages, every Nth call, failing for a while then recovering, the opt-in header."""

from __future__ import annotations

import pytest

from mesh.resilience.faults import Fault, FaultPolicy, FaultState, parse_header


def test_percentages():
    rolls = iter([0.05, 0.5, 0.95] * 100)
    state = FaultState(FaultPolicy(delay=0.2, delay_percent=10, abort=503, abort_percent=60),
                       rnd=lambda: next(rolls))
    first = state.next()  # delay roll 5 < 10, abort roll 50 < 60
    assert first.delay == 0.2 and first.abort == 503
    second = state.next()  # delay roll 95 ≥ 10, abort roll 5 < 60
    assert second == Fault(0.0, 503)


def test_every_nth_and_for_a_while():
    nth = FaultState(FaultPolicy(abort=500, every_nth=3))
    assert [nth.next().abort for _ in range(6)] == [None, None, 500, None, None, 500]
    now = [0.0]
    window = FaultState(FaultPolicy(abort=503, for_seconds=5), clock=lambda: now[0])
    assert window.next().abort == 503
    now[0] = 4.9
    assert window.next().abort == 503
    now[0] = 5.1
    assert window.next().abort is None and window.injected == 2


@pytest.mark.parametrize("header, fault", [
    ("delay=200ms", Fault(delay=0.2)), ("abort=503", Fault(abort=503)),
    ("delay=1s, abort=502", Fault(delay=1.0, abort=502)), ("drip=100,reset=10", Fault(drip=100.0, reset_after=10)),
])
def test_header(header, fault):
    assert parse_header(header) == fault


@pytest.mark.parametrize("header, error", [
    ("delay=soon", "expected a duration like 250ms, 2s or 1m (got 'soon')"),
    ("abort=99", "abort: expected a status 200-599 (got '99')"),
    ("explode=1", "expected delay=DURATION, abort=STATUS, drip=BYTES_PER_S or reset=BYTES (got 'explode=1')"),
    ("delay=5m", "delay: at most 60s (got '5m')"),
])
def test_bad_header(header, error):
    with pytest.raises(ValueError) as e:
        parse_header(header)
    assert str(e.value) == error
