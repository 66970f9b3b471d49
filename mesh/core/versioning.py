"""API versioning: which version a request asks for (path, header, media type, query), and its cluster.

Compiled once per route: the sources in order, the media-type regex, the path segment pattern, and
each version's cluster and constant deprecation headers (Deprecation, RFC 9745; Sunset, RFC 8594).
The successor Link (RFC 5829 `successor-version`) is this request's URL with the successor version,
unless a fixed link is configured.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import parse_qsl, urlencode

from mesh.config import schema

HeaderGetter = Callable[[str], str | None]
QueryGetter = Callable[[], Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class Version:
    name: str
    cluster: str  # service/version
    headers: tuple[tuple[str, str], ...]  # Deprecation and Sunset, fixed at load
    successor: str | None
    link: str | None


@dataclass(frozen=True, slots=True)
class Resolved:
    """What one request asked for. `version` is None when it names an unknown version or none."""

    version: Version | None
    requested: str | None
    source: str  # path, header, media_type, query, default, or none
    path: str  # the route path with the version segment removed (when strip)
    segment: tuple[int, int] | None = None  # where the version sat in the original path


@dataclass(frozen=True, slots=True)
class Versioning:
    sources: tuple[str, ...]
    header: str
    query: str
    media: re.Pattern
    segment: re.Pattern
    prefix: str
    strip: bool
    default: Version | None
    versions: Mapping[str, Version]
    supported: tuple[str, ...]

    def resolve(self, path: str, header: HeaderGetter, query: QueryGetter) -> Resolved:
        for source in self.sources:
            requested, span = None, None
            if source == "path":
                span = self._segment(path)
                if span is not None:
                    requested = path[span[0]:span[1]]
            elif source == "header":
                requested = header(self.header)
            elif source == "media_type":
                accept = header("accept")
                m = self.media.search(accept) if accept else None
                requested = m.group(1) if m else None
            else:
                requested = query().get(self.query)
            if requested is None or requested == "":
                continue
            version = self.lookup(requested)
            upstream = path
            if version is not None and span is not None and self.strip:
                end = span[1] + 1 if path[span[1]:span[1] + 1] == "/" else span[1]
                upstream = path[:span[0]] + path[end:]
            return Resolved(version, requested, source, upstream, span)
        if self.default is not None:
            return Resolved(self.default, None, "default", path)
        return Resolved(None, None, "none", path)

    def lookup(self, requested: str) -> Version | None:
        found = self.versions.get(requested)
        if found is None and requested.isdigit():  # API-Version: 2 means v2
            found = self.versions.get("v" + requested)
        return found

    def _segment(self, path: str) -> tuple[int, int] | None:
        start = len(self.prefix) if path.startswith(self.prefix) else 1
        if path[start:start + 1] == "/":
            start += 1
        end = path.find("/", start)
        end = len(path) if end < 0 else end
        seg = path[start:end]
        if seg and (seg in self.versions or self.segment.fullmatch(seg)):
            return (start, end)
        return None

    def link(self, res: Resolved, original_path: str, query_string: str) -> str | None:
        """The successor Link header value for a deprecated version, or None."""
        v = res.version
        if v is None or v.successor is None:
            return None
        if v.link:
            return f'<{v.link}>; rel="successor-version"'
        succ = v.successor
        if res.source == "path" and res.segment is not None:
            start, end = res.segment
            target = original_path[:start] + succ + original_path[end:]
        elif res.source == "query" or ("path" not in self.sources and "query" in self.sources):
            pairs = [(k, val) for k, val in parse_qsl(query_string, keep_blank_values=True) if k != self.query]
            return f'<{original_path}?{urlencode(pairs + [(self.query, succ)])}>; rel="successor-version"'
        elif "path" in self.sources:
            start = len(self.prefix) if original_path.startswith(self.prefix) else 1
            sep = "" if original_path[start - 1:start] == "/" else "/"
            target = original_path[:start] + sep + succ + "/" + original_path[start:].lstrip("/")
        else:  # header or media type only: the same URL, asked for with the successor version
            target = original_path
        if query_string:
            target += "?" + query_string
        return f'<{target}>; rel="successor-version"'


def _http_date(when: datetime.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(datetime.timezone.utc), usegmt=True)


def compile(model: schema.Versioning, route: schema.Route) -> Versioning:
    service = route.forward.service if route.forward else ""
    versions: dict[str, Version] = {}
    for name, v in model.versions.items():
        headers: list[tuple[str, str]] = []
        if v.deprecated is True:
            headers.append(("Deprecation", "true"))
        elif isinstance(v.deprecated, datetime.datetime):
            headers.append(("Deprecation", f"@{int(v.deprecated.timestamp())}"))
        if v.sunset is not None:
            headers.append(("Sunset", _http_date(v.sunset)))
        cluster = f"{v.service or service}/{v.version or name}"
        versions[name] = Version(name, cluster, tuple(headers), v.successor, v.link)
    vendor = re.escape(model.media_type.strip().lower())
    path = route.match.path
    prefix = path.prefix if path is not None and path.prefix else "/"
    return Versioning(
        sources=tuple(model.sources),
        header=model.header.lower(),
        query=model.query,
        media=re.compile(vendor + r"\.([A-Za-z0-9_-]+(?:\.[0-9]+)*)(?:\+[a-z]+)?(?=\s*(?:[;,]|$))", re.I),
        segment=re.compile(model.path_pattern),
        prefix=prefix,
        strip=model.strip,
        default=versions[model.default] if model.default else None,
        versions=versions,
        supported=tuple(versions),
    )
