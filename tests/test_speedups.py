"""
edge.http.speedups: the private names each speed-up needs are still there in
the installed packages, the versions are the ones they were checked against,
and with the switch off the stock code paths run.
"""

import pytest

from edge.http import speedups


def test_every_private_name_the_speedups_need_is_present():
    # Fails after an upgrade that renamed or removed one: re-check the
    # speed-up against the new code, then raise CHECKED.
    assert speedups.missing() == []


def test_installed_packages_are_not_newer_than_the_checked_versions():
    assert speedups._unchecked() == []


def test_switch_off_runs_the_stock_paths(monkeypatch):
    import os

    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from edge.tls import sni

    creator = sni.SNIConnectionCreator(lambda name: None)
    try:
        speedups.configure(False)
        assert speedups.write is speedups._plain_write
        assert not speedups.lean_dispatch(object(), ())
        factory = sni.TLSServerFactory(creator, object(), Clock())
        assert factory.protocol is sni._StockTLSServerProtocol
        import hpack.hpack

        assert not isinstance(hpack.hpack.log, speedups._QuietLog)
        assert not speedups.enabled("h2_data")
        assert not speedups.enabled("h2_headers") and not speedups.enabled("h2_hpack")
        transport = StringTransport()
        speedups.write(transport, b"x")
        assert transport.value() == b"x"
    finally:
        speedups.configure(True)
    if os.environ.get("EDGE_SPEEDUPS", "").lower() in ("off", "0", "false", "no"):
        assert speedups.write is speedups._plain_write  # the stock run (make test-stock) stays stock
        return
    assert speedups.write is speedups._direct_write
    assert sni.TLSServerFactory(creator, object(), Clock()).protocol is sni._TLSServerProtocol


def test_the_environment_can_force_them_off(monkeypatch):
    monkeypatch.setenv("EDGE_SPEEDUPS", "off")
    try:
        speedups.configure(True)
        assert not speedups.enabled("direct_send")
    finally:
        monkeypatch.delenv("EDGE_SPEEDUPS")
        speedups.configure(True)
    assert speedups.enabled("direct_send")


def _h2_pair(window: int = 1 << 20):
    """A server H2Connection with one open request stream, and its client."""
    import h2.config
    import h2.connection
    import h2.settings

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.initiate_connection()
    client.increment_flow_control_window(window)
    client.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
                            (b":authority", b"a")], end_stream=True)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")])
    client.receive_data(server.data_to_send())
    return server, client


def test_h2_data_frames_queue_what_h2s_send_data_would():
    """Byte for byte h2's own send_data frame by frame, with the same windows and stream state."""
    body = bytes(range(256)) * 300  # 76,800 bytes
    ours, client = _h2_pair()
    theirs, _ = _h2_pair()
    pieces = speedups.h2_data_frames(ours, 1, memoryview(body)[:70000], False)
    pieces += speedups.h2_data_frames(ours, 1, body[70000:], True)
    size = theirs.max_outbound_frame_size
    for piece, end in ((body[:70000], False), (body[70000:], True)):
        for start in range(0, len(piece), size):
            theirs.send_data(1, piece[start:start + size], end_stream=end and start + size >= len(piece))
    got = b"".join(bytes(p) for p in pieces)
    assert got == theirs.data_to_send()
    assert ours.local_flow_control_window(1) == theirs.local_flow_control_window(1)
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.streams[1].state_machine.state == theirs.streams[1].state_machine.state
    events = client.receive_data(got)
    assert b"".join(e.data for e in events if e.__class__.__name__ == "DataReceived") == body
    assert any(e.__class__.__name__ == "StreamEnded" for e in events)


def test_h2_data_frames_refuse_a_closed_stream_and_change_nothing():
    import h2.exceptions
    import pytest

    server, _ = _h2_pair()
    server.reset_stream(1)
    window = server.outbound_flow_control_window
    with pytest.raises((h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError)):
        speedups.h2_data_frames(server, 1, b"x" * 20000, False)
    assert server.outbound_flow_control_window == window


