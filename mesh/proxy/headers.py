"""mitmproxy's header lookups, the same answers without a Python call per header field.

`headers.get("host")` goes `Mapping.get` → `MultiDict.__getitem__` → `Headers.get_all` →
`MultiDict.get_all`, which calls the static method `_kconv` once for every field to fold its name.
mitmproxy does that about 19 times for each proxied request (the Host header, the body's framing
headers, Connection, ...), which made `_kconv` the most called Python function of a gateway worker
(about 160 of a request's 2,600 calls). The functions here fold each name with `bytes.lower` in one
comprehension; what they return and raise is what mitmproxy's return and raise, for every key type
(tests/mesh/test_fast_headers.py holds them to mitmproxy's on random header blocks).

The lean runtime (mesh/proxy/master.py) installs them; mitmdump and mitmweb keep mitmproxy's own.
"""

from __future__ import annotations

from mitmproxy import http

_always_bytes = http._always_bytes


def _folded(name) -> bytes:
    """The lookup key as `Headers.get_all` folds it: UTF-8 (surrogateescape) bytes, lower case."""
    kind = name.__class__
    if kind is str:
        return name.encode("utf-8", "surrogateescape").lower()
    if kind is bytes:
        return name.lower()
    # subclasses as mitmproxy does; None and other types raise as it does
    return _always_bytes(name).lower()


def get_all(self, name) -> list[str]:
    key = _folded(name)
    return [v.decode("utf-8", "surrogateescape") for k, v in self.fields if k.lower() == key]


def getitem(self, key) -> str:
    values = get_all(self, key)
    if not values:
        raise KeyError(key)
    return ", ".join(values)


def get(self, key, default=None):
    # get_all's scan written out again: `get` is the lookup mitmproxy makes ~17 times a request,
    # and a call to get_all would be one more Python call each time
    key = _folded(key)
    values = [v.decode("utf-8", "surrogateescape") for k, v in self.fields if k.lower() == key]
    return ", ".join(values) if values else default


def contains(self, key) -> bool:
    key = _folded(key)
    for k, _ in self.fields:
        if k.lower() == key:
            return True
    return False


def to_bytes(self) -> bytes:
    fields = self.fields
    if fields:
        return b"\r\n".join([b": ".join(field) for field in fields]) + b"\r\n"
    return b""


FAST = {"get_all": get_all, "__getitem__": getitem, "get": get, "__contains__": contains,
        "__bytes__": to_bytes}
# what Headers answers with before `install` (its own method or the one it inherits)
ORIGINAL = {name: getattr(http.Headers, name) for name in FAST}


def install() -> None:
    """Give mitmproxy's Headers these lookups (in this process: the lean runtime's workers)."""
    for name, fn in FAST.items():
        setattr(http.Headers, name, fn)
