"""Canary releases: sticky assignment of a user to a version, and live edits of a route's weights.

A sticky key (user id, cookie, header) is hashed to a point in [0, 1) that stays the same across
requests, processes and restarts, and the weighted split maps that point to a version. Versions keep
their order in `weights`, so while the last one (the canary) grows from 10 % to 25 %, every user it
had keeps it. `set_weights` edits mesh.yaml in place (comments and layout kept, with ruamel.yaml),
validates the result like any config, and replaces the file atomically; running gateways reload it.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, load_text


def point(key: str, salt: str) -> float:
    """A stable point in [0, 1) for a key (salted per service, so services split independently)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(digest, "big") / 2**64


def new_key() -> str:
    """A random sticky key for a client that has none yet."""
    return secrets.token_urlsafe(12)


class CanaryError(ValueError):
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
            raise CanaryError(f"expected VERSION=PERCENT such as v2=25 (got {item!r})")
        percent = int(value)
        if percent > 100:
            raise CanaryError(f"expected a percentage from 0 to 100 (got {item!r})")
        out[version.strip()] = percent
    if sum(out.values()) > 100:
        raise CanaryError(f"the percentages add up to more than 100 (got {', '.join(items)})")
    return out


def new_weights(current: dict[str, int], wanted: dict[str, int], versions: list[str]) -> dict[str, int]:
    """The listed versions get their percentage; the others share what is left by their current weight."""
    for v in wanted:
        if v not in versions:
            raise CanaryError(f"unknown version; expected one of {', '.join(versions)} (got {v!r})")
    rest = {v: w for v, w in current.items() if v not in wanted}
    left = 100 - sum(wanted.values())
    total = sum(rest.values())
    if left and not rest:
        raise CanaryError(f"{', '.join(f'{v}={p}' for v, p in wanted.items())} leaves {left} % to no other "
                          f"version; name the versions that take the rest")
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


def _round_trip(text: str):
    """ruamel.yaml in round-trip mode with the file's own indentation, so only the edit shows in a diff."""
    from ruamel.yaml import YAML
    from ruamel.yaml.util import load_yaml_guess_indent

    _, sequence, offset = load_yaml_guess_indent(text)
    indents = [len(line) - len(line.lstrip(" ")) for line in text.splitlines()
               if line.strip() and not line.lstrip().startswith(("-", "#")) and line.startswith(" ")]
    yaml = YAML()  # round trip: comments, order, quotes and flow style are kept
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    yaml.indent(mapping=min(indents, default=2), sequence=sequence or 2, offset=offset or 0)
    return yaml, yaml.load(text)


def set_weights(path: str | Path, service: str, wanted: dict[str, int], route: str | None = None) -> list[Change]:
    """Change the weights of every route that splits `service` (or just `route`) and write the file."""
    path = Path(path)
    text = path.read_text()
    yaml, doc = _round_trip(text)
    services = doc.get("services") or {}
    if service not in services:
        raise CanaryError(f"unknown service; expected one of {', '.join(services)} (got {service!r})")
    versions = list((services[service] or {}).get("versions") or {})
    changes = []
    for r in doc.get("routes") or []:
        fwd = r.get("forward")
        if not fwd or fwd.get("service") != service or (route and r.get("name") != route):
            continue
        weights = fwd.get("weights")
        if weights is None:
            continue  # routes pinned to one version (x-canary: always) are not part of the split
        before = {v: int(w) for v, w in weights.items()}
        after = new_weights(before, wanted, versions)
        for v, w in after.items():
            weights[v] = w
        changes.append(Change(str(r.get("name")), before, after))
    if not changes:
        which = f"route {route!r}" if route else "no route"
        raise CanaryError(f"{which} splits {service} by weights (forward.weights) in {path}")
    out = io.StringIO()
    yaml.dump(doc, out)
    new_text = out.getvalue()
    try:
        load_text(new_text, str(path))
    except ConfigError as e:
        raise CanaryError(f"the change would make the config invalid, nothing written:\n{e}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return changes
