"""
gRPC end to end: a real grpcio server (h2c, on loopback, in this process)
behind a real edge process (tests/test_http_harness.py) serving TLS with ALPN
h2, and a real grpcio client over TLS to edge, trusting the test's own CA.
Every kind of call, statuses and trailing metadata, each compared with the
same call made directly to the server.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from concurrent import futures

import pytest

from edge.snapshot import Target
from tests.swarmkit import wait_for
from tests.test_http_h2_e2e import tls_edge

grpc = pytest.importorskip("grpc")

SERVICE = "edge.test.Echo"


def _unary(request: bytes, context):
    if request.startswith(b"missing"):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())
    md = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-seen-client", md.get("x-client", "-")),
                                   ("x-seen-forwarded-for", md.get("x-forwarded-for", "-"))))
    return b"echo:" + request


def _server_stream(request: bytes, context):
    count, size = (int(x) for x in request.split(b","))
    for i in range(count):
        yield (b"%06d" % i).ljust(size, b".")
    if count == 3:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "three is enough")


def _client_stream(requests, context):
    parts = list(requests)
    return b"%d:%s" % (len(parts), hashlib.sha256(b"+".join(parts)).hexdigest().encode())


def _bidi(requests, context):
    for message in requests:
        yield message.upper()


class GrpcServer:
    def __init__(self):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        })
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0).wait(10)


@pytest.fixture(scope="module")
def backend():
    server = GrpcServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(backend, tmp_path_factory):
    e = tls_edge(tmp_path_factory.mktemp("grpc"), [Target("grpc", "127.0.0.1", backend.port, scheme="h2c")])
    yield e
    e.stop()


@pytest.fixture(scope="module")
def via_edge(edge):
    with open(edge.root, "rb") as f:
        root = f.read()
    channel = grpc.secure_channel(
        f"127.0.0.1:{edge.https_port}",
        grpc.ssl_channel_credentials(root_certificates=root),
        options=[("grpc.ssl_target_name_override", "web.test"),
                 ("grpc.default_authority", "web.test")],
    )
    grpc.channel_ready_future(channel).result(timeout=20)
    yield channel
    channel.close()


@pytest.fixture(scope="module")
def direct(backend):
    channel = grpc.insecure_channel(f"127.0.0.1:{backend.port}")
    yield channel
    channel.close()


def _method(channel, kind: str, name: str):
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


def test_unary_call_and_its_trailing_metadata(via_edge, edge, backend):
    reply, call = _method(via_edge, "unary_unary", "Unary").with_call(
        b"hello", metadata=(("x-client", "abc"),), timeout=20)
    assert reply == b"echo:hello"
    assert call.code() == grpc.StatusCode.OK
    trailing = dict(call.trailing_metadata())
    assert trailing["x-seen-client"] == "abc"  # request metadata reached the server
    assert trailing["x-seen-forwarded-for"] == "127.0.0.1"  # with edge's forwarding headers
    wait_for(lambda: any(line["path"] == f"/{SERVICE}/Unary" for line in edge.log_lines()), 10, "log line")
    line = [line for line in edge.log_lines() if line["path"] == f"/{SERVICE}/Unary"][-1]
    assert (line["protocol"], line["status"], line["target"]) == (
        "HTTP/2.0", 200, f"h2c://127.0.0.1:{backend.port}")


def test_not_found_with_a_message_is_relayed_exactly(via_edge, direct):
    seen = []
    for channel in (direct, via_edge):
        with pytest.raises(grpc.RpcError) as caught:
            _method(channel, "unary_unary", "Unary")(b"missing-thing", timeout=20)
        seen.append((caught.value.code(), caught.value.details()))
    assert seen[0] == (grpc.StatusCode.NOT_FOUND, "no such thing: missing-thing")
    assert seen[1] == seen[0]


def test_server_streaming_with_large_messages(via_edge):
    # 40 messages of 256 KiB: 10 MiB through the stream windows of both hops.
    replies = list(_method(via_edge, "unary_stream", "ServerStream")(b"40,262144", timeout=60))
    assert len(replies) == 40
    assert all(len(r) == 262144 for r in replies)
    assert [r[:6] for r in replies] == [b"%06d" % i for i in range(40)]


def test_status_after_messages_comes_in_the_trailers(via_edge, direct):
    seen = []
    for channel in (direct, via_edge):
        call = _method(channel, "unary_stream", "ServerStream")(b"3,10", timeout=20)
        got = []
        with pytest.raises(grpc.RpcError) as caught:
            for message in call:
                got.append(message)
        seen.append((got, caught.value.code(), caught.value.details()))
    assert seen[0] == ([b"000000....", b"000001....", b"000002...."],
                       grpc.StatusCode.RESOURCE_EXHAUSTED, "three is enough")
    assert seen[1] == seen[0]


def test_client_streaming(via_edge):
    parts = [b"p%d" % i for i in range(200)]
    reply = _method(via_edge, "stream_unary", "ClientStream")(iter(parts), timeout=30)
    assert reply == b"200:" + hashlib.sha256(b"+".join(parts)).hexdigest().encode()


def test_client_streaming_a_large_upload(via_edge):
    parts = [bytes([65 + i % 26]) * 1_000_000 for i in range(12)]  # 12 MB up
    reply = _method(via_edge, "stream_unary", "ClientStream")(iter(parts), timeout=60)
    assert reply == b"12:" + hashlib.sha256(b"+".join(parts)).hexdigest().encode()


def test_bidi_streaming_is_a_conversation(via_edge):
    """Each reply comes back before the next message is sent: nothing waits for the end."""
    outbox: queue.Queue = queue.Queue()

    def messages():
        while True:
            item = outbox.get(timeout=20)
            if item is None:
                return
            yield item

    call = _method(via_edge, "stream_stream", "Bidi")(messages(), timeout=30)
    replies = []
    for i in range(20):
        outbox.put(b"word%d" % i)
        replies.append(next(call))
    outbox.put(None)
    assert replies == [b"WORD%d" % i for i in range(20)]
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK


def test_many_concurrent_calls_on_one_channel(via_edge):
    unary = _method(via_edge, "unary_unary", "Unary")
    results = {}

    def work(n):
        for i in range(10):
            results[(n, i)] = unary(b"%d-%d" % (n, i), timeout=30)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {(n, i): b"echo:%d-%d" % (n, i) for n in range(8) for i in range(10)}
