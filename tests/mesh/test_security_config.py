"""Security config (mesh/config/security.py): every mistake is reported with its exact message."""

from __future__ import annotations

import pytest

from mesh.config import ConfigError, load_text
from tests.conftest import BASE, dedent

URI = "jwks_uri: 'http://idp/jwks'"
SHA = "a" * 64


def errors(policies: str = "", listener: str = "", gateway: str = "", mesh: str = "") -> list[str]:
    text = BASE
    if listener:
        text = text.replace("    - {name: public, port: 18080}", "    - " + listener)
    if gateway:
        text = text.replace("  admin: {port: 19901}", "  admin: {port: 19901}\n  " + gateway)
    text += (f"policies:\n  p: {policies}\n" if policies else "") + mesh
    try:
        load_text(dedent(text), "mesh.yaml")
    except ConfigError as e:
        return [str(p) for p in e.problems]
    return []


@pytest.mark.parametrize("policy, expected", [
    ("{jwt: {issuer: x, %s, algorithms: [RS256, none]}}" % URI,
     "policies.p.jwt.algorithms: the 'none' algorithm is never allowed (got 'none')"),
    ("{jwt: {issuer: x, %s, algorithms: [HS1]}}" % URI,
     "policies.p.jwt.algorithms[0]: expected one of 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', "
     "'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'HS256', 'HS384', 'HS512' (got 'HS1')"),
    ("{jwt: {issuer: x}}", "policies.p.jwt: expected exactly one of jwks_uri, jwks_file (got none)"),
    ("{jwt: {%s}}" % URI, "policies.p.jwt.issuer: required key is missing"),
    ("{jwt: {issuer: x, jwks_uri: 'ftp://idp/jwks'}}",
     "policies.p.jwt.jwks_uri: expected an http:// or https:// URL (got 'ftp://idp/jwks')"),
    ("{jwt: {issuer: x, %s, token_from: [{header: authorization, cookie: a}]}}" % URI,
     "policies.p.jwt.token_from[0]: expected exactly one of header, cookie (got header, cookie)"),
    ("{jwt: {issuer: x, %s, forward_claims: {sub: 'x user'}}}" % URI,
     "policies.p.jwt.forward_claims.sub: expected a header name such as x-user (got 'x user')"),
    ("{jwt: {issuer: x, %s, leeway: 1h}}" % URI, "policies.p.jwt.leeway: expected a value <= 600 (got '1h')"),
    ("{oauth2: {introspection_url: 'http://idp/i', client_id: g}}",
     "policies.p.oauth2: expected exactly one of client_secret, client_secret_env (got none)"),
    ("{oauth2: {introspection_url: 'http://idp/i', client_id: g, client_secret_env: MITMESH_UNSET_VAR}}",
     "policies.p.oauth2: client_secret_env: environment variable is not set (got 'MITMESH_UNSET_VAR')"),
    ("{api_key: {consumers: {acme: {key_sha256: abc}}}}",
     "policies.p.api_key.consumers.acme.key_sha256: expected the SHA-256 of the key as 64 lowercase "
     "hex digits; `mitmesh apikey new NAME` makes one (got 'abc')"),
    ('{api_key: {consumers: {acme: {key_sha256: "%s\\n"}}}}' % SHA,  # a whole match, not up to a newline
     "policies.p.api_key.consumers.acme.key_sha256: expected the SHA-256 of the key as 64 lowercase "
     "hex digits; `mitmesh apikey new NAME` makes one (got 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...)"),
    ("{api_key: {consumers: {}}}", "policies.p.api_key.consumers: expected at least 1 item(s) (got {})"),
    ("{api_key: {header: null, consumers: {acme: {key_sha256: %s}}}}" % SHA,
     "policies.p.api_key: expected header or query (got none)"),
    ("{api_key: {consumers: {acme: {key_sha256: %s}, bob: {key_sha256: [%s]}}}}" % (SHA, SHA),
     "policies.p.api_key: consumers.bob: key already belongs to acme (got 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...)"),
    ("{authz: {allow: [{principals: ['a*b*']}]}}",
     "policies.p.authz.allow[0].principals[0]: expected an exact value, 'prefix*', '*suffix' or '*' (got 'a*b*')"),
    ("{authz: {allow: [{paths: [admin]}]}}",
     "policies.p.authz.allow[0].paths[0]: expected a path starting with '/' or '*' (got 'admin')"),
    ("{authz: {deny: [{ip_blocks: [10.0.0.1/8]}]}}",
     "policies.p.authz.deny[0].ip_blocks[0]: expected an address or CIDR block such as 10.0.0.0/8 "
     "(10.0.0.1/8 has host bits set) (got '10.0.0.1/8')"),
    ("{authz: {deny: [{methods: [FETCH]}]}}",
     "policies.p.authz.deny[0].methods[0]: expected one of 'GET', 'HEAD', 'POST', 'PUT', 'DELETE', "
     "'PATCH', 'OPTIONS', 'TRACE', 'CONNECT' (got 'FETCH')"),
    ("{authz: {deny: [{who: [x]}]}}",
     "policies.p.authz.deny[0].who: unknown key; expected one of principals, not_principals, namespaces, "
     "not_namespaces, ip_blocks, not_ip_blocks, methods, not_methods, paths, not_paths, claims (got 'who')"),
    ("{cors: {allow_origins: ['*'], allow_credentials: true}}",
     "policies.p.cors: allow_credentials needs explicit origins, not '*'"),
    ("{cors: {allow_origins: ['example.com']}}",
     "policies.p.cors.allow_origins[0]: expected '*' or an origin such as https://app.example.com or "
     "https://*.example.com (got 'example.com')"),
    ('{cors: {allow_origins: ["https://app.example.com\\n"]}}',
     "policies.p.cors.allow_origins[0]: expected '*' or an origin such as https://app.example.com or "
     "https://*.example.com (got 'https://app.example.com\\n')"),
    ("{size_limit: {max_body: 10 parsecs}}",
     "policies.p.size_limit.max_body: expected a size like 64KiB, 1MiB or 10MB (got '10 parsecs')"),
    ("{size_limit: {max_headers: 10}}", "policies.p.size_limit.max_headers: expected a value >= 1024 (got 10)"),
    ("{security_headers: {frame_options: ALLOW}}",
     "policies.p.security_headers.frame_options: expected one of 'DENY', 'SAMEORIGIN' (got 'ALLOW')"),
    ("{require: {scopes: read}}", "policies.p.require.scopes: expected a list (got 'read')"),
])
def test_policy_errors(policy, expected):
    assert errors(policy) == [f"mesh.yaml:22: {expected}"]


