"""API versioning: the version from path, header, media type or query in the configured order; the
default; unknown versions; deprecation headers and the successor link."""

from __future__ import annotations

import pytest

from mesh.core import versioning
from mesh.config import load_text

CONFIG = """
version: 1
gateway: {listeners: [{name: p, port: 18080}]}
services: {catalog: {versions: {v1: {endpoints: ["127.0.0.1:1"]}, v2: {endpoints: ["127.0.0.1:2"]}}}}
routes:
  - {name: api, match: {path: {prefix: /catalog/}}, forward: {service: catalog}, policies: [ver]}
policies:
  ver:
    versioning:
      SOURCES
      default: v1
      versions:
        v1: {deprecated: 2025-01-01, sunset: 2027-06-30, successor: v2}
        v2: {}
        beta: {version: v2}
"""


def compiled(sources: str = "") -> versioning.Versioning:
    config = load_text(CONFIG.replace("SOURCES", sources), "t.yaml")
    return versioning.compile(config.policies["ver"].versioning, config.routes[0])


def resolve(v, path, headers=None, query=None):
    headers = {k.lower(): val for k, val in (headers or {}).items()}
    return v.resolve(path, headers.get, lambda: query or {})


@pytest.mark.parametrize("path, headers, query, version, source, upstream", [
    ("/catalog/v2/items", {}, {}, "v2", "path", "/catalog/items"),
    ("/catalog/v2", {}, {}, "v2", "path", "/catalog/"),
    ("/catalog/beta/items", {}, {}, "beta", "path", "/catalog/items"),
    ("/catalog/items", {"API-Version": "v2"}, {}, "v2", "header", "/catalog/items"),
    ("/catalog/items", {"API-Version": "2"}, {}, "v2", "header", "/catalog/items"),
    ("/catalog/items", {"Accept": "application/vnd.mitmesh.v2+json"}, {}, "v2", "media_type", "/catalog/items"),
    ("/catalog/items", {"Accept": "text/html, application/vnd.mitmesh.v2+json; q=0.9"}, {}, "v2", "media_type",
     "/catalog/items"),
    ("/catalog/items", {}, {"api-version": "v2"}, "v2", "query", "/catalog/items"),
    ("/catalog/items", {}, {}, "v1", "default", "/catalog/items"),
    ("/catalog/v2/items", {"API-Version": "v1"}, {}, "v2", "path", "/catalog/items"),  # path comes first
])
def test_sources_in_default_order(path, headers, query, version, source, upstream):
    res = resolve(compiled(), path, headers, query)
    assert (res.version.name, res.source, res.path) == (version, source, upstream)


def test_configured_order_and_unknown_versions():
    v = compiled("sources: [header, path]")
    assert resolve(v, "/catalog/v2/items", {"API-Version": "v1"}).version.name == "v1"
    res = resolve(v, "/catalog/v9/items")
    assert res.version is None and res.requested == "v9" and res.source == "path"
    res = resolve(v, "/catalog/items", {"API-Version": "v3"})
    assert res.version is None and res.requested == "v3"
    assert v.supported == ("v1", "v2", "beta")
    assert v.versions["beta"].cluster == "catalog/v2"


def test_without_default_a_version_is_required():
    config = load_text(CONFIG.replace("default: v1", "").replace("SOURCES", ""), "t.yaml")
    v = versioning.compile(config.policies["ver"].versioning, config.routes[0])
    res = resolve(v, "/catalog/items")
    assert res.version is None and res.requested is None


def test_deprecation_headers_and_successor_link():
    v = compiled()
    assert v.versions["v1"].headers == (("Deprecation", "@1735689600"),
                                        ("Sunset", "Wed, 30 Jun 2027 00:00:00 GMT"))
    assert v.versions["v2"].headers == ()
    res = resolve(v, "/catalog/v1/items/3")
    assert v.link(res, "/catalog/v1/items/3", "page=2") == '</catalog/v2/items/3?page=2>; rel="successor-version"'
    res = resolve(v, "/catalog/items/3")  # by default: the successor sits in the path
    assert v.link(res, "/catalog/items/3", "") == '</catalog/v2/items/3>; rel="successor-version"'
    res = resolve(v, "/catalog/items", query={"api-version": "v1"})
    assert v.link(res, "/catalog/items", "api-version=v1&x=1") == \
        '</catalog/items?x=1&api-version=v2>; rel="successor-version"'
    assert v.link(resolve(v, "/catalog/v2/items"), "/catalog/v2/items", "") is None


def test_deprecated_without_a_date_and_a_fixed_link():
    text = CONFIG.replace("SOURCES", "").replace(
        "v1: {deprecated: 2025-01-01, sunset: 2027-06-30, successor: v2}",
        "v1: {deprecated: true, successor: v2, link: 'https://docs.example.com/catalog/v2'}")
    config = load_text(text, "t.yaml")
    v = versioning.compile(config.policies["ver"].versioning, config.routes[0])
    assert v.versions["v1"].headers == (("Deprecation", "true"),)
    res = resolve(v, "/catalog/v1/items")
    assert v.link(res, "/catalog/v1/items", "") == '<https://docs.example.com/catalog/v2>; rel="successor-version"'
