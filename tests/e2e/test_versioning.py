"""API versioning end to end: the version from the path, a header, the media type or a query
parameter reaches its own cluster; a deprecated version's answers carry Deprecation, Sunset and a
Link to its successor; an unknown version is a JSON 400 listing the supported ones."""

from __future__ import annotations

import pytest

from .conftest import get
from .traffic import config, running, service


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("versioning")
    cfg = config(
        {"catalog": service("catalog", "v1", "v2")},
        [{"name": "catalog-api", "match": {"path": {"prefix": "/api/catalog/"}},
          "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}, "policies": ["catalog-versions"]}],
        {"catalog-versions": {"versioning": {
            "default": "v1",
            "versions": {"v1": {"deprecated": "2025-01-01", "sunset": "2027-06-30", "successor": "v2"},
                         "v2": {}}}}})
    yield from running(tmp, cfg)


@pytest.mark.parametrize("path, headers, version", [
    ("/api/catalog/v2/items/1", {}, "v2"),
    ("/api/catalog/items/1", {"API-Version": "v2"}, "v2"),
    ("/api/catalog/items/1", {"Accept": "application/vnd.mitmesh.v2+json"}, "v2"),
    ("/api/catalog/items/1?api-version=2", {}, "v2"),
    ("/api/catalog/v1/items/1", {}, "v1"),
    ("/api/catalog/items/1", {}, "v1"),  # the default
])
def test_each_version_reaches_its_cluster(mesh, path, headers, version):
    status, body, h = get(mesh.url + path, headers=headers)
    assert status == 200 and body["version"] == version
    assert body["path"].startswith("/items/1")  # the version segment never reaches the service
    assert ("deprecation" in h) == (version == "v1")


def test_deprecated_version_points_to_its_successor(mesh):
    status, body, h = get(mesh.url + "/api/catalog/v1/items/2?fields=all")
    assert status == 200 and body["item"]["price"] == 19.5
    assert h["deprecation"] == "@1735689600"
    assert h["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    assert h["link"] == '</api/catalog/v2/items/2?fields=all>; rel="successor-version"'
    status, body, h = get(mesh.url + h["link"][1:].split(">")[0])  # follow it
    assert status == 200 and body["item"]["price_cents"] == 1950 and "deprecation" not in h


def test_unknown_version_is_400_listing_the_supported(mesh):
    for path, headers in [("/api/catalog/v3/items", {}), ("/api/catalog/items", {"API-Version": "2024-01-01"})]:
        status, body, h = get(mesh.url + path, headers=headers)
        assert status == 400 and h["content-type"] == "application/json"
        assert body["error"] == "unsupported_api_version" and body["supported"] == ["v1", "v2"]
        assert body["request_id"] == h["x-request-id"]
