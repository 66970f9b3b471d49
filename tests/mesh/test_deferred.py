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
# but service_identity, which only aioquic imports, and aioquic only mitmproxy's QUIC layers
WORKER_IMPORTS = """
    import mesh.proxy.master, addons.chain, mitmproxy.proxy.layers, mitmproxy.certs, mitmproxy.net.tls
    import mitmproxy.net.encoding, mitmproxy.net.http.multipart, zeroconf
    import mitmproxy.addons.next_layer, mitmproxy.proxy.server, mitmproxy.proxy.mode_servers
    from cryptography.hazmat.primitives.serialization import ssh
    from mitmproxy import flowfilter  # as addons/recorder.py does
    from mesh.runtime import deferred
"""


def test_a_worker_imports_mitmproxy_without_running_the_deferred_modules():
    out = fresh(WORKER_IMPORTS, """
        from mitmproxy.proxy import events, layers
        from mitmproxy.proxy.layers import http
        # what mitmproxy does with the stand-in classes on its way: isinstance on every server
        # connection's first event, and on each listener (none of it runs a module)
        checks = [isinstance(events.DataReceived(None, b"x"), (http.QuicStreamEvent, layers.ClientQuicLayer)),
                  isinstance(object(), mitmproxy.proxy.mode_servers.mitmproxy_rs.udp.UdpServer),
                  issubclass(int, http.Http3Server)]
        pending = deferred.pending()
        print(json.dumps({"pending": pending, "all": sorted(deferred.DEFERRED), "checks": checks, "ran": sorted(
            n for n in sys.modules if n not in pending and (n.split(".")[0] in (
                "pyparsing", "unittest", "difflib", "service_identity", "attr", "brotli", "bcrypt", "html",
                "pprint", "mimetypes", "ifaddr", "aioquic", "pylsqpack", "mitmproxy_rs")
            or n.startswith(("ruamel.yaml.", "backports.zstd.", "mitmproxy.proxy.layers.quic",
                             "mitmproxy.proxy.layers.http._http3", "mitmproxy.proxy.layers.http._http_h3"))))}))
    """)
    assert out["pending"] == sorted(set(out["all"]) - {"service_identity"})
    assert out["ran"] == [] and out["checks"] == [False, False, False]


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
        import asyncio, datetime, zeroconf._utils.net as zeroconf_net
        from mitmproxy import connection
        from mitmproxy.addons import next_layer
        from mitmproxy.proxy import context, layers, mode_servers
        from mitmproxy.proxy.layers import http
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
        import aioquic.tls
        si = aioquic.tls.service_identity
        si.cryptography.verify_certificate_hostname(cert, "catalog.mesh")
        try:
            si.cryptography.verify_certificate_hostname(cert, "payments.mesh")
            seen["wrong_name"] = "accepted"
        except si.VerificationError:
            seen["wrong_name"] = "refused"
        # mitmproxy's QUIC layers: a client hello aioquic builds, parsed as next_layer does; the layers
        # made through the stand-in classes are what isinstance() then finds
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True, server_name="catalog.mesh", alpn_protocols=["h3"]))
        quic.connect(("127.0.0.1", 4433), now=0.0)
        hello = next_layer.quic_parse_client_hello_from_datagrams([d for d, _ in quic.datagrams_to_send(now=0.0)])
        seen["quic_sni"] = hello.sni
        ctx = context.Context(connection.Client(peername=("127.0.0.1", 5000), sockname=("127.0.0.1", 8080),
                                                timestamp_start=0.0), options.Options())
        clock = lambda: 0.0
        made = [layers.ServerQuicLayer(ctx, time=clock), layers.ClientQuicLayer(ctx, time=clock), http.Http3Server(ctx)]
        from mitmproxy.proxy.layers.quic import _events
        event = _events.QuicStreamDataReceived(ctx.client, 0, b"x", False)
        seen["quic_isinstance"] = [isinstance(made[0], layers.ServerQuicLayer), isinstance(made[1], layers.ClientQuicLayer),
                                   isinstance(made[2], http.Http3Server), isinstance(event, http.QuicStreamEvent),
                                   isinstance(made[0], layers.ClientQuicLayer)]
        # mitmproxy_rs: a UDP echo through its real server; the class mode_servers checks each
        # listener against, taken before the module ran, knows it
        UdpServer = mode_servers.mitmproxy_rs.udp.UdpServer
        async def echo():
            async def handle(stream):
                stream.write(await stream.read(100))
            server = await mode_servers.mitmproxy_rs.udp.start_udp_server("127.0.0.1", 0, handle)
            client = await mode_servers.mitmproxy_rs.udp.open_udp_connection(*server.getsockname())
            client.write(b"ping")
            answer = await asyncio.wait_for(client.read(100), 10)
            client.close()
            server.close()
            await server.wait_closed()
            return [answer.decode(), isinstance(server, UdpServer), isinstance(client, mode_servers.mitmproxy_rs.Stream)]
        seen["udp"] = asyncio.run(echo())
        import mitmproxy_rs.contentviews  # a submodule the extension registers, not a file
        seen["rs_submodule"] = "hex_dump" in mitmproxy_rs.contentviews.__all__
        seen["pending"] = deferred.pending()
        # a stub bound before its module ran now reads like the real module
        seen["same"] = command.pyparsing.ParseResults is sys.modules["pyparsing"].ParseResults
        seen["real"] = sorted({type(sys.modules[n]).__name__ for n in deferred.DEFERRED})
        print(json.dumps(seen), flush=True)
        # no interpreter shutdown: once mitmproxy_rs has run a server, its tokio threads may crash
        # the process as it exits (SIGSEGV in 6-9 of 40 exits under load, with or without the
        # deferral; mitmproxy issue 7409), after everything above was checked
        import os
        os._exit(0)
    """)
    assert out == {"filter": [True, False], "unquote": "a b", "parts": ["set", "'x y'", "1"],
                   "listen_port": 1234, "codecs": [True, True], "error_page": True, "multipart": True,
                   "pprint": True, "ifaddr_lo": True, "ssh_key": True, "wrong_name": "refused",
                   "quic_sni": "catalog.mesh", "quic_isinstance": [True, True, True, True, False],
                   "udp": ["ping", True, True], "rs_submodule": True, "pending": [], "same": True, "real": ["module"]}


def test_a_submodule_imported_first_runs_its_deferred_package_once():
    """`import pkg.sub` of a deferred package runs the package, which imports `sub` itself: the
    import then hands over that module, not a second copy with classes of its own."""
    out = fresh(WORKER_IMPORTS, """
        from mitmproxy.proxy.layers import http
        import mitmproxy.proxy.layers.quic._events as events
        from mitmproxy.proxy.layers import quic
        event = events.QuicStreamDataReceived(None, 0, b"x", False)
        print(json.dumps({
            "one_module": sys.modules["mitmproxy.proxy.layers.quic._events"] is events,
            "one_class": quic.QuicStreamEvent is events.QuicStreamEvent,
            "isinstance": isinstance(event, http.QuicStreamEvent),
            "spec": events.__spec__.origin.rsplit("/", 1)[1],
            "package_ran": "mitmproxy.proxy.layers.quic" not in deferred.pending()}))
    """)
    assert out == {"one_module": True, "one_class": True, "isinstance": True, "spec": "_events.py",
                   "package_ran": True}


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
