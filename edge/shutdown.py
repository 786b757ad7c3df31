"""
How a front end stops: its listening ports first, then what is in flight
within a grace.

The HTTP and TCP services share the first step, the HTTP service the
second: connections are asked to finish, and those still busy when
``[http] shutdown_grace`` runs out are the caller's to close, so a stuck
client never holds the shutdown up for longer than the grace.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet import defer

__all__ = ["stop_listening", "drain_within"]


@defer.inlineCallbacks
def stop_listening(ports: dict):
    """Close every port in ``ports`` at once and forget them; fires when all are closed.

    A port that fails to close does not keep the others open.
    """
    yield defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports.values()])
    ports.clear()


@defer.inlineCallbacks
def drain_within(reactor, grace: float, drains: Iterable[defer.Deferred]):
    """Wait for every one of ``drains``, ``grace`` seconds at most.

    Fires with True when all of them fired in time, False when the grace ran
    out first; those still waiting are then cancelled.
    """
    drained = defer.DeferredList(list(drains), consumeErrors=True)
    late: list[bool] = []

    def give_up() -> None:
        late.append(True)
        drained.cancel()

    timer = reactor.callLater(grace, give_up)
    try:
        yield drained
    except defer.CancelledError:
        pass
    if timer.active():
        timer.cancel()
    return not late
