"""
HTTP/2 specifics in memory: flow control tied to the backend connection,
GOAWAY on shutdown, limits as stream answers, hostile framing bounded.

The shared request table for both framings is in test_http_pipeline.py.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
from twisted.internet import defer

from edge.http import http2
from tests.test_http_pipeline import H2Client, World


def _events(client, cls, sid=None):
    return [e for e in client.events if isinstance(e, cls) and (sid is None or e.stream_id == sid)]


def _body(client, sid):
    return b"".join(e.data for e in _events(client, h2.events.DataReceived, sid))


def test_a_slow_client_pauses_its_backend_and_a_window_update_resumes_it():
    world = World()
    client = H2Client(world)
    # The client's stream window: 1000 bytes.
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    client.server.dataReceived(client.h2.data_to_send())
    client._pump()
    client.send(b"GET", b"/big", b"web.test")
    backend, backend_side = world.backends[-1]
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"a" * 3000)
    client._pump()
    assert len(_body(client, client.sid)) == 1000
    assert backend_side.producerState == "paused"
    # The client reads and opens the window: the held bytes flow, the backend reads again.
    client.h2.increment_flow_control_window(10000, client.sid)
    client.server.dataReceived(client.h2.data_to_send())
    client._pump()
    assert len(_body(client, client.sid)) == 3000
    assert backend_side.producerState == "producing"
    backend.dataReceived(b"a" * 2000)
    client._pump()
    assert len(_body(client, client.sid)) == 5000
    assert _events(client, h2.events.StreamEnded, client.sid)
    assert world.service.pool.idle_count() == 1


def test_a_full_client_socket_pauses_the_backend():
    world = World()
    client = H2Client(world)
    client.send(b"GET", b"/x", b"web.test")
    backend, backend_side = world.backends[-1]
    h2conn = client.server._h2
    h2conn.pauseProducing()  # the client's socket buffer is full
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + b"b" * 1000)
    assert backend_side.producerState == "paused"
    h2conn.resumeProducing()
    backend.dataReceived(b"b" * 2000)
    client._pump()
    assert len(_body(client, client.sid)) == 3000


def test_request_body_window_is_acknowledged_only_as_the_backend_takes_bytes():
    world = World()
    client = H2Client(world)
    connecting = defer.Deferred()
    world.service.pool.connect = lambda key: connecting
    sid = client.h2.get_next_available_stream_id()
    client.sid = sid
    client.h2.send_headers(sid, [(b":method", b"POST"), (b":path", b"/up"), (b":scheme", b"https"),
                                 (b":authority", b"web.test")])
    for _ in range(9):  # past half the window: h2 sends WINDOW_UPDATE from there
        client.h2.send_data(sid, b"u" * 16000)
    client.server.dataReceived(client.h2.data_to_send())
    client._pump()
    window_before = client.h2.local_flow_control_window(sid)
    # No backend yet: the bytes are held within the window, none acknowledged.
    assert window_before == http2.STREAM_WINDOW - 144000
    assert not _events(client, h2.events.WindowUpdated, sid)
    backend = world._backend(("http", "10.9.9.9", 80))
    backend.peer_full(True)  # its socket buffer is full from the start
    connecting.callback(backend)
    client._pump()
    sent = world.backends[-1][1].value()
    assert sent.startswith(b"POST /up HTTP/1.1\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in sent  # no content-length: chunked
    assert sent.endswith((b"3e80\r\n" + b"u" * 16000 + b"\r\n") * 9)
    assert client.h2.local_flow_control_window(sid) == window_before  # still held
    backend.peer_full(False)  # the backend took them
    client._pump()
    assert client.h2.local_flow_control_window(sid) == http2.STREAM_WINDOW
    client.h2.send_data(sid, b"", end_stream=True)
    client.server.dataReceived(client.h2.data_to_send())
    assert world.backends[-1][1].value().endswith(b"0\r\n\r\n")
    backend.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    client._pump()
    assert int(dict(_events(client, h2.events.ResponseReceived, sid)[0].headers)[b":status"]) == 201


def test_shutdown_says_goaway_lets_the_stream_in_flight_finish_and_refuses_newer_ones():
    world = World()
    client = H2Client(world)
    client.send(b"GET", b"/slow", b"web.test")
    first = client.sid
    client.server.shutdown()
    frames = _frames(client)
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaway and goaway[0].last_stream_id == first and goaway[0].error_code == 0
    assert not client.transport.disconnecting
    # A stream the client opened before it saw the GOAWAY: refused, never routed.
    sid = first + 2
    headers = HeadersFrame(sid, flags=["END_STREAM", "END_HEADERS"])
    headers.data = client.h2.encoder.encode([(b":method", b"GET"), (b":path", b"/n"),
                                             (b":scheme", b"https"), (b":authority", b"web.test")])
    client.server.dataReceived(headers.serialize())
    resets = [f for f in _frames(client) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in resets] == [(sid, h2.errors.ErrorCodes.REFUSED_STREAM)]
    assert len(world.backends) == 1
    # The first stream still gets its whole answer, then the connection closes.
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
    frames = _frames(client)
    assert b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == first) == b"done"
    assert any("END_STREAM" in f.flags for f in frames if f.stream_id == first)
    assert client.transport.disconnecting


def _frames(client):
    """Frames the server wrote since the last look, parsed without the client's state machine."""
    client.world.clock.advance(0)  # edge writes HTTP/2 output once per reactor turn
    data = client.transport.value()
    client.transport.clear()
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