def test_a_big_response_through_a_small_window_arrives_intact_either_way():
    """edge's own DATA framing (h2_data) and h2's give the client the same bytes, window by window."""
    import os

    import h2.events
    import h2.settings

    from tests.test_http_pipeline import H2Client, World

    body = os.urandom(300_000)
    for on in (True, False):
        speedups.configure(on)
        try:
            world = World()
            client = H2Client(world)
            client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 50_000})
            client.server.dataReceived(client.h2.data_to_send())
            client._pump()
            client.send(b"GET", b"/big", b"web.test")
            backend, _ = world.backends[-1]
            backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            got = b""
            for start in range(0, len(body), 70_001):  # reads that are no frame or window multiple
                backend.dataReceived(body[start:start + 70_001])
                while True:
                    client._pump()
                    new = b"".join(e.data for e in client.events if isinstance(e, h2.events.DataReceived))
                    client.events = [e for e in client.events if not isinstance(e, h2.events.DataReceived)]
                    if not new:
                        break
                    got += new
                    client.h2.acknowledge_received_data(len(new), client.sid)
                    client.server.dataReceived(client.h2.data_to_send())
            assert got == body, (on, len(got))
            assert [e for e in client.events if isinstance(e, h2.events.StreamEnded)]
        finally:
            speedups.configure(True)


def test_edges_hpack_encoder_round_trips_through_hpacks_decoder_across_table_changes():
    """20,000 random blocks (repeats, evictions, big values, size changes) decode to what was encoded."""
    import random

    import hpack

    from edge.http.hpackenc import Encoder

    rng = random.Random(7)
    names = [b":status", b"server", b"date", b"content-type", b"etag", b"x-a", b"set-cookie", b"x-long"]
    values = [b"200", b"nginx", b"text/html", b""]
    enc, dec = Encoder(), hpack.Decoder()
    sizes = set()
    for i in range(20000):
        if rng.random() < 0.01:  # the peer's SETTINGS_HEADER_TABLE_SIZE, sometimes twice between blocks
            enc.header_table_size = rng.choice([0, 100, 256, 1000, 4096])
            if rng.random() < 0.3:
                enc.header_table_size = rng.choice([50, 4096])
        fields = [(rng.choice(names), rng.choice(values + [b"%d" % rng.randint(0, 40), b"v" * rng.randint(0, 900)]))
                  for _ in range(rng.randint(1, 12))]
        assert dec.decode(enc.encode(fields), raw=True) == fields, i
        sizes.add(len(enc._entries))
    assert len(dec.header_table.dynamic_entries) == len(enc._entries)  # both tables hold as many
    assert max(sizes) > 20 and 0 in sizes


def test_edges_hpack_encoder_indexes_repeats_and_never_indexes_cookies():
    import hpack

    from edge.http.hpackenc import Encoder

    enc = Encoder()
    fields = [(b":status", b"200"), (b"server", b"nginx"), (b"set-cookie", b"s=secret")]
    first = enc.encode(fields)
    second = enc.encode(fields)
    assert second[:2] == b"\x88\xbe"  # :status 200 static 8, server: nginx the newest dynamic entry (62)
    assert b"secret" in second  # set-cookie: a literal again, never in the table
    assert second[2] & 0xF0 == 0x10  # never indexed (RFC 7541 6.2.3)
    dec = hpack.Decoder()
    assert dec.decode(first, raw=True) == fields and dec.decode(second, raw=True) == fields


def test_server_connections_encode_with_edges_encoder_only_when_switched_on():
    import hpack

    from edge.http import http2
    from edge.http.hpackenc import Encoder
    from tests.test_http_pipeline import H2Client, World

    for on in (False, True):
        speedups.configure(on)
        try:
            client = H2Client(World())
            encoder = client.server._h2.h2.encoder
            assert isinstance(encoder, Encoder if speedups.enabled("h2_hpack") else hpack.Encoder)
            client.send(b"GET", b"/x", b"web.test")
            client.world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok")
            answer = client.answer()
            assert answer.status == 200 and answer.header(b"x-a") == b"b" and answer.body == b"ok"
        finally:
            speedups.configure(True)
    assert http2  # (imported for the server side the client drives)


