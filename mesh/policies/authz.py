"""Authorization with Istio's AuthorizationPolicy semantics, compiled once per config.

DENY rules are evaluated first: any match denies. Then, if the policy has ALLOW rules, a request
must match one of them (`allow: []` allows nothing); without ALLOW rules everything not denied
passes. A rule matches when every field it sets matches; a field matches when any value does.
"""

from __future__ import annotations

import ipaddress
import operator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, Mapping

from mesh.policies import claims as claimlib
from mesh.config.security import Authz, AuthzRule
from mesh.security.mtls import parse_spiffe


@dataclass(frozen=True, slots=True)
class Request:
    """What a rule can look at."""

    peer: str | None  # verified mTLS SPIFFE ID
    ip: str
    method: str
    path: str  # normalized, without the query
    claims: Mapping[str, Any] | None = None

    @property
    def namespace(self) -> str | None:
        parsed = parse_spiffe(self.peer) if self.peer else None
        return parsed[1] if parsed else None


Test = Callable[[Request], bool]


def string_test(patterns: list[str], strip: str = "") -> Callable[[str | None], bool]:
    """Istio's string match: exact, `prefix*`, `*suffix`, `*` (any present value)."""
    exact, prefixes, suffixes, anything = set(), [], [], False
    for p in patterns:
        p = p.removeprefix(strip)
        if p == "*":
            anything = True
        elif p.endswith("*"):
            prefixes.append(p[:-1])
        elif p.startswith("*"):
            suffixes.append(p[1:])
        else:
            exact.add(p)
    pre, suf = tuple(prefixes), tuple(suffixes)

    def test(value: str | None) -> bool:
        if value is None:
            return False
        value = value.removeprefix(strip)
        return anything or value in exact or (bool(pre) and value.startswith(pre)) \
            or (bool(suf) and value.endswith(suf))
    return test


def _ip_test(blocks: list[str]) -> Callable[[str], bool]:
    networks = [ipaddress.ip_network(b) for b in blocks]

    def test(ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in networks)
    return test


def _claims_test(wanted: dict[str, list[str]]) -> Test:
    items = tuple((name, frozenset(vals)) for name, vals in wanted.items())
    return lambda r: all(claimlib.values(r.claims, name) & vals for name, vals in items)


def _on(test: Callable[[Any], bool], get: Callable[[Request], Any]) -> Test:
    return lambda r: test(get(r))


def _field_tests(rule: AuthzRule, prefix: str) -> list[Test]:
    out = []
    if (v := getattr(rule, prefix + "principals")) is not None:
        out.append(_on(string_test(v, "spiffe://"), attrgetter("peer")))
    if (v := getattr(rule, prefix + "namespaces")) is not None:
        out.append(_on(string_test(v), attrgetter("namespace")))
    if (v := getattr(rule, prefix + "ip_blocks")) is not None:
        out.append(_on(_ip_test(v), attrgetter("ip")))
    if (v := getattr(rule, prefix + "methods")) is not None:
        out.append(_on(frozenset(v).__contains__, attrgetter("method")))
    if (v := getattr(rule, prefix + "paths")) is not None:
        out.append(_on(string_test(v), attrgetter("path")))
    return out


def compile_rule(rule: AuthzRule) -> Test:
    tests = _field_tests(rule, "")
    tests += [_on(operator.not_, t) for t in _field_tests(rule, "not_")]
    if rule.claims is not None:
        tests.append(_claims_test(rule.claims))
    if not tests:
        return lambda r: True
    return lambda r: all(t(r) for t in tests)


@dataclass(frozen=True, slots=True)
class Policy:
    where: str  # e.g. "route payments", for reasons
    deny: tuple[Test, ...]
    allow: tuple[Test, ...] | None

    def decide(self, req: Request) -> tuple[bool, str]:
        """(allowed, why)."""
        for i, rule in enumerate(self.deny):
            if rule(req):
                return False, f"denied by deny rule {i} of {self.where}"
        if self.allow is None:
            return True, f"no deny rule of {self.where} matches"
        for i, rule in enumerate(self.allow):
            if rule(req):
                return True, f"allowed by allow rule {i} of {self.where}"
        who = f"peer {req.peer}" if req.peer else "a caller without mTLS identity"
        return False, f"no allow rule of {self.where} matches {who}"


def compile_policy(config: Authz, where: str) -> Policy:
    allow = tuple(compile_rule(r) for r in config.allow) if config.allow is not None else None
    return Policy(where, tuple(compile_rule(r) for r in config.deny), allow)
