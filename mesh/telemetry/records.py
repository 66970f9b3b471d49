"""The latest records of one kind (flows, mirror differences) that every worker of a proxy can read.

A supervisor's workers share the directory of Prometheus's multiprocess files: each worker writes
its own file there and whichever worker answers `/metrics` reads them all. Records take the same
path: each worker keeps its latest records in a ring of fixed slots in an mmap'ed file of that
directory (`<kind>-<worker>.ring`, so a restarted worker carries on with its predecessor's ring),
and `latest()` merges every worker's. Without a supervisor they stay in memory.

A slot is `seq (u64), length (u32), payload`; the writer zeroes the header, writes the payload, then
the header, and a reader keeps a slot only if its header reads the same before and after the copy.
Payloads are `marshal`ed: about 3x faster than JSON on the request path, and written and read by the
same interpreter only, in the supervisor's private directory.
"""

from __future__ import annotations

import collections
import glob
import json
import marshal
import mmap
import os
import struct
from typing import Callable

MAGIC = b"MMR1"
HEAD = struct.Struct("<4sII")  # magic, slots, slot size
SLOT = struct.Struct("<QI")  # sequence number (0: empty), payload length


class Records:
    """The last `capacity` records of this worker, and `latest()` of every worker."""

    def __init__(self, kind: str, capacity: int, slot_size: int, directory: str | None = None,
                 worker: str | None = None, order: str = "time"):
        self.kind, self.capacity, self.slot_size, self.order = kind, capacity, slot_size, order
        self.directory = directory
        self._memory: collections.deque | None = None
        self._ring: Ring | None = None
        if directory is None:
            self._memory = collections.deque(maxlen=capacity)
        else:
            name = worker if worker is not None else str(os.getpid())
            self._ring = Ring(os.path.join(directory, f"{kind}-{name}.ring"), capacity, slot_size)

    def append(self, record: dict) -> None:
        if self._ring is None:
            self._memory.append(record)
        else:
            self._ring.append(encode(record, self._ring.payload_size))

    def latest(self) -> list[dict]:
        """The newest `capacity` records of every worker, oldest first."""
        if self._ring is None:
            return list(self._memory)
        found = []
        for path in glob.glob(os.path.join(glob.escape(self.directory), f"{self.kind}-*.ring")):
            found += [r for r in (decode(p) for p in read(path)) if r is not None]
        found.sort(key=_key(self.order))
        return found[-self.capacity:]

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()


def _key(order: str) -> Callable[[dict], float]:
    return lambda r: r.get(order) or 0.0


class Ring:
    """One writer's ring of slots in an mmap'ed file."""

    def __init__(self, path: str, slots: int, slot_size: int):
        self.path, self.slots, self.slot_size = path, slots, slot_size
        self.payload_size = slot_size - SLOT.size
        size = HEAD.size + slots * slot_size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fresh = os.fstat(fd).st_size != size
            if fresh:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if fresh or HEAD.unpack_from(self._mm, 0) != (MAGIC, slots, slot_size):
            self._mm[:] = bytes(size)
            HEAD.pack_into(self._mm, 0, MAGIC, slots, slot_size)
        self.seq = max((SLOT.unpack_from(self._mm, self._offset(i))[0] for i in range(slots)), default=0)

    def _offset(self, index: int) -> int:
        return HEAD.size + index * self.slot_size

    def append(self, payload: bytes) -> None:
        self.seq += 1
        off = self._offset(self.seq % self.slots)
        SLOT.pack_into(self._mm, off, 0, 0)
        start = off + SLOT.size
        self._mm[start:start + len(payload)] = payload
        SLOT.pack_into(self._mm, off, self.seq, len(payload))

    def close(self) -> None:
        self._mm.close()


def read(path: str) -> list[bytes]:
    """The payloads of a ring file written by any worker, in no particular order."""
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # gone, or empty while its worker creates it
        return []
    try:
        if mm.size() < HEAD.size:
            return []
        magic, slots, slot_size = HEAD.unpack_from(mm, 0)
        if magic != MAGIC or mm.size() < HEAD.size + slots * slot_size:
            return []
        out = []
        for i in range(slots):
            off = HEAD.size + i * slot_size
            head = SLOT.unpack_from(mm, off)
            if head[0] == 0 or head[1] > slot_size - SLOT.size:
                continue
            data = mm[off + SLOT.size:off + SLOT.size + head[1]]
            if SLOT.unpack_from(mm, off) == head:  # not rewritten while we copied it
                out.append(data)
        return out
    finally:
        mm.close()


def encode(record: dict, limit: int) -> bytes:
    """marshal of the record; one too big for a slot keeps its short fields and says so."""
    try:
        data = marshal.dumps(record)
    except ValueError:  # a value marshal does not know: keep its text, as /flows would show it
        record = json.loads(json.dumps(record, default=str))
        data = marshal.dumps(record)
    if len(data) <= limit:
        return data
    short = {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v)
             for k, v in record.items() if not isinstance(v, (list, dict))}
    short["truncated"] = f"the record was {len(data)} bytes; lists and long texts were left out"
    data = marshal.dumps(short)
    return data if len(data) <= limit else marshal.dumps({"truncated": "the record was too big"})


def decode(data: bytes) -> dict | None:
    try:
        record = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    return record if isinstance(record, dict) else None
