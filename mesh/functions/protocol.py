"""The framed protocol between a proxy and its function instances: a 4-byte big-endian length, then
that many bytes of JSON, over the instance's stdin (calls) and stdout (ready, results).

Kept free of mesh imports: the worker process loads this file beside itself, nothing else of mitmesh.
"""

from __future__ import annotations

import json
import struct

MAX_FRAME = 64 * 1024 * 1024  # a frame larger than this is a broken peer, not a payload
_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    pass


def encode(message: dict) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return _LEN.pack(len(data)) + data


def decode_length(head: bytes) -> int:
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes is larger than {MAX_FRAME}")
    return n


async def read(reader) -> dict | None:
    """One message from an asyncio StreamReader; None at a clean end of stream."""
    try:
        head = await reader.readexactly(4)
    except Exception as e:  # IncompleteReadError at EOF, or a reset pipe
        if getattr(e, "partial", b"") == b"":
            return None
        raise ProtocolError("stream ended inside a frame header") from None
    body = await reader.readexactly(decode_length(head))
    return json.loads(body)


def read_sync(stream) -> dict | None:
    """One message from a binary file (the worker's stdin); None at end of stream."""
    head = stream.read(4)
    if not head:
        return None
    if len(head) < 4:
        raise ProtocolError("stream ended inside a frame header")
    n = decode_length(head)
    body = stream.read(n)
    if len(body) < n:
        raise ProtocolError("stream ended inside a frame")
    return json.loads(body)
