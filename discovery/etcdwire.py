"""What the etcd client (discovery/etcdapi.py) and the config store (mesh/runtime/store.py) share:
its errors, base64 keys and values, endpoint lists. No client here: a proxy whose config neither
comes from etcd nor discovers through it loads this and nothing of the client (docs/performance.md).
"""

from __future__ import annotations

import base64


class EtcdError(Exception):
    """etcd could not be reached, or refused the call (the text says which endpoint and why)."""


class LeaseLost(EtcdError):
    """The lease expired or was revoked: keys put under it are gone."""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode("utf-8", "replace")


def parse_endpoints(text: str, scheme: str = "http") -> list[str]:
    """`127.0.0.1:2379,127.0.0.2:2379` or full URLs of `scheme` (http, or https for a store over
    TLS) → base URLs; raises ValueError."""
    out = []
    expected = f"expected host:port or {scheme}://host:port"
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        url = part if "://" in part else f"{scheme}://{part}"
        if not url.startswith(f"{scheme}://"):
            raise ValueError(f"{expected} (got {part!r})")
        host, _, port = url[len(f"{scheme}://"):].rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{expected} (got {part!r})")
        out.append(url.rstrip("/"))
    if not out:
        raise ValueError(f"expected at least one etcd endpoint (got {text!r})")
    return out