def test_h2_queue_headers_and_small_data_queue_what_h2_would():
    """HEADERS (with CONTINUATION past the frame size), then small DATA: byte for byte h2's own."""
    heads = [
        ([(b":status", b"200"), (b"server", b"nginx"), (b"content-length", b"2")], False),
        ([(b":status", b"404")] + [(b"x-h%d" % i, b"v" * 1000) for i in range(40)], True),  # > 16 KiB
    ]
    for fields, end in heads:
        ours, client = _h2_pair()
        theirs, _ = _h2_pair()
        request = _request_on(client, 3)  # a fresh request on stream 3 to answer
        for conn in (ours, theirs):
            conn.receive_data(request)
        assert speedups.h2_queue_headers(ours, 3, fields, end)
        theirs.send_headers(3, fields, end_stream=end)
        if not end:
            speedups.h2_data_frames(ours, 3, b"ok", True, queue=True)
            theirs.send_data(3, b"ok", end_stream=True)
        got = ours.data_to_send()
        assert got == theirs.data_to_send()
        assert ours.streams[3].state_machine.state == theirs.streams[3].state_machine.state
        assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
        events = client.receive_data(got)
        assert [dict(e.headers)[b":status"] for e in events if hasattr(e, "headers")] == [fields[0][1]]
    server, _ = _h2_pair()
    assert not speedups.h2_queue_headers(server, 5, heads[0][0], False)  # no such stream: h2's turn


def _request_on(client, sid):
    client.send_headers(sid, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
                              (b":authority", b"a")], end_stream=True)
    return client.data_to_send()


def test_edges_hpack_decoder_decodes_and_fails_as_hpacks_does():
    """Random blocks (repeats as one-byte indices, literals, bad indices, size limits): same fields, same errors."""
    import random

    import hpack

    from edge.http.hpackdec import Decoder

    rng = random.Random(11)
    names = [b":method", b":path", b":authority", b"user-agent", b"x-a", b"cookie", b"x-long"]
    values = [b"GET", b"/", b"h2load", b""]
    enc = hpack.Encoder()
    ours, theirs = Decoder(), hpack.Decoder()
    fast = 0
    for i in range(5000):
        kind = rng.random()
        if kind < 0.05:  # an index past the tables, index 0, or a longer (two-byte) index
            block = bytes([rng.choice([0x80, 0xFE, 0xFF, 0x81 + len(theirs.header_table.dynamic_entries) + 61])])
            block += bytes([0x82]) * rng.randint(0, 3)
        elif kind < 0.1:  # a header list over the limit
            limit = rng.choice([0, 40, 100])
            ours.max_header_list_size = theirs.max_header_list_size = limit
            block = bytes([0x82, 0x84, 0x86] * rng.randint(1, 3))
        else:
            ours.max_header_list_size = theirs.max_header_list_size = 65536
            fields = [(rng.choice(names), rng.choice(values + [b"v" * rng.randint(0, 300)]))
                      for _ in range(rng.randint(1, 8))]
            block = enc.encode(fields)
        outcomes = []
        for dec in (ours, theirs):
            try:
                outcomes.append(("ok", dec.decode(block, raw=True)))
            except hpack.HPACKError as e:
                outcomes.append(("error", type(e)))
        assert outcomes[0] == outcomes[1], (i, block)
        if outcomes[0][0] == "ok":
            assert [type(h) for h in outcomes[0][1]] == [type(h) for h in outcomes[1][1]], i
            if min(block) > 0x80 and max(block) < 0xFF:
                fast += 1
        else:
            enc = hpack.Encoder()  # a failed block desynchronises the tables: start both afresh
            ours, theirs = Decoder(), hpack.Decoder()
        assert ours.header_table.dynamic_entries == theirs.header_table.dynamic_entries, i
    assert fast > 300  # the fast path ran, not only hpack's


