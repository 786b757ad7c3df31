"""
Processes for the HTTP tests (no tests here).

    python -m tests.test_http_harness edge CONFIG.toml SNAPSHOT.pickle
    python -m tests.test_http_harness origin PORT NAME

``edge`` runs edge's HTTP service alone; the snapshot file holds a pickled
:class:`edge.snapshot.Snapshot`, re-read whenever it changes (tests replace
it to change the cluster).  ``origin`` is a small raw HTTP/1.1 server with
paths that misbehave on demand (see :class:`Origin`).  Both print ``ready``
once listening.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys


def run_edge(config_path: str, snapshot_path: str) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from edge.config import load
    from edge.discovery.publisher import SnapshotPublisher
    from edge.http import make_http_service
    from tests.snapshot_file import follow_snapshot_file

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    config = load(config_path)
    publisher = SnapshotPublisher(reactor, debounce=0)
    follow_snapshot_file(publisher, snapshot_path)
    tls_context = None
    if os.environ.get("EDGE_TEST_CERT"):
        from twisted.internet import ssl

        with open(os.environ["EDGE_TEST_CERT"]) as f:
            pem = ssl.PrivateCertificate.loadPEM(f.read())
        tls_context = ssl.CertificateOptions(
            privateKey=pem.privateKey.original, certificate=pem.original,
            # EDGE_TEST_ALPN="h2,http/1.1" offers HTTP/2 as the TLS service does.
            acceptableProtocols=os.environ.get("EDGE_TEST_ALPN", "http/1.1").encode().split(b","),
        )
    service = make_http_service(config, publisher, reactor, tls_context=tls_context)
    service.startService()

    def ready(_):
        os.write(1, b"ready\n")  # stdout itself is redirected into the log

    service.listening.addCallback(ready)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


def run_origin(port: int, name: str) -> None:
    import httptools
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    stats = {"connections": 0, "requests": 0}

    class Origin(Protocol):
        """
        Paths: /echo (JSON of what arrived), /big/N (N bytes, streamed),
        /chunked/N (chunked, with a trailer), /close/N (body ended by close),
        /status/CODE, /slow/SECONDS, /name, /drop (close, no answer),
        /stats, /upgrade (101, then echo bytes).
        """

        def connectionMade(self):
            stats["connections"] += 1
            self.parser = httptools.HttpRequestParser(self)
            self.tunnel = False
            self.busy = False

        def dataReceived(self, data):
            if self.tunnel:
                self.transport.write(data)
                return
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                self.tunnel = True
                self.transport.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n"
                )
                rest = data[e.args[0]:]
                if rest:
                    self.transport.write(rest)
            except httptools.HttpParserError:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.loseConnection()

        def on_message_begin(self):
            self.url = b""
            self.headers = []
            self.size = 0
            self.digest = hashlib.sha256()

        def on_url(self, url):
            self.url += url

        def on_header(self, name, value):
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

        def on_body(self, data):
            self.size += len(data)
            if self.size <= 16 << 20:
                self.digest.update(data)

        def on_message_complete(self):
            stats["requests"] += 1
            if self.parser.should_upgrade():
                return  # answered with 101 once the parser stops
            self.respond(self.parser.get_method(), self.url.decode("latin-1"))

        def send(self, status, body=b"", headers=(), method=b"GET"):
            head = [f"HTTP/1.1 {status} X".encode()]
            head += [f"{k}: {v}".encode("latin-1") for k, v in headers]
            if status not in (204, 304) and not any(k.lower() == "content-length" for k, _ in headers):
                head.append(b"Content-Length: %d" % len(body))
            head.append(b"X-Origin: " + name.encode())
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + (b"" if method == b"HEAD" else body))

        def respond(self, method, url):
            path, _, query = url.partition("?")
            parts = path.strip("/").split("/")
            what = parts[0]
            arg = parts[1] if len(parts) > 1 else ""
            if what == "echo" or what == "":
                body = json.dumps({
                    "origin": name, "method": method.decode(), "url": url,
                    "headers": self.headers, "body_len": self.size,
                    "body_sha256": self.digest.hexdigest() if self.size <= 16 << 20 else "",
                }).encode()
                self.send(200, body, [("Content-Type", "application/json")], method)
            elif what == "name":
                self.send(200, name.encode(), (), method)
            elif what == "stats":
                self.send(200, json.dumps(stats).encode(), (), method)
            elif what == "status":
                code = int(arg)
                self.send(code, b"" if code in (204, 304) else b"status body", (), method)
            elif what == "slow":
                reactor.callLater(float(arg), lambda: self.transport.connected and self.send(200, b"slow", (), method))
            elif what == "drop":
                self.transport.abortConnection()
            elif what == "big":
                self.stream(int(arg), method)
            elif what == "chunked":
                n = int(arg)
                self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n")
                data = b"c" * n
                for i in range(0, n, 1000):
                    piece = data[i:i + 1000]
                    self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.transport.write(b"0\r\nX-Trailer: dropped\r\n\r\n")
            elif what == "close":
                self.transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"z" * int(arg))
                self.transport.loseConnection()
            else:
                self.send(404, b"origin: no such path", (), method)

        def stream(self, total, method):
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Origin: %s\r\n\r\n" % (total, name.encode())
            self.transport.write(head)
            if method == b"HEAD":
                return
            chunk = b"b" * 65536
            state = {"left": total, "paused": False}
            transport = self.transport

            class Producer:
                def pauseProducing(self):
                    state["paused"] = True

                def resumeProducing(self):
                    state["paused"] = False
                    pump()

                def stopProducing(self):
                    state["left"] = 0

            def pump():
                while state["left"] > 0 and not state["paused"]:
                    n = min(len(chunk), state["left"])
                    state["left"] -= n
                    transport.write(chunk[:n])
                if state["left"] <= 0:
                    transport.unregisterProducer()

            transport.registerProducer(Producer(), True)
            pump()

    factory = Factory.forProtocol(Origin)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    if sys.argv[1] == "edge":
        run_edge(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "origin":
        run_origin(int(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit("usage: edge CONFIG SNAPSHOT | origin PORT NAME")