def test_body_over_max_body_bytes_without_a_length_is_answered_413_and_the_stream_reset():
    from edge.config import HTTPConfig

    world = World(HTTPConfig(max_body_bytes=1000))
    client = H2Client(world)
    sid = client.h2.get_next_available_stream_id()
    client.sid = sid
    client.h2.send_headers(sid, [(b":method", b"POST"), (b":path", b"/up"), (b":scheme", b"https"),
                                 (b":authority", b"web.test")])
    client.h2.send_data(sid, b"z" * 2000)
    client.server.dataReceived(client.h2.data_to_send())
    client._pump()
    answer = client.answer()
    assert answer.status == 413
    reset = _events(client, h2.events.StreamReset, sid)
    assert reset and reset[0].error_code == h2.errors.ErrorCodes.NO_ERROR
    # The backend that had the head was abandoned, never pooled.
    assert world.service.pool.idle_count() == 0


def test_content_length_disagreeing_with_data_is_a_connection_error_before_the_backend_sees_more():
    world = World()
    client = H2Client(world)
    client.h2.config.validate_outbound_headers = False
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, [(b":method", b"POST"), (b":path", b"/up"), (b":scheme", b"https"),
                                 (b":authority", b"web.test"), (b"content-length", b"3")])
    client.server.dataReceived(client.h2.data_to_send())
    frame = _data_frame(sid, b"0123456789")
    client.server.dataReceived(frame)
    sent = world.backend_bytes()
    assert b"Content-Length: 3\r\n" in sent
    assert b"0123456789" not in sent and not sent.endswith(b"3456789")
    assert client.transport.disconnecting or _events_after(client, h2.events.StreamReset)


def _data_frame(sid, data):
    from hyperframe.frame import DataFrame

    frame = DataFrame(sid, flags=["END_STREAM"])
    frame.data = data
    return frame.serialize()


def _events_after(client, cls):
    client._pump()
    return _events(client, cls)


def test_transfer_encoding_in_an_h2_request_never_reaches_the_backend():
    world = World()
    client = H2Client(world)
    client.h2.config.validate_outbound_headers = False
    client.h2.config.normalize_outbound_headers = False
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"https"),
                                 (b":authority", b"web.test"), (b"transfer-encoding", b"chunked")],
                           end_stream=True)
    client.server.dataReceived(client.h2.data_to_send())
    assert world.backend_bytes() == b""


def test_rapid_reset_is_cut_off_with_bounded_backend_work():
    world = World()
    client = H2Client(world)
    connecting = []

    def connect(key):
        d = defer.Deferred()
        connecting.append(d)
        return d

    world.service.pool.connect = connect
    sent = 0
    for _ in range(3 * http2.RESET_LIMIT):
        if client.transport.disconnecting:
            break
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"https"),
                                     (b":authority", b"web.test")], end_stream=True)
        client.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client.server.dataReceived(client.h2.data_to_send())
        sent += 1
    assert client.transport.disconnecting
    assert sent <= http2.RESET_LIMIT + 1
    goaway = _events_after(client, h2.events.ConnectionTerminated)
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    # Connections that arrive after their stream was reset go back to the pool unused.
    for d in connecting:
        d.callback(world._backend(("http", "10.9.9.9", 80)))
    assert all(t.value() == b"" for _, t in world.backends)
    assert world.service.pool.idle_count() == len(connecting)


