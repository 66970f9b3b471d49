"""A JWKS document, as an issuer serves it: keys mitmesh cannot use are left out, never an
exception out of `parse` (the fetch keeps the last good keys only on ValueError)."""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mesh.policies import jwks


def jwk(kid: str = "r1") -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)), "kid": kid, "use": "sig"}


GOOD = jwk()
EC = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1())
                                                      .public_key())), "kid": "e1"}


@pytest.mark.parametrize("bad", [
    {**GOOD, "kid": {"a": 1}},  # found by fuzzing: TypeError, unhashable, out of KeySet
    {**GOOD, "kid": ["r2"]},
    {**GOOD, "kty": 5},
    {**GOOD, "alg": ["RS256"]},
    {**GOOD, "alg": "none"},  # found by fuzzing: PyJWT raises NotImplementedError
    {**EC, "crv": "P-999"},
    {**EC, "x": None},
], ids=["kid-object", "kid-list", "kty-number", "alg-list", "alg-none", "unknown-curve",
        "ec-x-null"])
def test_a_key_that_cannot_be_used_is_left_out_and_the_rest_kept(bad):
    keys = jwks.parse(json.dumps({"keys": [bad, GOOD]}))
    assert [k.kid for k in keys.keys] == ["r1"]
    assert keys.candidates("r1", "RS256")


def test_a_document_nested_past_the_parser_is_a_value_error():
    with pytest.raises(ValueError, match="not JSON"):
        jwks.parse(b'{"keys": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")


def test_a_document_with_no_usable_key_is_a_value_error():
    with pytest.raises(ValueError, match="no usable signing key"):
        jwks.parse(json.dumps({"keys": [{**GOOD, "kid": {"a": 1}}]}))
