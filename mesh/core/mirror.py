"""Mirroring: which requests are copied where, and how a mirror's answer differs from the primary's.

The comparison is a canary check: status first, then the body (JSON compared as data, with the
configured fields left out, so key order and whitespace do not count; other bodies byte for byte).
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from mesh.config import schema
from mesh.config.types import load_json

_JSON = re.compile(r"^application/(?:[\w.+-]+\+)?json\s*(?:;|$)", re.I)


@dataclass(frozen=True, slots=True)
class Mirror:
    service: str
    clusters: tuple[str, ...]  # service/version, picked uniformly
    fraction: float  # 0..1
    compare: bool
    ignore: tuple[tuple[str, ...], ...]  # dotted paths, split
    timeout: float

    def wanted(self, rnd: float | None = None) -> bool:
        return (random.random() if rnd is None else rnd) < self.fraction

    def pick_cluster(self) -> str:
        return self.clusters[0] if len(self.clusters) == 1 else random.choice(self.clusters)


class LineBudget:
    """At most `per_second` log lines per key and second; the rest are summed up in the next line.
    (100 % mirroring of a changed API would otherwise write a line for every request.)"""

    def __init__(self, per_second: int):
        self.per_second = per_second
        self._seen: dict[str, list[int]] = {}  # key → [second, lines written, lines held back]

    def lines(self, key: str, line: str, now: float | None = None) -> list[str]:
        second = int(time.monotonic() if now is None else now)
        entry = self._seen.get(key)
        out = []
        if entry is None or entry[0] != second:
            if entry is not None and entry[2]:
                out.append(f"mirror differs: {entry[2]} more differences on route {key} were counted, "
                           f"not logged (see /status: mirror_diffs)")
            entry = self._seen[key] = [second, 0, 0]
        if entry[1] < self.per_second:
            entry[1] += 1
            out.append(line)
        else:
            entry[2] += 1
        return out


def compile(model: schema.Mirror, route: schema.Route, config: schema.MeshConfig) -> Mirror:
    versions = [model.version] if model.version else list(config.services[model.service].versions)
    return Mirror(model.service, tuple(f"{model.service}/{v}" for v in versions), model.percent / 100.0,
                  model.compare, tuple(tuple(p.split(".")) for p in model.ignore), model.timeout)


def difference(primary: tuple[int, str | None, bytes], mirror: tuple[int, str | None, bytes],
               ignore: tuple[tuple[str, ...], ...] = ()) -> str | None:
    """How the mirror's (status, content type, body) differs from the primary's, every differing JSON
    field listed (at most LISTED, then a count); None if it does not differ."""
    pstatus, ptype, pbody = primary
    mstatus, mtype, mbody = mirror
    if pstatus != mstatus:
        return f"status {pstatus} vs {mstatus}"
    if pbody == mbody:
        return None
    if ptype and mtype and _JSON.match(ptype) and _JSON.match(mtype):
        try:
            a, b = load_json(pbody), load_json(mbody)
        except (ValueError, UnicodeDecodeError):  # not JSON, or nested past the parser: bytes
            pass
        else:
            for path in ignore:
                _drop(a, path)
                _drop(b, path)
            found = json_differences(a, b)
            if not found:
                return None
            more = f"; and {len(found) - LISTED} more" if len(found) > LISTED else ""
            return "body differs at " + "; ".join(found[:LISTED]) + more
    return f"body differs ({len(pbody)} vs {len(mbody)} bytes)"


LISTED = 20  # differences named in one line; the rest are counted


def _drop(doc: Any, path: tuple[str, ...]) -> None:
    node = doc
    for step in path[:-1]:
        if not isinstance(node, dict):
            return
        node = node.get(step)
    if isinstance(node, dict):
        node.pop(path[-1], None)


_ABSENT = object()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def json_differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Every place two JSON documents differ, in document order, as `path: a vs b`. Types count:
    `==` says 1 == 1.0 == True, a canary check should not."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in list(a) + [k for k in b if k not in a]
                for d in json_differences(a.get(key, _ABSENT), b.get(key, _ABSENT),
                                          f"{where}.{key}" if where else str(key))]
    if isinstance(a, list) and isinstance(b, list):
        return [d for i in range(max(len(a), len(b)))
                for d in json_differences(a[i] if i < len(a) else _ABSENT, b[i] if i < len(b) else _ABSENT,
                                          f"{where}[{i}]")]
    if a == b and type(a) is type(b):
        return []
    return [f"{where or '(root)'}: {_show(a)} vs {_show(b)}"]
