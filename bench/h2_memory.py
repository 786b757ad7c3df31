"""
edge's HTTP/2 (and HTTP/1.1) hot path in memory: CPU per request of edge alone.

The client's bytes are made once, before the clock starts (a client that
opened its windows wide, as h2load does, so it never needs to answer edge),
and fed to a real ``ServerProtocol`` -> ``HTTP2Connection`` on a
StringTransport; every stream goes through the real exchange, routing table,
pool and ``BackendProtocol``, whose StringTransport is answered with a fixed
HTTP/1.1 response.  So the process CPU measured is edge's Python and
nothing else (no sockets, no TLS, no client) -- steady on a loaded machine,
and small enough for ``valgrind --tool=callgrind`` instruction counts.

    .venv/bin/python bench/h2_memory.py [h2|h1] [streams] [requests] [body bytes] [rounds]

``h2 10 20000 100 8`` is like h2load's 8x10 on the 100-byte page (10
streams in flight on a connection: each client read carries 10 requests,
then 10 backend reads answer them, then one flush); ``h2 100 ...`` like 1x100;
``h2 10 2000 1048576`` the 1 MiB rows (the backend's body arrives in 64 KiB
reads, as a socket would give it).  ``h1 1 20000`` is HTTP/1.1 keep-alive.
Prints the best and median CPU microseconds per request over the rounds.
``CPROFILE=file`` writes a cProfile of one round's measured part instead;
``H2_READS=file`` keeps the client's bytes in a file (made on the first run),
so that under ``valgrind --tool=callgrind`` the instructions of runs with two
request counts differ by edge's work alone.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

import h2.config
import h2.connection
import h2.settings
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from edge.config import Config, EntryPoint, HTTPConfig
from edge.discovery.publisher import SnapshotPublisher
from edge.http import speedups
from edge.http.backend import BackendProtocol
from edge.http.http1 import ServerProtocol
from edge.http.service import HTTPService
from edge.rules import PathPrefix
from edge.snapshot import BackendService, Router, Snapshot, Target

speedups.configure(os.environ.get("EDGE_SPEEDUPS", "on") != "off")

READ = 65536  # what one backend socket read gives


class _Transport(StringTransport):
    def __init__(self, host):
        super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 8443),
                         peerAddress=IPv4Address("TCP", host, 40000))

    def write(self, data):  # keep nothing: the bench would grow without end
        self.written += len(data)

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    written = 0

    def abortConnection(self):
        self.loseConnection()


class World:
    def __init__(self, body: bytes):
        self.clock = Clock()
        config = Config(entrypoints=(EntryPoint("web", "tcp:1"),), http=HTTPConfig())
        publisher = SnapshotPublisher(self.clock, debounce=0)
        publisher.report("t", Snapshot.build(
            routers=[Router("bench", PathPrefix(("/",)), "PathPrefix(`/`)", "svc")],
            services=[BackendService("svc", (Target("t1", "10.9.9.9", 80),))]))
        self.service = HTTPService(config, publisher, self.clock)
        publisher.subscribe(self.service.apply)
        self.factory = self.service.factories["web"]
        self.service.pool.connect = self._connect
        self.waiting: list = []  # backend connections with a request sent
        head = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 17:18:00 GMT\r\n"
                b"Content-Type: text/html\r\nContent-Length: %d\r\n"
                b"Last-Modified: Tue, 01 Dec 2026 17:00:00 GMT\r\nConnection: keep-alive\r\n"
                b"ETag: \"692dcaa0-64\"\r\nAccept-Ranges: bytes\r\n\r\n" % len(body))
        answer = head + body
        self.reads = [answer[i:i + READ] for i in range(0, len(answer), READ)]

    def _connect(self, key):
        from twisted.internet import defer

        backend = BackendProtocol(key, self.service.pool, self.service.config.http)
        world = self

        class Connected:
            def connected(self, protocol):
                pass

        class T(_Transport):
            def write(self, data):
                if not self.written:
                    world.waiting.append(backend)
                self.written += len(data)

        backend.factory = Connected()
        backend.makeConnection(T(key[1]))
        return defer.succeed(backend)

    def answer_all(self):
        waiting, self.waiting = self.waiting, []
        for backend in waiting:
            backend.transport.written = 0
            for read in self.reads:
                backend.dataReceived(read)


def _h2_client_bytes(streams: int, total: int) -> list[bytes]:
    """The client's bytes, one element per client read (``streams`` requests each)."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2 ** 31 - 1,
        h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384,
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
    })
    c.initiate_connection()
    c.increment_flow_control_window(2 ** 31 - 1 - 65535)
    first = c.data_to_send() + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"  # and the ACK of edge's SETTINGS
    reads = []
    fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:18601"),
              (b":path", b"/"), (b"user-agent", b"h2load nghttp2/1.52.0")]
    for _ in range(total // streams):
        for _ in range(streams):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, fields, end_stream=True)
            # A stream id is taken only when opened; close it on the client's side at once.
            c.streams.pop(sid)
        reads.append(c.data_to_send())
    reads[0] = first + reads[0]
    return reads


