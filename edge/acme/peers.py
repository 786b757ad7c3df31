"""
Several edge instances, one ACME account and one certificate per name.

Each instance listens on ``[cluster] listen`` for sealed messages
(:mod:`edge.acme.seal`) from the others, found in ``[cluster] peers`` and
by resolving ``peers_dns`` (``tasks.<service>`` on the overlay: Docker's
own DNS, no Docker API write access).  Once a second every instance says
hello to every other; the answer carries the peer's name and the orders it
has in flight.  The **orderer** is the live instance with the lowest name;
only it orders, and only once every known instance has answered (or 15
rounds have passed without some of them).  Whatever it
publishes goes to every live peer: challenge answers (before the CA is
told to validate, so the CA may reach any instance), the account, and each
new certificate.  When the orderer stops answering for ``peer_timeout``
seconds the next lowest takes over and orders what is still missing; an
instance that (re)joins gets every certificate pushed to it.
"""

from __future__ import annotations

import socket
from io import BytesIO
from typing import Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from edge.acme.seal import MAX_MESSAGE, SealError, Sealer

__all__ = ["Cluster", "PeerClient", "PeerResource", "ReplicatedBoard"]

_REPLY = b" reply"
# Hello rounds before an instance may order: at least _SETTLE_ROUNDS, and
# until every known instance has answered once or _GRACE_ROUNDS have passed,
# so instances started together (or one after the other on a busy node)
# hear of each other first and the lowest name orders, no one else.
_SETTLE_ROUNDS = 3
_GRACE_ROUNDS = 15
# More instances than any swarm has managers; a bound on hellos per round.
_MAX_PEERS = 64


class PeerClient:
    """Sealed POSTs to other instances; every call ends within ``timeout``."""

    def __init__(self, reactor, sealer: Sealer, timeout: float = 2.0):
        self._reactor = reactor
        self._sealer = sealer
        self._timeout = timeout
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 2
        self._agent = Agent(reactor, connectTimeout=timeout, pool=pool)

    def post(self, address: str, path: str, value: dict) -> defer.Deferred:
        purpose = path.encode()
        body = FileBodyProducer(BytesIO(self._sealer.seal(purpose, value)))
        d = self._agent.request(
            b"POST", f"http://{address}{path}".encode(), Headers({b"content-type": [b"application/octet-stream"]}), body
        )

        def read(response):
            if response.code != 200:
                raise SealError(f"{address} answered {response.code}")
            return readBody(response)

        d.addCallback(read)
        d.addCallback(lambda data: self._sealer.open(purpose + _REPLY, data))
        d.addTimeout(self._timeout, self._reactor)
        return d


class PeerResource(resource.Resource):
    """``POST /v1/<kind>``: a sealed message in, a sealed answer out; anything else 403."""

    isLeaf = True
    _log = Logger()

    def __init__(self, sealer: Sealer, handlers: dict[str, Callable[[dict], dict]]):
        super().__init__()
        self._sealer = sealer
        self._handlers = handlers

    def render_POST(self, request) -> bytes:
        path = request.path
        handler = self._handlers.get(path.decode("ascii", "replace"))
        data = request.content.read(MAX_MESSAGE + 1)
        try:
            if handler is None:
                raise SealError("unknown path")
            value = self._sealer.open(path, data)
            reply = handler(value)
        except (SealError, KeyError, TypeError, ValueError) as e:
            peer = request.getClientAddress()
            self._log.warn(
                "Refused a cluster message from {peer} to {path}: {error}",
                peer=getattr(peer, "host", peer),
                path=path.decode("ascii", "replace"),
                error=e,
            )
            request.setResponseCode(403)
            return b""
        request.setHeader(b"content-type", b"application/octet-stream")
        return self._sealer.seal(path + _REPLY, reply)

    def render_GET(self, request) -> bytes:
        request.setResponseCode(403)
        return b""