def test_edges_hpack_decoder_checks_the_table_size_the_peer_must_shrink_to():
    import hpack

    from edge.http.hpackdec import Decoder

    for dec in (Decoder(), hpack.Decoder()):
        dec.header_table_size = 4096
        dec.max_allowed_table_size = 100  # our SETTINGS lowered it; the peer signalled nothing
        with pytest.raises(hpack.InvalidTableSizeError):
            dec.decode(b"\x82\x84", raw=True)


def test_server_connections_decode_with_edges_decoder_only_when_switched_on():
    import hpack

    from edge.http.hpackdec import Decoder
    from tests.test_http_pipeline import H2Client, World

    for on in (False, True):
        speedups.configure(on)
        try:
            client = H2Client(World())
            decoder = client.server._h2.h2.decoder
            assert type(decoder) is (Decoder if speedups.enabled("h2_hpack") else hpack.Decoder)
            for _ in range(2):  # the second request's fields are indices into the table
                client.send(b"GET", b"/x", b"web.test")
                client.world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                assert client.answer().status == 200
        finally:
            speedups.configure(True)


def test_frames_h2_receives_get_a_short_repr_only_when_switched_on():
    from hyperframe.frame import HeadersFrame

    frame = HeadersFrame(3, data=b"\x82\x84", flags=["END_STREAM", "END_HEADERS"])
    try:
        speedups.configure(False)
        assert "END_STREAM" in repr(frame) and "data=" in repr(frame)  # hyperframe's own
        speedups.configure(True)
        if speedups.enabled("quiet_frames"):
            assert repr(frame) == "HeadersFrame(stream_id=3)"
    finally:
        speedups.configure(True)


def test_edges_hpack_decoder_repeats_a_block_only_while_its_table_entries_stand():
    """The same bytes again: the same fields until the table changes, the limits checked every time."""
    import hpack

    from edge.http.hpackdec import Decoder

    ours, theirs = Decoder(), hpack.Decoder()

    def both(block):
        outcomes = []
        for dec in (ours, theirs):
            try:
                outcomes.append(dec.decode(block, raw=True))
            except hpack.HPACKError as e:
                outcomes.append(type(e))
        assert outcomes[0] == outcomes[1], block
        return outcomes[0]

    literal = b"\x40\x03x-a\x01" + b"%c"  # literal with incremental indexing, new name: the newest entry (62)
    both(literal % b"1")
    assert both(b"\x82\xbe") == [(b":method", b"GET"), (b"x-a", b"1")]
    assert both(b"\x82\xbe") == [(b":method", b"GET"), (b"x-a", b"1")]  # the repeat
    both(literal % b"2")  # a new newest entry: 62 is x-a: 2 now
    assert both(b"\x82\xbe") == [(b":method", b"GET"), (b"x-a", b"2")]
    ours.max_header_list_size = theirs.max_header_list_size = 60  # lowered: the repeat is too large now
    assert both(b"\x82\xbe") is hpack.OversizedHeaderListError
    ours.max_header_list_size = theirs.max_header_list_size = 65536
    assert both(b"\x82\xbe") == [(b":method", b"GET"), (b"x-a", b"2")]
    ours.header_table_size = theirs.header_table_size = 0  # the table emptied: index 62 is gone
    assert both(b"\x82\xbe") is hpack.InvalidTableIndex
    ours.header_table_size = theirs.header_table_size = 4096
    both(literal % b"3")
    assert both(b"\x82\xbe") == [(b":method", b"GET"), (b"x-a", b"3")]
    ours.max_allowed_table_size = theirs.max_allowed_table_size = 100  # the peer must shrink first
    assert both(b"\x82\xbe") is hpack.InvalidTableSizeError
