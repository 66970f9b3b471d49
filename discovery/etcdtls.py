"""Mutual TLS to etcd: the CA a client trusts and the certificate it presents (etcdctl's --cacert,
--cert, --key), loaded into an ssl context that follows the files when they are renewed."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EtcdTls:
    """PEM files: `ca` verifies the members, `cert` and `key` are this client's identity."""

    ca: str
    cert: str
    key: str
    what: str = "etcd TLS"  # names the files' origin in errors, e.g. discovery.etcd.tls
    _cache: list = field(default_factory=lambda: [None, None], compare=False, repr=False)

    def missing(self) -> str | None:
        """Which file cannot be read, said for the user; None when all three are there."""
        for name, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
            if not os.path.isfile(path):
                return f"{self.what}: {name}: no such file (got {path!r})"
        return None

    def context(self) -> ssl.SSLContext:
        """The client context for the files as they are now: built again once any of them
        changed (a renewed workload certificate), so a new connection presents the new one.
        Raises ValueError naming the file that cannot be used."""
        now = tuple(_stamp(p) for p in (self.ca, self.cert, self.key))
        if self._cache[0] != now or self._cache[1] is None:
            self._cache[:] = [now, self._load()]
        return self._cache[1]

    def _load(self) -> ssl.SSLContext:
        problem = self.missing()
        if problem:
            raise ValueError(problem)
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"{self.what}: ca: not a PEM CA certificate ({e}) "
                             f"(got {self.ca!r})") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"{self.what}: cert/key: cannot be used together ({e}) "
                             f"(got {self.cert!r}, {self.key!r})") from None
        return ctx


def _stamp(path: str) -> tuple | None:
    """mesh.config.files.stamp: discovery/ imports nothing of mesh (tests/mesh/test_layering.py)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
