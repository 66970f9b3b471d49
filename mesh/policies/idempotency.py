"""Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header): one record per key, in memory or
in Redis, that is in flight until the first answer is kept; what a request with a key gets is decided
here from that record, so any proxy sharing the storage decides alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from mesh.config import schema

REPLAYED = "idempotent-replayed"  # Stripe's header on a kept answer sent again
MAX_KEY = 255  # longer keys are refused: they are identifiers, not payloads


@dataclass(frozen=True, slots=True)
class Policy:
    header: str  # lower case
    ttl: float
    lock: float
    storage: str  # "memory" or a redis:// URI
    methods: frozenset[str]
    required: bool


def compile(model: schema.Idempotency, ctx: object = None) -> Policy:
    """The route's frozen policy (needs nothing of the route: `ctx` is unused); the Redis URI in the
    form redis-py takes."""
    storage = model.storage.removeprefix("async+")
    if storage != "memory":  # its client is imported with the config, not by the first request
        import redis.asyncio  # noqa: F401
    return Policy(model.header.lower(), model.ttl, model.lock, storage, frozenset(model.methods), model.required)


@dataclass(frozen=True, slots=True)
class Answer:
    """A kept answer: replayed as it came from the upstream."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def dumps(self) -> dict:
        return {"status": self.status, "body": base64.b64encode(self.body).decode(),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers]}

    @classmethod
    def loads(cls, d: dict) -> Answer:
        return cls(d["status"], tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in d["headers"]),
                   base64.b64decode(d["body"]))


@dataclass(frozen=True, slots=True)
class Record:
    fingerprint: str
    token: str  # who holds it in flight: only they may keep an answer or let it go
    answer: Answer | None = None  # None while in flight


def record_key(route: str, caller: str | None, key: str) -> str:
    """Keys are scoped by route and caller (`FlowState.caller`: method, issuer and name), and
    hashed: a key is never stored or logged as sent."""
    digest = hashlib.sha256(f"{route}\0{caller or ''}\0{key}".encode()).hexdigest()
    return f"mitmesh:idempotency:{digest}"


def fingerprint(method: str, target: str, body: bytes) -> str:
    """What makes two requests "the same request" for one key: method, path with query, body."""
    h = hashlib.sha256(method.encode() + b"\0" + target.encode() + b"\0")
    h.update(body)
    return h.hexdigest()


def check_key(value: str) -> str | None:
    """Why a key is refused (400), or None."""
    if not value.strip():
        return "the idempotency key is empty"
    if len(value) > MAX_KEY:
        return f"the idempotency key is longer than {MAX_KEY} characters"
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """`forward` (the record is ours, in flight), or an answer: `in_flight` 409, `mismatch` 422,
    `replay` (the kept answer)."""

    kind: str
    token: str = ""
    answer: Answer | None = None


def judge(found: Record | None, fp: str, token: str) -> Verdict:
    """What a request with fingerprint `fp` gets, given the record `begin` found (None: it made one)."""
    if found is None:
        return Verdict("forward", token)
    if found.fingerprint != fp:
        return Verdict("mismatch")
    if found.answer is None:
        return Verdict("in_flight")
    return Verdict("replay", answer=found.answer)


class Store(Protocol):
    async def begin(self, key: str, record: Record, lock: float) -> Record | None:
        """Create the in-flight record unless one exists; returns the existing one, or None."""

    async def keep(self, key: str, record: Record, ttl: float) -> None:
        """Replace our in-flight record with the kept answer."""

    async def release(self, key: str, token: str) -> None:
        """Drop our in-flight record: the request surely did not run, a retry may."""

    async def close(self) -> None: ...


class MemoryStore:
    """One worker's records, expiring; swept at most once a second when records are added."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._records: dict[str, tuple[float, Record]] = {}
        self._swept = 0.0

    def _live(self, key: str) -> Record | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._records[key]
            return None
        return entry[1]

    async def begin(self, key: str, record: Record, lock: float) -> Record | None:
        found = self._live(key)
        if found is not None:
            return found
        now = self.clock()
        if now - self._swept >= 1.0:
            self._swept = now
            for k in [k for k, (exp, _) in self._records.items() if exp <= now]:
                del self._records[k]
        self._records[key] = (now + lock, record)
        return None

    async def keep(self, key: str, record: Record, ttl: float) -> None:
        found = self._live(key)
        if found is not None and found.token == record.token:
            self._records[key] = (self.clock() + ttl, record)

    async def release(self, key: str, token: str) -> None:
        found = self._live(key)
        if found is not None and found.token == token:
            del self._records[key]

    async def close(self) -> None:
        self._records.clear()


# compare-and-set on our token: a record that expired and was taken by another request stays theirs
_KEEP = """local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['token'] == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end"""
_RELEASE = """local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['token'] == ARGV[1] then redis.call('DEL', KEYS[1]) end"""


class RedisStore:
    """Records in Redis (SET NX with an expiry): one key is one record for every proxy using it."""

    def __init__(self, uri: str, timeout: float = 1.0):
        import redis.asyncio as aioredis

        self.client = aioredis.from_url(uri, socket_timeout=timeout, socket_connect_timeout=timeout)

    @staticmethod
    def _dumps(record: Record) -> str:
        return json.dumps({"fp": record.fingerprint, "token": record.token,
                           "answer": record.answer.dumps() if record.answer else None})

    @staticmethod
    def _loads(raw: bytes) -> Record:
        d = json.loads(raw)
        return Record(d["fp"], d["token"], Answer.loads(d["answer"]) if d["answer"] else None)

    async def begin(self, key: str, record: Record, lock: float) -> Record | None:
        while True:
            if await self.client.set(key, self._dumps(record), nx=True, px=max(1, int(lock * 1000))):
                return None
            raw = await self.client.get(key)
            if raw is not None:  # else it expired between the two calls: try again
                return self._loads(raw)

    async def keep(self, key: str, record: Record, ttl: float) -> None:
        await self.client.eval(_KEEP, 1, key, record.token, self._dumps(record), max(1, int(ttl * 1000)))

    async def release(self, key: str, token: str) -> None:
        await self.client.eval(_RELEASE, 1, key, token)

    async def close(self) -> None:
        await self.client.aclose()


class Stores:
    """The stores of one proxy process, by storage URI; they outlive reloads (records survive edits)."""

    def __init__(self):
        self._stores: dict[str, Store] = {}

    def get(self, storage: str) -> Store:
        store = self._stores.get(storage)
        if store is None:
            store = self._stores[storage] = MemoryStore() if storage == "memory" else RedisStore(storage)
        return store

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()
        self._stores.clear()


def new_token() -> str:
    return secrets.token_hex(8)
