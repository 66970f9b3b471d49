"""Verified claims as sets of strings, so policies compare them one way: scopes split on spaces,
lists as their members, nested claims by dotted name (`realm_access.roles`)."""

from __future__ import annotations

from typing import Any, Mapping

from mesh.config.template import as_text

_SCOPE_CLAIMS = ("scope", "scp")


def lookup(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; `a.b` reaches into nested objects when no claim is literally named `a.b`."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def values(claims: Mapping[str, Any] | None, name: str) -> frozenset[str]:
    """The claim's values as strings (empty when absent)."""
    if not claims:
        return frozenset()
    value = lookup(claims, name)
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split()) if name in _SCOPE_CLAIMS else frozenset((value,))
    if isinstance(value, (list, tuple)):
        return frozenset(as_text(v) for v in value)
    return frozenset((as_text(value),))


def scopes(claims: Mapping[str, Any] | None) -> frozenset[str]:
    """Granted scopes: the `scope` string (RFC 8693) or the `scp` list some issuers use."""
    return values(claims, "scope") | values(claims, "scp")


def header_value(value: Any) -> str:
    """A claim as one header line: strings as they are, lists comma-joined, others as JSON."""
    return as_text(value).replace("\r", " ").replace("\n", " ")
