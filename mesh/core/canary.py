"""Canary releases: sticky assignment of a user to a version, and live edits of a route's weights.

A sticky key (user id, cookie, header) is hashed to a point in [0, 1) that stays the same across
requests, processes and restarts, and the weighted split maps that point to a version. Versions keep
their order in `weights`, so while the last one (the canary) grows from 10 % to 25 %, every user it
had keeps it. `set_weights` rewrites only the characters of the weights in mesh.yaml (every other byte stays),
validates the result like any config, and replaces the file atomically; running gateways reload it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor

from mesh.config import ConfigError, load_text
from mesh.config.errors import BAD_INPUT, CommandError


def point(key: str, salt: str) -> float:
    """A stable point in [0, 1) for a key (salted per service, so services split independently)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(digest, "big") / 2**64


def new_key() -> str:
    """A random sticky key for a client that has none yet."""
    return secrets.token_urlsafe(12)


class CanaryError(CommandError):
    """A weight change that cannot be made; the config file is left as it was."""


@dataclass(frozen=True)
class Change:
    route: str
    before: dict[str, int]
    after: dict[str, int]


def parse_assignments(items: list[str]) -> dict[str, int]:
    """['v2=25', 'v3=5'] → {'v2': 25, 'v3': 5}: percentages of the split."""
    out: dict[str, int] = {}
    for item in items:
        version, sep, value = item.partition("=")
        if not sep or not version or not value.strip().isdigit():
            raise CanaryError(f"expected VERSION=PERCENT such as v2=25 (got {item!r})", BAD_INPUT)
        percent = int(value)
        if percent > 100:
            raise CanaryError(f"expected a percentage from 0 to 100 (got {item!r})", BAD_INPUT)
        out[version.strip()] = percent
    if sum(out.values()) > 100:
        raise CanaryError(f"the percentages add up to more than 100 (got {', '.join(items)})", BAD_INPUT)
    return out


def new_weights(current: dict[str, int], wanted: dict[str, int], versions: list[str]) -> dict[str, int]:
    """The listed versions get their percentage; the others share what is left by their current weight."""
    for v in wanted:
        if v not in versions:
            raise CanaryError(f"unknown version; expected one of {', '.join(versions)} (got {v!r})", BAD_INPUT)
    rest = {v: w for v, w in current.items() if v not in wanted}
    left = 100 - sum(wanted.values())
    total = sum(rest.values())
    if left and not rest:
        raise CanaryError(f"{', '.join(f'{v}={p}' for v, p in wanted.items())} leaves {left} % to no other "
                          f"version; name the versions that take the rest", BAD_INPUT)
    if left and total == 0:
        rest = {v: 1 for v in rest}
        total = len(rest)
    after = {v: 0 for v in current}
    shares = sorted(rest.items(), key=lambda kv: -kv[1])
    given = 0
    for i, (v, w) in enumerate(shares):
        share = left - given if i == len(shares) - 1 else round(left * w / total)
        after[v] = share
        given += share
    after.update(wanted)
    return after


def _get(node, key: str):
    """The value node of `key` in a YAML mapping node, or None."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _number(node) -> int | None:
    """A weight as YAML reads it (so `0x10` is 16), or None when it is not a whole number."""
    try:
        value = SafeConstructor().construct_object(node, deep=True)
    except yaml.YAMLError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _edits(text: str, weights: yaml.MappingNode, after: dict[str, int]) -> list[tuple[int, int, str]]:
    """(start, end, text) replacements that give `weights` the values of `after`: a changed value is
    rewritten where it stands; a version not yet listed is appended after the last entry, in the
    mapping's own style (flow `{…, v3: 5}` or one more line at the entries' indentation)."""
    out = []
    present = {k.value: v for k, v in weights.value}
    for version, weight in after.items():
        node = present.get(version)
        if node is not None and _number(node) != weight:
            out.append((node.start_mark.index, node.end_mark.index, str(weight)))
    added = [(v, w) for v, w in after.items() if v not in present]
    if added:
        last = weights.value[-1][1].end_mark.index if weights.value else None
        if weights.flow_style:
            at = last if last is not None else text.index("{", weights.start_mark.index) + 1
            sep = ", " if last is not None else ""
            out.append((at, at, sep + ", ".join(f"{v}: {w}" for v, w in added)))
        else:
            indent = " " * weights.value[0][0].start_mark.column
            at = text.find("\n", last)
            at = len(text) if at < 0 else at
            out.append((at, at, "".join(f"\n{indent}{v}: {w}" for v, w in added)))
    return out


def set_weights(path: str | Path, service: str, wanted: dict[str, int], route: str | None = None) -> list[Change]:
    """Change the weights of every route that splits `service` (or just `route`) and write the file.
    Only the weights' own characters change: every other byte of the file stays as it was."""
    path = Path(path)
    try:
        text = path.read_bytes().decode()  # not read_text: it would turn CRLF into LF
    except UnicodeDecodeError as e:
        raise CanaryError(f"{path}: not UTF-8 text ({e.reason})", BAD_INPUT) from None
    except OSError as e:
        raise CanaryError(f"cannot read {path}: {e.strerror} (name the config with --config FILE)",
                          BAD_INPUT) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise CanaryError(f"{path}:{mark.line + 1 if mark else 1}: invalid YAML: "
                          f"{getattr(e, 'problem', None) or e}; nothing written") from None
    services = _get(root, "services")
    names = [k.value for k, _ in services.value] if isinstance(services, yaml.MappingNode) else []
    if service not in names:
        raise CanaryError(f"unknown service; expected one of {', '.join(names)} (got {service!r})", BAD_INPUT)
    versions_node = _get(_get(services, service), "versions")
    versions = [k.value for k, _ in versions_node.value] if isinstance(versions_node, yaml.MappingNode) else []
    changes, edits, seen = [], [], set()
    routes = _get(root, "routes")
    for r in routes.value if isinstance(routes, yaml.SequenceNode) else ():
        fwd = _get(r, "forward")
        svc = _get(fwd, "service")
        name = _get(r, "name")
        name = name.value if isinstance(name, yaml.ScalarNode) else None
        if not isinstance(svc, yaml.ScalarNode) or svc.value != service or (route and name != route):
            continue
        weights = _get(fwd, "weights")
        if not isinstance(weights, yaml.MappingNode):
            continue  # routes pinned to one version (x-canary: always) are not part of the split
        if id(weights) in seen:  # a YAML alias: its text is elsewhere and shared
            raise CanaryError(f"route {name!r}: forward.weights is a YAML alias; edit {path} by hand")
        seen.add(id(weights))
        before = {k.value: _number(v) for k, v in weights.value}
        if any(w is None for w in before.values()):
            raise CanaryError(f"route {name!r}: forward.weights holds a value that is not a whole "
                              f"number; fix {path} first")
        after = new_weights(before, wanted, versions)
        edits += _edits(text, weights, after)
        changes.append(Change(str(name), before, after))
    if not changes:
        which = f"route {route!r}" if route else "no route"
        raise CanaryError(f"{which} splits {service} by weights (forward.weights) in {path}", BAD_INPUT)
    new_text = text
    for start, end, replacement in sorted(edits, reverse=True):  # from the end: offsets stay valid
        new_text = new_text[:start] + replacement + new_text[end:]
    try:
        load_text(new_text, str(path))
    except ConfigError as e:
        raise CanaryError(f"the change would make the config invalid, nothing written:\n{e}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new_text.encode())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return changes
