"""
Regression tests for request smuggling through ``Upgrade`` + ``Content-Length``
(the first hole of the hostile-input issue).

llhttp ends an Upgrade request at its head, so edge announced a body it never
sent and pooled the backend connection; the next client's request became that
body's bytes and the backend parsed what followed as a request edge had never
routed (an auth bypass).  Checked in memory (protocol objects on
StringTransports) and end to end through a real edge process with a raw
recording backend.
"""

from __future__ import annotations

import socket
import threading

import bcrypt
import httptools
import pytest

from edge.rules import Host, PathPrefix, And
from edge.snapshot import BasicAuth
from tests.test_http_protocol import pooled_backend, setup
from tests.test_http_proxy import edge_factory, raw, snapshot, web  # noqa: F401 (fixture)

UPGRADE_WITH_BODY = (
    b"GET /x HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Content-Length: 40\r\n\r\n"
)
UPGRADE = b"GET /x HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
SMUGGLER = (
    b"GET /x HTTP/1.1\r\nHost: web.test\r\nX-Pad: GET /admin/secret HTTP/1.0\r\n"
    b"X-Other: 1\r\n\r\n"
)


# -- 1. smuggling, in memory ---------------------------------------------------


def test_an_upgrade_request_that_declares_a_body_is_refused_before_any_backend():
    _, service, server, client = setup()
    backend, backend_side = pooled_backend(service)
    server.dataReceived(UPGRADE_WITH_BODY)
    assert client.value().startswith(b"HTTP/1.1 400 ")
    assert b"Upgrade request with a body" in client.value()
    assert backend_side.value() == b""  # nothing announced, nothing sent
    assert client.disconnecting


def test_an_upgrade_request_with_a_chunked_body_is_refused():
    _, service, server, client = setup()
    _, backend_side = pooled_backend(service)
    server.dataReceived(
        b"POST /x HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert client.value().startswith(b"HTTP/1.1 400 ")
    assert backend_side.value() == b""


def test_a_refused_upgrade_never_returns_its_backend_connection_to_the_pool():
    _, service, server, client = setup()
    backend, backend_side = pooled_backend(service)
    server.dataReceived(UPGRADE + b"early tunnel bytes")
    assert backend_side.value().startswith(b"GET /x HTTP/1.1\r\n")
    assert b"Content-Length" not in backend_side.value()
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert service.pool.idle_count() == 0
    assert backend_side.disconnecting
    # The bytes the client sent for a tunnel that never opened went nowhere.
    assert b"early tunnel bytes" not in backend_side.value()


def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_502():
    _, service, server, client = setup()
    backend, backend_side = pooled_backend(service)
    server.dataReceived(b"GET /x HTTP/1.1\r\nHost: web.test\r\n\r\n")
    backend.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 502 ")
    assert service.pool.idle_count() == 0


# -- end to end ------------------------------------------------------------------


class RecordingBackend:
    """
    A raw backend that answers each request as soon as its head is in, without
    reading a body first (as many do), and records every request it parsed.

    Like most application servers it does not switch protocols for an
    ``Upgrade`` it declines: such a request's ``Content-Length`` bytes are its
    body, read before the next request.
    """

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[int, str]] = []  # (connection number, "METHOD target")
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def target(self):
        from edge.snapshot import Target

        return Target("rec", "127.0.0.1", self.port)

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn, number):
        backend = self

        class Parser:
            url = b""
            length = 0

            def on_url(self, url):
                self.url += url

            def on_header(self, name, value):
                if name.lower() == b"content-length":
                    self.length = int(value)

            def on_headers_complete(self):
                with backend._lock:
                    backend.requests.append((number, f"{parser.get_method().decode()} {self.url.decode()}"))
                self.url = b""
                body = f"conn {number}".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

        callbacks = Parser()
        parser = httptools.HttpRequestParser(callbacks)
        conn.settimeout(10)
        skip = 0
        try:
            for _ in range(1000):
                data = conn.recv(65536)
                if not data:
                    break
                while data:
                    if skip:
                        taken = min(skip, len(data))
                        skip -= taken
                        data = data[taken:]
                        continue
                    try:
                        parser.feed_data(data)
                        data = b""
                    except httptools.HttpParserUpgrade as e:
                        # Declined (it answered 200): the declared body, then HTTP again.
                        skip, data = callbacks.length, data[e.args[0]:]
                        callbacks = Parser()
                        parser = httptools.HttpRequestParser(callbacks)
        except (OSError, httptools.HttpParserError):
            pass
        finally:
            conn.close()

    def stop(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def recording():
    backend = RecordingBackend()
    yield backend
    backend.stop()


def _hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_smuggling_through_upgrade_and_content_length_is_closed_end_to_end(recording, edge_factory):
    # /admin is protected by basic auth; everything else on web.test is open.
    admin = web([recording.target()], name="admin", rule=And((Host(("web.test",)), PathPrefix(("/admin",)))),
                rule_text="Host(`web.test`) && PathPrefix(`/admin`)", priority=100,
                middlewares=[BasicAuth((f"alice:{_hashed('s3cret')}",))])
    site = web([recording.target()], name="site")
    e = edge_factory(snapshot(admin, site))
    assert raw(e.port, b"GET /admin/secret HTTP/1.1\r\nHost: web.test\r\n\r\n",
               read_until_close=False).startswith(b"HTTP/1.1 401 ")
    # Connection A: the exact reproduction; then B, several times, on fresh connections.
    answer_a = raw(e.port, UPGRADE_WITH_BODY)
    answers_b = [raw(e.port, SMUGGLER, read_until_close=False) for _ in range(3)]
    answer_a2 = raw(e.port, UPGRADE)  # an Upgrade the backend declines with a 200
    answers_b += [raw(e.port, SMUGGLER, read_until_close=False) for _ in range(3)]
    seen = [line for _, line in recording.requests]
    assert "GET /admin/secret" not in seen
    assert [line for line in seen if line != "GET /x"] == []
    assert answer_a.startswith(b"HTTP/1.1 400 ")
    assert answer_a2.startswith(b"HTTP/1.1 200 ")
    assert all(b.startswith(b"HTTP/1.1 200 ") for b in answers_b)
    # Edge still serves afterwards.
    assert e.get("/x").status_code == 200


