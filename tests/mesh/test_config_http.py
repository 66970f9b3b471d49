"""gateway.http and sidecar.http: defaults, and every error with its line, key path and expectation."""

from __future__ import annotations

import pytest

from mesh.config import load_text
from tests.conftest import dedent

from .test_config import errors

GATEWAY = "gateway:\n  listeners: [{name: p, port: 1}]\n"


def test_defaults_are_envoy_like_and_secure():
    config = load_text(GATEWAY, "mesh.yaml")
    for http in (config.gateway.http, config.sidecar.http):
        assert (http.normalize_path, http.merge_slashes, http.path_with_escaped_slashes_action) == \
            (True, True, "REJECT_REQUEST")
        assert http.headers_with_underscores_action == "DROP_HEADER"  # nginx's default, not Envoy's ALLOW
        assert (http.request_headers_timeout, http.request_timeout, http.idle_timeout) == (10.0, 300.0, 60.0)
        assert (http.max_request_headers, http.http2.max_stream_resets, http.http2.stream_reset_window) == \
            (128 << 10, 100, 10.0)


def test_values_are_parsed():
    config = load_text(dedent("""
    gateway:
      listeners: [{name: p, port: 1}]
      http: {request_headers_timeout: 500ms, max_request_headers: 32KiB, http2: {max_stream_resets: 10}}
    sidecar:
      http: {path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD, merge_slashes: false}
    """), "mesh.yaml")
    assert config.gateway.http.request_headers_timeout == 0.5 and config.gateway.http.max_request_headers == 32768
    assert config.gateway.http.http2.max_stream_resets == 10
    assert config.sidecar.http.path_with_escaped_slashes_action == "UNESCAPE_AND_FORWARD"
    assert config.sidecar.http.merge_slashes is False and config.gateway.http.merge_slashes is True
    config = load_text(GATEWAY + "  http: {headers_with_underscores_action: REJECT_REQUEST}\n", "mesh.yaml")
    assert config.gateway.http.headers_with_underscores_action == "REJECT_REQUEST"


@pytest.mark.parametrize("block, expected", [
    ("  http: {path_with_escaped_slashes_action: REJECT}\n",
     "mesh.yaml:3: gateway.http.path_with_escaped_slashes_action: expected one of 'KEEP_UNCHANGED', "
     "'REJECT_REQUEST', 'UNESCAPE_AND_REDIRECT', 'UNESCAPE_AND_FORWARD' (got 'REJECT')"),
    ("  http: {headers_with_underscores_action: DROP}\n",
     "mesh.yaml:3: gateway.http.headers_with_underscores_action: expected one of 'ALLOW', "
     "'DROP_HEADER', 'REJECT_REQUEST' (got 'DROP')"),
    ("  http: {request_headers_timeout: 0s}\n",
     "mesh.yaml:3: gateway.http.request_headers_timeout: expected a value > 0 (got '0s')"),
    ("  http: {idle_timeout: 2h}\n", "mesh.yaml:3: gateway.http.idle_timeout: expected a value <= 3600 (got '2h')"),
    ("  http: {request_timeout: soon}\n",
     "mesh.yaml:3: gateway.http.request_timeout: expected a duration like 250ms, 2s or 1m (got 'soon')"),
    ("  http: {max_request_headers: 100}\n",
     "mesh.yaml:3: gateway.http.max_request_headers: expected a value >= 1024 (got 100)"),
    ("  http: {http2: {max_stream_resets: 0}}\n",
     "mesh.yaml:3: gateway.http.http2.max_stream_resets: expected a value >= 1 (got 0)"),
    ("  http: {normalise_path: true}\n",
     "mesh.yaml:3: gateway.http.normalise_path: unknown key; expected one of normalize_path, merge_slashes, "
     "path_with_escaped_slashes_action, headers_with_underscores_action, max_request_headers, request_headers_timeout, request_timeout, "
     "idle_timeout, http2 (got 'normalise_path')"),
])
def test_http_errors(block, expected):
    found = errors(GATEWAY + block)
    assert found == [expected], found
