"""API keys: random keys for consumers, stored in the config only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets


def new_key() -> str:
    """A random key with 256 bits of entropy, URL-safe."""
    return "mk_" + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """The SHA-256 hex digest the config stores. Keys are random, so a fast hash is enough:
    unlike passwords they cannot be guessed from a dictionary."""
    return hashlib.sha256(key.encode()).hexdigest()