def _resolve_all(name: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({info[4][0] for info in infos})


class Cluster(Service):
    """Who is alive, who orders, and sending to all of them."""

    _log = Logger()
    name = "acme-cluster"

    def __init__(
        self,
        me: str,
        peers: tuple[str, ...],
        client: PeerClient,
        reactor,
        peer_timeout: float = 3.0,
        peers_dns: str = "",
        peers_port: int = 8444,
        resolve: Callable[[str], defer.Deferred] | None = None,
    ):
        self.me = me
        self._static = tuple(peers)
        self._client = client
        self._reactor = reactor
        self._timeout = peer_timeout
        self._dns = peers_dns
        self._dns_port = peers_port
        self._resolve = resolve
        self._resolved: tuple[str, ...] = ()
        # address -> (name, last answer time, keys it is ordering)
        self._seen: dict[str, tuple[str, float, tuple]] = {}
        self.settled = False
        self._loop: LoopingCall | None = None
        self._round = 0
        # Set by the ACME service.
        self.on_peer_up: Callable[[str], None] = lambda address: None
        self.ordering_keys: Callable[[], list] = lambda: []

    # -- membership -------------------------------------------------------

    def addresses(self) -> tuple[str, ...]:
        return tuple(sorted(set(self._static) | set(self._resolved)))

    def live(self) -> dict[str, tuple[str, tuple]]:
        """address -> (name, keys in flight) of the peers that answered lately."""
        now = self._reactor.seconds()
        return {a: (n, k) for a, (n, t, k) in self._seen.items() if now - t <= self._timeout and n != self.me}

    def orderer(self) -> str:
        return min([self.me] + [name for name, _ in self.live().values()])

    def may_order(self) -> bool:
        return self.settled and self.orderer() == self.me

    def in_flight_elsewhere(self) -> set:
        found = set()
        for _, keys in self.live().values():
            found.update(keys)
        return found

    def hello(self, value: dict) -> dict:
        """A peer's hello: our name and what we are ordering."""
        return {"name": self.me, "ordering": self.ordering_keys()}

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(max(0.2, self._timeout / 3), now=True)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def _tick(self):
        self._round += 1
        if self._dns and self._resolve is not None and self._round % 10 == 1:
            d = self._resolve(self._dns)
            d.addCallback(
                lambda hosts: setattr(
                    self, "_resolved", tuple(f"{h}:{self._dns_port}" for h in hosts[:_MAX_PEERS])
                )
            )
            d.addErrback(lambda f: self._log.warn("Cannot resolve {name}: {error}", name=self._dns, error=f.value))
        before = set(self.live())
        calls = [self._hello(address, before) for address in self.addresses()]
        done = defer.DeferredList(calls, consumeErrors=True)
        if not self.settled and self._round >= _SETTLE_ROUNDS:
            done.addCallback(self._settle_if_heard)
        return done

    def _settle_if_heard(self, _):
        silent = [a for a in self.addresses() if a not in self._seen]
        if silent and self._round < _GRACE_ROUNDS:
            return
        self.settled = True
        self._log.info(
            "Cluster: {count} other instances answer; {orderer} orders ACME certificates",
            count=len(self.live()),
            orderer=self.orderer(),
        )

    def _hello(self, address: str, before: set) -> defer.Deferred:
        d = self._client.post(address, "/v1/hello", {"name": self.me})

        def answered(reply):
            name = str(reply["name"])
            keys = tuple(tuple(k) for k in reply.get("ordering", ()))
            self._seen[address] = (name, self._reactor.seconds(), keys)
            if name != self.me and address not in before:
                self._log.info("Cluster: {name} at {address} answers", name=name, address=address)
                self.on_peer_up(address)

        def failed(failure):
            if address in before:
                self._log.warn(
                    "Cluster: {address} stopped answering ({error})", address=address, error=failure.getErrorMessage()
                )
            return None

        d.addCallbacks(answered, failed)
        return d

    # -- sending ----------------------------------------------------------

    def broadcast(self, path: str, value: dict) -> defer.Deferred:
        """Send to every live peer; fires with the number that took it."""
        calls = [self._client.post(address, path, value) for address in self.live()]
        d = defer.DeferredList(calls, consumeErrors=True)
        d.addCallback(lambda results: sum(1 for ok, _ in results if ok))
        return d

    def send(self, address: str, path: str, value: dict) -> defer.Deferred:
        return self._client.post(address, path, value)


class ReplicatedBoard:
    """
    The ChallengeBoard interface for the ordering thread: each change is
    made locally and sent to every live peer before the call returns, so the
    CA can reach any instance.  Called from the worker thread only.
    """

    def __init__(self, board, cluster: Cluster, reactor):
        self._board = board
        self._cluster = cluster
        self._reactor = reactor

    def _send(self, value: dict) -> None:
        blockingCallFromThread(self._reactor, self._cluster.broadcast, "/v1/challenge", value)

    def add_http(self, name: str, token: str, key_authorization: str) -> None:
        self._board.add_http(name, token, key_authorization)
        self._send({"op": "add_http", "name": name, "token": token, "key_authorization": key_authorization})

    def remove_http(self, token: str) -> None:
        self._board.remove_http(token)
        self._send({"op": "remove_http", "token": token})

    def add_alpn(self, name: str, certified) -> None:
        from edge.acme.files import certificate_pem

        self._board.add_alpn(name, certified)
        self._send({"op": "add_alpn", "name": name, "pem": certificate_pem(certified).decode("ascii")})

    def remove_alpn(self, name: str) -> None:
        self._board.remove_alpn(name)
        self._send({"op": "remove_alpn", "name": name})


def apply_challenge(board, value: dict) -> dict:
    """A peer's challenge change, made on this instance's board."""
    from edge.tls.store import parse_bundle

    op = value["op"]
    if op == "add_http":
        board.add_http(str(value["name"]), str(value["token"]), str(value["key_authorization"]))
    elif op == "remove_http":
        board.remove_http(str(value["token"]))
    elif op == "add_alpn":
        certified = parse_bundle(str(value["pem"]).encode("ascii"), source="acme-tls/1 (peer)")
        board.add_alpn(str(value["name"]), certified)
    elif op == "remove_alpn":
        board.remove_alpn(str(value["name"]))
    else:
        raise ValueError(f"unknown challenge operation {op!r}")
    return {"ok": True}