def test_a_client_goaway_with_a_stream_in_flight_ends_it_and_frees_its_backend():
    world = World()
    client = H2Client(world)
    client.send(b"GET", b"/x", b"web.test")
    backend, backend_side = world.backends[-1]
    client.h2.close_connection()
    client.server.dataReceived(client.h2.data_to_send())
    assert client.transport.disconnecting
    # The answer that arrives now has nowhere to go: the backend connection is dropped, not pooled.
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert backend_side.aborted
    assert world.service.pool.idle_count() == 0
    assert [line["status"] for line in world.log_lines()] == [499]


# -- known HTTP/2 attacks, bounded (issue 9.14) ------------------------------------


def test_continuation_flood_is_cut_off_after_a_bounded_number_of_frames():
    from hyperframe.frame import ContinuationFrame

    world = World()
    client = H2Client(world)
    sid = client.h2.get_next_available_stream_id()
    first = HeadersFrame(sid)  # no END_HEADERS: CONTINUATION frames must follow
    first.data = client.h2.encoder.encode([(b":method", b"GET"), (b":path", b"/x"),
                                           (b":scheme", b"https"), (b":authority", b"web.test")])
    client.server.dataReceived(first.serialize())
    sent = 0
    for _ in range(10000):
        if client.transport.disconnecting:
            break
        frame = ContinuationFrame(sid)
        frame.data = b"\x00" * 16000
        client.server.dataReceived(frame.serialize())
        sent += 1
    assert client.transport.disconnecting
    assert sent < 100  # the header block edge held stayed under ~1.6 MB
    assert world.backend_bytes() == b""


def test_a_client_that_does_not_read_is_not_read_either():
    """PING/SETTINGS floods from a client that reads nothing cannot grow edge's output."""
    world = World()
    client = H2Client(world)
    client.server._h2.pauseProducing()  # the client's socket buffer is full
    assert client.transport.producerState == "paused"  # edge stops reading it
    client.server._h2.resumeProducing()
    assert client.transport.producerState == "producing"


def test_crlf_in_a_header_value_never_reaches_the_backend():
    world = World()
    client = H2Client(world)
    client.h2.config.validate_outbound_headers = False
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"https"),
                                 (b":authority", b"web.test"),
                                 (b"x-a", b"1\r\nGET /admin HTTP/1.1\r\nHost: web.test")], end_stream=True)
    client.server.dataReceived(client.h2.data_to_send())
    assert world.backend_bytes() == b""
    assert client.transport.disconnecting  # a malformed request: h2 ends the connection


def test_more_concurrent_streams_than_advertised_cost_no_backend_work():
    world = World()
    client = H2Client(world)
    pending = []
    world.service.pool.connect = lambda key: pending.append(defer.Deferred()) or pending[-1]
    fields = [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"https"), (b":authority", b"web.test")]
    for _ in range(http2.MAX_CONCURRENT_STREAMS):
        client.h2.send_headers(client.h2.get_next_available_stream_id(), fields, end_stream=True)
    client.server.dataReceived(client.h2.data_to_send())
    assert len(pending) == http2.MAX_CONCURRENT_STREAMS
    client.transport.clear()
    # One past the limit (written by hand: a conforming client would not send it).
    frame = HeadersFrame(2 * http2.MAX_CONCURRENT_STREAMS + 1, flags=["END_STREAM", "END_HEADERS"])
    frame.data = client.h2.encoder.encode(fields)
    client.server.dataReceived(frame.serialize())
    assert len(pending) == http2.MAX_CONCURRENT_STREAMS  # no backend work for it
    # h2 makes it a connection error (RFC 9113 5.1.2 allows a stream error too).
    assert [(type(f), f.error_code) for f in _frames(client)] == [(GoAwayFrame, h2.errors.ErrorCodes.PROTOCOL_ERROR)]
    assert client.transport.disconnecting
