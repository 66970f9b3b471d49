"""Who may register an instance of a service in etcd: that service's own workload.

etcd served with mutual TLS takes every certificate of the mesh CA, and etcd cannot say which
keys a client may write (mesh/runtime/store.py), so a holder of catalog's certificate could
register an instance of payments at an address of its choice. As a proxy does with its presence
record, a sidecar signs its instance record with the key of the certificate it presents to etcd,
its workload's; a proxy takes an instance of service S from etcd only when that signature is by
a certificate of its mesh CA, valid now, for S's SPIFFE ID (Istio's secure naming, checked where
the instance is learned rather than only at the handshake). mDNS announcements carry no such
proof: SECURITY.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

from mesh.security import pki, signing
from mesh.security.signing import Signer

PURPOSE = "mitmesh instance"


@dataclass
class InstanceSigner:
    """Signs instance records with the key of `cert`, read again for each record so that a renewed
    certificate signs the next one; the same record and certificate give the same proof (so a
    refresh writes to etcd only when the certificate changed)."""

    mesh: str
    cert: str
    key: str
    _last: tuple[str, str, dict] | None = field(default=None, repr=False)

    def __call__(self, record: dict) -> dict:
        signer = Signer.load(self.cert, self.key)  # ValueError: the announcer says why
        text = json.dumps(record, sort_keys=True)
        if self._last is not None and self._last[:2] == (text, signer.certificate):
            return self._last[2]
        signed = signing.sign_record(PURPOSE, self.mesh, record, signer)
        self._last = (text, signer.certificate, signed)
        return signed


VERIFIED_KEPT = 8192  # records whose proof held, remembered until their certificate ends


def verifier(mesh: str, ca: str, trust_domain: str, namespace: str) -> Callable[[dict], None]:
    """What a proxy checks of each instance record it reads from etcd: raises ValueError saying
    why it is not the word of the service it names. A record whose proof held is not checked
    again until its certificate ends: two signature checks take ~0.4 ms, and a proxy lists every
    instance again each time it reconnects to etcd, on its event loop."""
    verified: dict[str, float] = {}  # the record's text → when its certificate ends

    def verify(record: dict) -> None:
        text = json.dumps(record, sort_keys=True)
        if verified.get(text, 0.0) > time.time():
            return
        check(record)
        if len(verified) >= VERIFIED_KEPT:
            verified.clear()
        verified[text] = signing.valid_until(record["certificate"]) or 0.0

    def check(record: dict) -> None:
        expected = pki.spiffe_id(trust_domain, namespace, str(record.get("service")))
        try:
            signing.check_record(PURPOSE, mesh, record, ca,
                                 signing.of_identity(frozenset({expected}), f"{expected}'s"))
        except ValueError as e:
            raise ValueError(f"not registered by service {record.get('service')!r} itself: "
                             f"{e}") from None
        claimed = record.get("identity")
        if claimed is not None and claimed != expected:
            raise ValueError(f"it claims identity {claimed!r}, but service "
                             f"{record.get('service')!r} runs as {expected}")
    return verify
