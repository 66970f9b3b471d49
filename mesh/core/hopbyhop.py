"""Hop-by-hop header fields (RFC 9110 §7.6.1): the fixed set no proxy forwards, and the fields a
request's Connection header nominates, which are removed from the request as it is received, before
any stage reads or adds a header: so a client's `Connection: x-consumer` removes its own x-consumer,
never the one the proxy sets after authentication.

Pure functions over header fields, no mitmproxy: `strip` runs first on every listener
(addons/hopbyhop.py), `refusal` inside `heads.check` (Normalize answers it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Fields = Iterable[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
     b"trailer", b"upgrade"}
)
# connection options, not fields (RFC 9112 §9.3, §9.6; RFC 9110 §7.8): the HTTP layer acts on them
# (close, keep-alive, an upgrade), so they stay in Connection, as Envoy leaves them
_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade", b"http2-settings"})
# what the proxy routes and frames the request by: read from the head before a nomination could
# remove it, and made anew for the upstream (upstream.request_headers), so kept. Envoy's codec has
# turned Host into :authority and fixed the body's framing before it sanitizes Connection: there a
# nomination cannot touch them either. The fixed set is removed when forwarding anyway.
NEEDED = frozenset({b"host", b"content-length"}) | HOP_BY_HOP
# Envoy refuses to remove these (400): without them the upstream misreads where the request came from
REFUSED = frozenset({b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"})
MAX_TOKENS = 10  # Envoy refuses a Connection header of this many tokens or more


def tokens(values: Iterable[bytes]) -> list[bytes]:
    """The tokens of Connection field values, lower-cased, in order, empty ones left out."""
    return [t for value in values for t in (t.strip(b" \t").lower() for t in value.split(b",")) if t]


def refusal(nominated: list[bytes]) -> str | None:
    """Why a request with these Connection tokens is refused (400), as Envoy refuses it, or None."""
    if len(nominated) >= MAX_TOKENS:
        return f"a Connection header of {len(nominated)} tokens (at most {MAX_TOKENS - 1})"
    for token in nominated:
        if token in REFUSED or token[:1] == b":":
            name = token.decode("latin-1")
            return f"Connection nominates {name!r}, which the proxy does not remove (RFC 9110 §7.6.1)"
    return None


@dataclass(frozen=True, slots=True)
class Stripped:
    """A request's fields without what its Connection header nominated."""

    fields: tuple[tuple[bytes, bytes], ...]
    removed: tuple[str, ...]  # the nominated names, lower-cased, whether or not the field was sent
    kept: tuple[str, ...]  # nominated, but the proxy routes or frames by it (NEEDED, not the fixed set)


def strip(fields: Fields) -> Stripped | None:
    """The request as received minus the fields its Connection header nominates, and minus their
    tokens in Connection (its options stay for the HTTP layer). None when there is nothing to do:
    no Connection field, only options and NEEDED fields nominated, or a nomination `refusal`
    refuses (left as it came, so that `heads.check` answers it)."""
    fields = tuple(fields)
    values = [v for n, v in fields if n.lower() == b"connection"]
    if not values:
        return None
    nominated = tokens(values)
    if refusal(nominated) is not None:
        return None
    drop = {t for t in nominated if t not in _OPTIONS and t not in NEEDED}
    kept = tuple(dict.fromkeys(t.decode("latin-1") for t in nominated
                               if t in NEEDED and t not in HOP_BY_HOP))
    if not drop:
        return Stripped(fields, (), kept) if kept else None
    out = []
    for name, value in fields:
        low = name.lower()
        if low == b"connection":
            left = [t.strip(b" \t") for t in value.split(b",")]
            value = b", ".join(t for t in left if t and t.lower() not in drop)
            if not value:
                continue
        elif low in drop:
            continue
        out.append((name, value))
    return Stripped(tuple(out), tuple(sorted(t.decode("latin-1") for t in drop)), kept)
