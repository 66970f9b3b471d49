"""Header reads and edits in one pass over a message's raw fields, for the per-request paths.

Same semantics as mitmproxy's `Headers` (names case-insensitive, repeated values folded with ", ",
UTF-8 with surrogate escapes), without the generic `MutableMapping` route: `headers.pop(name)` is
a lookup, a membership test, a removal and a rebuild, each a scan with a conversion per field.
"""

from __future__ import annotations

from mitmproxy import http


def _bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def get(headers: http.Headers, name: str) -> str | None:
    """`headers.get(name)`."""
    key = _bytes(name).lower()
    values = [v for k, v in headers.fields if k.lower() == key]
    return b", ".join(values).decode("utf-8", "surrogateescape") if values else None


def remove(headers: http.Headers, name: str) -> None:
    """`headers.pop(name, None)`: every field of that name."""
    key = _bytes(name).lower()
    fields = headers.fields
    kept = tuple([f for f in fields if f[0].lower() != key])
    if len(kept) != len(fields):
        headers.fields = kept


def put(headers: http.Headers, name: str, value: str) -> None:
    """`headers[name] = value`: appended when absent, else mitmproxy's replacement in place."""
    key = _bytes(name)
    low = key.lower()
    if low in [k.lower() for k, _ in headers.fields]:
        headers[name] = value
    else:
        headers.fields += ((key, _bytes(value)),)
