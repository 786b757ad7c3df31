"""
HTTPS through edge's proxy: SNI per host, HTTP/2 to clients, HTTP/1.1 to a
loopback backend, the global HTTP->HTTPS redirect and HSTS.

edge's real HTTP service (``edge.http.service``) listens with the TLS
service wired in as ``edge/tap.py`` does; the clients
are curl (``--http2``, ``--resolve``, ``--cacert``).  Everything is on
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from edge.config import Config, EntryPoint, HTTPConfig, TLSConfig
from edge.discovery.publisher import SnapshotPublisher
from edge.http.service import make_http_service
from edge.rules import Host
from edge.snapshot import BackendService, Headers, Router, RouterTLS, Snapshot, Target
from edge.tls.ca import create_ca
from edge.tls.issuer import InternalCAIssuer
from edge.tls.service import TLSService
from tests.test_tls_store import TestCA, write


class _Echo(resource.Resource):
    """The backend: describes the request it got; /big sends 1 MiB."""

    isLeaf = True

    def render(self, request):
        if request.path == b"/big":
            request.setHeader(b"content-type", b"application/octet-stream")
            return b"x" * (1 << 20)
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "method": request.method.decode(),
                "path": request.uri.decode(),
                "version": request.clientproto.decode(),
                "host": (request.getHeader(b"host") or b"").decode(),
                "proto": (request.getHeader(b"x-forwarded-proto") or b"").decode(),
                "xff": (request.getHeader(b"x-forwarded-for") or b"").decode(),
                "body": len(body),
            }
        ).encode()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30
    )


class ProxyTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)
        certs = os.path.join(self.tmp, "certs")
        os.mkdir(certs)
        files_ca = TestCA()
        self.files_root = write(os.path.join(self.tmp, "files-root.pem"), files_ca.pem())
        write(os.path.join(certs, "alpha.pem"), files_ca.bundle("alpha.lan"))
        write(os.path.join(certs, "beta.pem"), files_ca.bundle("beta.lan"))
        ca = create_ca()
        self.edge_root = write(os.path.join(self.tmp, "edge-root.pem"), ca.root_pem())

        backend = reactor.listenTCP(0, server.Site(_Echo()), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        dead = _free_port()  # nothing listens here: connect refused

        self.http_port, self.https_port = _free_port(), _free_port()
        config = Config(
            entrypoints=(
                EntryPoint("http", f"tcp:{self.http_port}:interface=127.0.0.1"),
                EntryPoint("https", f"tcp:{self.https_port}:interface=127.0.0.1", tls=True),
            ),
            http=HTTPConfig(backend_connect_timeout=2.0),
            tls=TLSConfig(certificates=certs, internal_ca=True, redirect_http=True),
        )
        publisher = SnapshotPublisher(reactor, debounce=0)
        self.tls = TLSService(
            config.tls, publisher, reactor,
            issuer=InternalCAIssuer(ca, os.path.join(self.tmp, "issued")),
        )
        self.http = make_http_service(config, publisher, reactor, tls_context=self.tls)
        web = BackendService("web@test", (Target("t1", "127.0.0.1", backend.getHost().port),))
        down = BackendService("down@test", (Target("d1", "127.0.0.1", dead),))

        def router(name, host, service="web@test", middlewares=()):
            return Router(
                name=f"{name}@test", rule=Host((host,)), rule_text=f"Host(`{host}`)",
                service=service, tls=RouterTLS(), middlewares=middlewares,
            )

        publisher.report(
            "test",
            Snapshot.build(
                routers=[
                    router("alpha", "alpha.lan"),
                    router("beta", "beta.lan", middlewares=(Headers(sts_seconds=31536000),)),
                    router("gamma", "gamma.lan"),
                    router("down", "down.alpha.lan", service="down@test"),
                ],
                services=[web, down],
            ),
        )
        for service in (self.tls, self.http):
            service.startService()
        self.addCleanup(self._stop)
        yield self.http.listening

    @defer.inlineCallbacks
    def _stop(self):
        yield self.http.stopService()
        self.tls.stopService()
        # Let aborted client connections finish closing.
        yield deferLater(reactor, 0.05, lambda: None)

    def https(self, name, *args, root=None, path="/hello"):
        return deferToThread(
            _curl,
            "--resolve", f"{name}:{self.https_port}:127.0.0.1",
            "--cacert", root or self.files_root,
            *args,
            f"https://{name}:{self.https_port}{path}",
        )

    @defer.inlineCallbacks
    def test_three_hosts_by_sni_over_http2(self):
        for name, root in (
            ("alpha.lan", self.files_root),
            ("beta.lan", self.files_root),
            ("gamma.lan", self.edge_root),  # built-in CA, issued at the handshake
        ):
            done = yield self.https(name, "--http2", "-i", root=root)
            self.assertEqual(done.returncode, 0, done.stderr)
            head, _, body = done.stdout.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/2 200"), head)
            seen = json.loads(body)
            # HTTP/2 to the client, HTTP/1.1 to the backend, with the headers it needs.
            self.assertEqual(seen["version"], "HTTP/1.1")
            self.assertEqual(seen["host"], f"{name}:{self.https_port}")
            self.assertEqual(seen["proto"], "https")
            self.assertEqual(seen["xff"], "127.0.0.1")
            self.assertEqual(seen["path"], "/hello")

    @defer.inlineCallbacks
    def test_http11_over_tls_still_works(self):
        done = yield self.https("alpha.lan", "--http1.1", "-i")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith(b"HTTP/1.1 200"), done.stdout[:100])
        self.assertEqual(json.loads(done.stdout.partition(b"\r\n\r\n")[2])["proto"], "https")

    @defer.inlineCallbacks
    def test_http2_request_body_and_big_response(self):
        done = yield self.https("alpha.lan", "--http2", "--data-binary", "y" * 100000)
        self.assertEqual(done.returncode, 0, done.stderr)
        seen = json.loads(done.stdout)
        self.assertEqual((seen["method"], seen["body"]), ("POST", 100000))
        done = yield self.https(
            "alpha.lan", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{size_download}",
            path="/big",
        )
        self.assertEqual(done.stdout, b"2 1048576")

    @defer.inlineCallbacks
    def test_http2_many_requests_on_one_connection(self):
        urls = [f"https://alpha.lan:{self.https_port}/n{i}" for i in range(20)]
        done = yield deferToThread(
            _curl, "--http2", "--resolve", f"alpha.lan:{self.https_port}:127.0.0.1",
            "--cacert", self.files_root, "-w", "<connects=%{num_connects}>", *urls,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.count(b'"path": "/n'), 20)
        # One TLS connection carried all twenty requests.
        connects = [int(n) for n in re.findall(rb"<connects=(\d+)>", done.stdout)]
        self.assertEqual((len(connects), sum(connects)), (20, 1))

    @defer.inlineCallbacks
    def test_http2_errors(self):
        done = yield self.https("alpha.lan", "--http2", "-i", "-H", "Host: nobody.lan")
        self.assertTrue(done.stdout.startswith(b"HTTP/2 404"), done.stdout[:100])
        done = yield self.https("down.alpha.lan", "--http2", "-i", "-k")
        self.assertTrue(done.stdout.startswith(b"HTTP/2 502"), done.stdout[:200])

    @defer.inlineCallbacks
    def test_hsts_when_asked(self):
        done = yield self.https("beta.lan", "--http2", "-i")
        head = done.stdout.partition(b"\r\n\r\n")[0].lower()
        self.assertIn(b"strict-transport-security: max-age=31536000", head)
        done = yield self.https("alpha.lan", "--http2", "-i")
        self.assertNotIn(b"strict-transport-security", done.stdout.partition(b"\r\n\r\n")[0].lower())

    @defer.inlineCallbacks
    def test_plain_http_is_redirected_to_https(self):
        done = yield deferToThread(
            _curl, "-i", "--resolve", f"alpha.lan:{self.http_port}:127.0.0.1",
            f"http://alpha.lan:{self.http_port}/some/path?q=1",
        )
        head = done.stdout.partition(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 301") or head.startswith(b"HTTP/1.1 308"), head)
        self.assertIn(
            f"location: https://alpha.lan:{self.https_port}/some/path?q=1".encode(), head.lower()
        )
        # And following it lands on the backend over TLS.
        done = yield deferToThread(
            _curl, "-L", "--resolve", f"alpha.lan:{self.http_port}:127.0.0.1",
            "--resolve", f"alpha.lan:{self.https_port}:127.0.0.1", "--cacert", self.files_root,
            f"http://alpha.lan:{self.http_port}/after",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["proto"], "https")