_profile = None


def _start() -> float:
    if _profile is not None:
        _profile.enable()
    return time.process_time()


def _stop(t0: float) -> float:
    spent = time.process_time() - t0
    if _profile is not None:
        _profile.disable()
    return spent


def _drive(world, server, reads) -> tuple[float, int]:
    """Feed the client's reads, answer the backends, run the turn; CPU seconds after the warm-up."""
    clock = world.clock
    gc.collect()
    gc.freeze()
    # Warm-up: the pool, caches and the HPACK tables reach their steady state.
    warm = max(1, len(reads) // 20)
    t0 = 0.0
    for i, data in enumerate(reads):
        if i == warm:
            t0 = _start()
        server.dataReceived(data)
        world.answer_all()
        clock.advance(0)
    return _stop(t0), warm


def run_h2(streams: int, total: int, body: bytes) -> tuple[float, int]:
    world = World(body)
    saved = os.environ.get("H2_READS")  # a file of the client's reads (made once, for callgrind runs)
    if saved and os.path.exists(saved):
        import pickle

        with open(saved, "rb") as f:
            reads = pickle.load(f)
    else:
        reads = _h2_client_bytes(streams, total)
        if saved:
            import pickle

            with open(saved, "wb") as f:
                pickle.dump(reads, f)
    transport = _Transport("127.0.0.1")
    transport.negotiatedProtocol = b"h2"
    server = ServerProtocol()
    server.factory = world.factory
    server.makeConnection(transport)
    spent, warm = _drive(world, server, reads)
    n = (len(reads) - warm) * streams
    # Sanity: every stream answered, nothing left open.
    h2conn = server._h2
    assert not h2conn._streams, f"{len(h2conn._streams)} streams left open"
    assert transport.written > n * len(body), "less output than the bodies"
    return spent / n * 1e6, n


def run_h1(total: int, body: bytes) -> tuple[float, int]:
    world = World(body)
    transport = _Transport("127.0.0.1")
    server = ServerProtocol()
    server.factory = world.factory
    server.makeConnection(transport)
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18602\r\nUser-Agent: wrk\r\n\r\n"
    spent, warm = _drive(world, server, [request] * total)
    n = total - warm
    assert transport.written > n * len(body)
    return spent / n * 1e6, n


def main(argv):
    mode = argv[1] if len(argv) > 1 else "h2"
    streams = int(argv[2]) if len(argv) > 2 else 10
    total = int(argv[3]) if len(argv) > 3 else 20000
    size = int(argv[4]) if len(argv) > 4 else 100
    rounds = int(argv[5]) if len(argv) > 5 else 8
    body = b"0" * size

    def once():
        return run_h2(streams, total, body) if mode == "h2" else run_h1(total, body)

    profile = os.environ.get("CPROFILE")
    if profile:
        import cProfile

        global _profile
        _profile = cProfile.Profile()
        once()
        _profile.dump_stats(profile)
        return
    results = [once()[0] for _ in range(rounds)]
    print(f"{mode} streams={streams} requests={total} body={size} speedups={speedups.enabled('direct_send')}: "
          f"best {min(results):.1f} us, median {statistics.median(results):.1f} us per request "
          f"({', '.join(f'{r:.1f}' for r in results)})")


if __name__ == "__main__":
    main(sys.argv)
