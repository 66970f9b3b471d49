"""Deferred modules (mesh/runtime/deferred.py): a proxy process imports mitmproxy without running
any module of DEFERRED (pyparsing, the filter grammar, ruamel.yaml, codecs, ...), and each still
works the first time it is used. Each test runs a fresh Python: this one imported mitmproxy long ago."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fresh(*code: str, tmp_path: Path | None = None) -> dict:
    """Run the `code` blocks in a new interpreter set up as a proxy worker is (`lean()` first); the
    last prints JSON."""
    prelude = "import json, sys\nfrom mesh.proxy.worker import lean\nlean()\n"
    source = prelude + "".join(textwrap.dedent(block) for block in code)
    out = subprocess.run([sys.executable, "-c", source], cwd=tmp_path or ROOT,
                         env={"PYTHONPATH": f"{ROOT}:{tmp_path or ''}", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# what a worker's imports leave deferred: every name in DEFERRED (none of them is run on the way)
WORKER_IMPORTS = """
    import mesh.proxy.master, addons.chain, mitmproxy.proxy.layers, mitmproxy.certs, mitmproxy.net.tls
    import mitmproxy.net.encoding, mitmproxy.net.http.multipart, aioquic.tls, zeroconf
    from cryptography.hazmat.primitives.serialization import ssh
    from mitmproxy import flowfilter  # as addons/recorder.py does
    from mesh.runtime import deferred
"""


def test_a_worker_imports_mitmproxy_without_running_the_deferred_modules():
    out = fresh(WORKER_IMPORTS, """
        pending = deferred.pending()
        print(json.dumps({"pending": pending, "all": sorted(deferred.DEFERRED), "ran": sorted(
            n for n in sys.modules if n not in pending and n.split(".")[0] in (
                "pyparsing", "unittest", "difflib", "service_identity", "attr", "brotli", "bcrypt", "html",
                "pprint", "mimetypes", "ifaddr") or n.startswith(("ruamel.yaml.", "backports.zstd.")))}))
    """)
    assert out["pending"] == out["all"] and out["ran"] == []


def test_each_deferred_module_runs_at_its_first_use_and_works():
    out = fresh(WORKER_IMPORTS, """
        from mitmproxy import command, optmanager, options
        from mitmproxy.net import encoding
        from mitmproxy.net.http import multipart
        from mitmproxy.proxy.layers.http import _base
        from mitmproxy.test import tflow
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        import datetime, zeroconf._utils.net as zeroconf_net
        seen = {}
        # pyparsing and the filter grammar: a recording's --filter, parsed and matched
        f = flowfilter.parse("~u /catalog/ & ~m GET")
        seen["filter"] = [f(tflow.tflow(req=tflow.treq(path=p))) for p in (b"/catalog/1", b"/users/1")]
        # the command lexer, and the unquote mitmproxy.command took from it by name
        seen["unquote"] = command.unquote('"a b"')
        parts, _ = command.CommandManager(None).parse_partial("set 'x y' 1")
        seen["parts"] = [p.value for p in parts if p.value.strip()]
        # ruamel.yaml: an options file
        opts = options.Options()
        optmanager.load(opts, "listen_port: 1234")
        seen["listen_port"] = opts.listen_port
        # the codecs of a compressed body
        seen["codecs"] = [encoding.decode(encoding.encode(b"x" * 100, e), e) == b"x" * 100 for e in ("br", "zstd")]
        # html (an error page), mimetypes (a multipart form's parts), pprint (the addon chain described)
        seen["error_page"] = b"&lt;b&gt;" in _base.format_error(502, "<b>")
        seen["multipart"] = multipart.mimetypes.guess_type("a.json")[0] == "application/json"
        import mitmproxy.addonmanager as am
        seen["pprint"] = am.pprint.pformat([1]) == "[1]"
        # ifaddr, as zeroconf enumerates interfaces (no packet is sent)
        seen["ifaddr_lo"] = any(a.name == "lo" for a in zeroconf_net.ifaddr.get_adapters())
        # bcrypt's kdf, which cryptography took by name: an encrypted OpenSSH key, written and read back
        key = ec.generate_private_key(ec.SECP256R1())
        blob = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.BestAvailableEncryption(b"secret"))
        seen["ssh_key"] = ssh.load_ssh_private_key(blob, b"secret").private_numbers() == key.private_numbers()
        # service_identity, as aioquic checks a server certificate's name
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "catalog")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("catalog.mesh")]), critical=False)
                .sign(key, hashes.SHA256()))
        si = aioquic.tls.service_identity
        si.cryptography.verify_certificate_hostname(cert, "catalog.mesh")
        try:
            si.cryptography.verify_certificate_hostname(cert, "payments.mesh")
            seen["wrong_name"] = "accepted"
        except si.VerificationError:
            seen["wrong_name"] = "refused"
        seen["pending"] = deferred.pending()
        # a stub bound before its module ran now reads like the real module
        seen["same"] = command.pyparsing.ParseResults is sys.modules["pyparsing"].ParseResults
        seen["real"] = sorted({type(sys.modules[n]).__name__ for n in deferred.DEFERRED})
        print(json.dumps(seen))
    """)
    assert out == {"filter": [True, False], "unquote": "a b", "parts": ["set", "'x y'", "1"],
                   "listen_port": 1234, "codecs": [True, True], "error_page": True, "multipart": True,
                   "pprint": True, "ifaddr_lo": True, "ssh_key": True, "wrong_name": "refused",
                   "pending": [], "same": True, "real": ["module"]}


def test_a_deferred_module_that_fails_raises_at_each_use_as_an_import_would(tmp_path):
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    out = fresh("""
        from mesh.runtime import deferred
        deferred.DEFERRED["boom"] = ()
        import boom  # bound, not run
        errors = []
        for _ in range(2):
            try:
                boom.anything
            except RuntimeError as e:
                errors.append(str(e))
        print(json.dumps({"errors": errors, "pending": deferred.pending()}))
    """, tmp_path=tmp_path)
    assert out == {"errors": ["boom at import", "boom at import"], "pending": ["boom"]}
