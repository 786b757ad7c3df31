"""The forward-auth HTTP client's answer framing, on Twisted's StringTransport."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from edge.http.authclient import AuthClient, TooBig, _Connection


def _connection(limit=1024):
    client = AuthClient(Clock(), policy=None, connect_timeout=5, limit=limit)
    conn = _Connection(client, ("http", "auth", 80), limit)
    conn.makeConnection(StringTransport())
    return client, conn


def _answers(d):
    out = []
    d.addBoth(out.append)
    return out


def test_length_answer_is_kept_alive_and_pooled():
    client, conn = _connection()
    got = _answers(conn.send(b"GET / HTTP/1.1\r\nHost: auth\r\n\r\n"))
    assert conn.transport.value() == b"GET / HTTP/1.1\r\nHost: auth\r\n\r\n"
    conn.dataReceived(b"HTTP/1.1 401 Nope\r\nContent-Length: 4\r\nX-A: 1\r\n\r\nde")
    assert got == []
    conn.dataReceived(b"ny")
    (answer,) = got
    assert (answer.code, answer.phrase, answer.body) == (401, b"Nope", b"deny")
    assert (b"X-A", b"1") in answer.headers
    assert client._take(("http", "auth", 80)) is conn


def test_chunked_answer():
    client, conn = _connection()
    got = _answers(conn.send(b"GET / HTTP/1.1\r\n\r\n"))
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n")
    assert got[0].body == b"ok!!!"


def test_answer_ended_by_close_is_complete_and_not_pooled():
    client, conn = _connection()
    got = _answers(conn.send(b"GET / HTTP/1.1\r\n\r\n"))
    conn.dataReceived(b"HTTP/1.1 302 Found\r\nLocation: /login\r\nConnection: close\r\n\r\ngo")
    conn.connectionLost(Failure(ConnectionDone()))
    assert got[0].code == 302 and got[0].body == b"go"
    assert client._take(("http", "auth", 80)) is None


def test_oversized_answer_fails_and_aborts():
    _client, conn = _connection(limit=10)
    got = _answers(conn.send(b"GET / HTTP/1.1\r\n\r\n"))
    conn.dataReceived(b"HTTP/1.1 401 X\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
    assert isinstance(got[0], Failure) and got[0].check(TooBig, ValueError)
    assert conn.transport.disconnecting


def test_connection_lost_before_an_answer_fails():
    _client, conn = _connection()
    got = _answers(conn.send(b"GET / HTTP/1.1\r\n\r\n"))
    conn.connectionLost(Failure(ConnectionDone()))
    assert isinstance(got[0], Failure)