@pytest.mark.parametrize("kwargs, expected", [
    ({"listener": "{name: public, port: 18080, tls: {cert: a, key: b, mtls: STRICTLY}}"},
     "mesh.yaml:4: gateway.listeners[0].tls.mtls: expected one of 'STRICT', 'PERMISSIVE' (got 'STRICTLY')"),
    ({"listener": "{name: public, port: 18080, tls: {cert: a, key: b, client_ca: c}}"},
     "mesh.yaml:4: gateway.listeners[0].tls: client_ca needs mtls: STRICT or PERMISSIVE"),
    ({"listener": "{name: public, port: 18080, ip_filter: {allow: [300.0.0.0/8]}}"},
     "mesh.yaml:4: gateway.listeners[0].ip_filter.allow[0]: expected an address or CIDR block such as "
     "10.0.0.0/8 ('300.0.0.0/8' does not appear to be an IPv4 or IPv6 network) (got '300.0.0.0/8')"),
    ({"gateway": "policies: [nope]"},
     "mesh.yaml:6: gateway.policies[0]: unknown policy; no policies are defined (got 'nope')"),
    ({"mesh": "mesh: {identity: {lifetime: 1s}}\n"},
     "mesh.yaml:21: mesh.identity.lifetime: expected a value >= 10 (got '1s')"),
    ({"mesh": "mesh: {identity: {renew_after: 0.95}}\n"},
     "mesh.yaml:21: mesh.identity.renew_after: expected a value <= 0.9 (got 0.95)"),
])
def test_listener_gateway_and_identity_errors(kwargs, expected):
    assert errors(**kwargs) == [expected]


def test_default_policies_set_each_kind_once():
    text = dedent(BASE.replace("  admin: {port: 19901}", "  admin: {port: 19901}\n  policies: [a, b]")
                  + "policies:\n  a: {size_limit: {}}\n  b: {size_limit: {max_body: 1KiB}}\n")
    with pytest.raises(ConfigError) as e:
        load_text(text, "mesh.yaml")
    assert [str(p) for p in e.value.problems] == [
        "mesh.yaml:6: gateway.policies[1]: policy 'b' sets size_limit, already set by 'a'"]


def test_defaults():
    config = load_text(dedent(BASE + "policies:\n  p: {jwt: {issuer: x, %s}, size_limit: {}}\n" % URI), "m")
    jwt, size = config.policies["p"].jwt, config.policies["p"].size_limit
    assert jwt.algorithms == ["RS256", "ES256"] and jwt.leeway == 30.0 and jwt.forward_token is False
    assert jwt.token_from[0].header == "authorization" and jwt.token_from[0].prefix == "Bearer "
    assert (size.max_body, size.max_headers) == (8 << 20, 128 << 10)
    assert config.mesh.identity.lifetime == 86400.0 and config.services["users"].mtls == "DISABLE"
