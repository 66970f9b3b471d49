"""Idempotency records: the verdicts, expiry, tokens, and Redis records shared by two clients."""

from __future__ import annotations

from mesh.policies import idempotency as idem
from mesh.policies.idempotency import Answer, MemoryStore, Record, RedisStore, judge

ANSWER = Answer(201, ((b"x-charge", b"1"),), b'{"ok": true}')


def test_verdicts():
    assert judge(None, "fp", "t").kind == "forward"
    assert judge(Record("fp", "other"), "fp", "t").kind == "in_flight"
    assert judge(Record("other-fp", "other"), "fp", "t").kind == "mismatch"
    assert judge(Record("other-fp", "other", ANSWER), "fp", "t").kind == "mismatch"
    v = judge(Record("fp", "other", ANSWER), "fp", "t")
    assert v.kind == "replay" and v.answer == ANSWER


def test_fingerprints_and_keys():
    assert idem.fingerprint("POST", "/a", b"1") != idem.fingerprint("POST", "/a", b"2")
    assert idem.fingerprint("POST", "/a", b"1") != idem.fingerprint("PUT", "/a", b"1")
    assert idem.record_key("r", "alice", "k") != idem.record_key("r", "bob", "k")  # scoped by caller
    assert "k" not in idem.record_key("r", None, "k").rpartition(":")[2]  # hashed, never stored as sent
    assert idem.check_key("") and idem.check_key("x" * 256) and idem.check_key("abc") is None


async def test_memory_records_expire_and_only_their_holder_settles_them():
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    assert await store.begin("k", Record("fp", "t1"), lock=5) is None
    assert (await store.begin("k", Record("fp", "t2"), lock=5)).token == "t1"
    await store.keep("k", Record("fp", "t2", ANSWER), ttl=60)  # not the holder: ignored
    assert (await store.begin("k", Record("fp", "t3"), lock=5)).answer is None
    now[0] = 6.0  # the holder died: the lock expired, the next request takes the key
    assert await store.begin("k", Record("fp", "t4"), lock=5) is None
    await store.release("k", "t1")  # an old holder cannot free it
    assert (await store.begin("k", Record("fp", "t5"), lock=5)).token == "t4"
    await store.keep("k", Record("fp", "t4", ANSWER), ttl=60)
    now[0] = 60.0
    assert (await store.begin("k", Record("fp", "t6"), lock=5)).answer == ANSWER
    now[0] = 67.0
    assert await store.begin("k", Record("fp", "t7"), lock=5) is None


async def test_redis_records_are_one_per_key_for_every_client(redis_server):
    one, two = RedisStore(redis_server.url), RedisStore(redis_server.url)
    try:
        assert await one.begin("k", Record("fp", "t1"), lock=5) is None
        assert (await two.begin("k", Record("fp", "t2"), lock=5)).token == "t1"
        await two.release("k", "t2")  # not the holder
        await two.keep("k", Record("fp", "t2", ANSWER), ttl=60)
        assert (await two.begin("k", Record("fp", "t2"), lock=5)).answer is None
        await one.keep("k", Record("fp", "t1", ANSWER), ttl=60)
        assert (await two.begin("k", Record("fp", "t2"), lock=5)).answer == ANSWER
        assert await one.begin("free", Record("fp", "t1"), lock=5) is None
        await one.release("free", "t1")
        assert await two.begin("free", Record("fp", "t2"), lock=5) is None
    finally:
        await one.close()
        await two.close()
