"""Downstream connection limits: the slow-client timeouts and the stream-reset window, on a fake clock."""

from __future__ import annotations

from mesh.core.downstream import Connection, ResetWindow, Timeouts

LIMITS = Timeouts(headers=10.0, request=30.0, idle=60.0)


def test_a_connection_that_sends_no_complete_head_is_closed_after_the_header_timeout():
    c = Connection(opened=100.0)
    assert c.overdue(109.9, LIMITS) is None
    assert c.overdue(110.1, LIMITS) == "no complete request head within 10s (request_headers_timeout)"


def test_a_body_slower_than_the_request_timeout_closes_the_connection():
    c = Connection(opened=0.0)
    c.head("f1", 5.0)
    assert c.overdue(34.9, LIMITS) is None  # the header timeout is over: the head came
    assert c.overdue(35.1, LIMITS) == "request body not complete within 30s (request_timeout)"
    c.complete("f1")
    assert c.overdue(500.0, LIMITS) is None  # complete, being answered: the route's timeouts apply


def test_keep_alive_idle_and_a_next_head_that_trickles():
    c = Connection(opened=0.0)
    c.head("f1", 1.0)
    c.complete("f1")
    c.done("f1", 2.0)
    assert c.served == 1 and not c.streams
    assert c.overdue(61.9, LIMITS) is None
    assert c.overdue(62.1, LIMITS) == "idle for 60s between requests (idle_timeout)"
    c.activity(20.0)  # bytes of a next head arrived
    assert c.overdue(30.1, LIMITS) == "no complete request head within 10s (request_headers_timeout)"
    c.head("f2", 25.0)  # ... and it did complete in time
    assert c.next_head is None and c.overdue(30.1, LIMITS) is None


def test_an_answer_still_being_written_is_not_idleness():
    c = Connection(opened=0.0)
    c.head("f1", 1.0)
    c.done("f1", 2.0)
    c.sending(61.0)  # a slow reader still takes the answer
    assert c.overdue(62.5, LIMITS) is None
    assert c.overdue(121.5, LIMITS) == "idle for 60s between requests (idle_timeout)"


def test_multiplexed_streams_count_the_oldest_unfinished_body():
    c = Connection(opened=0.0)
    c.head("a", 1.0)
    c.head("b", 2.0)
    c.complete("a")
    assert c.overdue(31.5, LIMITS) is None
    assert c.overdue(32.5, LIMITS) == "request body not complete within 30s (request_timeout)"
    c.done("b", 3.0)
    c.done("b", 3.0)  # an error after an answer is not a second request
    assert c.served == 1 and list(c.streams) == ["a"]


def test_tick_follows_the_shortest_timeout():
    assert LIMITS.tick == 1.0
    assert Timeouts(0.4, 2.0, 2.0).tick == 0.1
    assert Timeouts(0.01, 2.0, 2.0).tick == 0.05


def test_reset_window_slides():
    w = ResetWindow(limit=3, window=10.0)
    assert [w.hit(t) for t in (0.0, 1.0, 2.0)] == [False, False, False]
    assert w.hit(3.0) is True  # a fourth within 10 s
    w = ResetWindow(limit=3, window=10.0)
    assert [w.hit(t) for t in (0.0, 1.0, 2.0, 10.5, 11.0)] == [False, False, False, False, False]
