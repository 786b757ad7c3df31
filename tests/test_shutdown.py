"""edge.shutdown: the stop steps the HTTP and TCP services share."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from edge.shutdown import drain_within, stop_listening


class Port:
    def __init__(self, result=None):
        self.result = result
        self.stopped = 0

    def stopListening(self):
        self.stopped += 1
        return self.result


def test_stop_listening_waits_for_every_port_and_forgets_them():
    slow = defer.Deferred()
    ports = {"a": Port(), "b": Port(slow), "c": Port()}
    held = dict(ports)
    d = stop_listening(ports)
    assert [p.stopped for p in held.values()] == [1, 1, 1]  # all asked at once
    assert not d.called and ports  # b is still closing
    slow.callback(None)
    assert d.called and ports == {}


def test_a_port_that_fails_to_close_does_not_keep_the_others():
    ports = {"bad": Port(defer.fail(OSError("boom"))), "good": Port()}
    d = stop_listening(ports)
    assert d.called and ports == {}
    assert ports == {}


def test_drain_within_fires_true_when_everything_drains_in_time():
    clock = Clock()
    first, second = defer.Deferred(), defer.Deferred()
    d = drain_within(clock, 10.0, [first, second])
    clock.advance(4)
    first.callback(None)
    assert not d.called
    second.callback(None)
    assert d.result is True
    assert clock.getDelayedCalls() == []  # the grace timer is gone


def test_drain_within_gives_up_at_the_grace_and_cancels_what_is_left():
    clock = Clock()
    done, stuck = defer.Deferred(), defer.Deferred()
    d = drain_within(clock, 10.0, [done, stuck])
    done.callback(None)
    clock.advance(9.9)
    assert not d.called
    clock.advance(0.1)
    assert d.result is False
    assert stuck.called  # cancelled, so nothing waits on it any more
    assert clock.getDelayedCalls() == []


def test_drain_within_with_nothing_to_drain():
    clock = Clock()
    assert drain_within(clock, 10.0, []).result is True
    assert clock.getDelayedCalls() == []
