"""Clients refused by ``dns.allow_recursion`` are logged, throttled, with a hint for the usual surprises."""

from __future__ import annotations

import dns.rcode
from twisted.logger import globalLogPublisher

from tests.test_dns_responder import Rig


def _capture(test_case_cleanup):
    events = []
    globalLogPublisher.addObserver(events.append)
    test_case_cleanup(lambda: globalLogPublisher.removeObserver(events.append))
    return events


def _refusals(events):
    return [e for e in events if "Refused to forward" in (e.get("log_format") or "")]


def test_refused_clients_are_logged_once_per_interval_with_a_hint(request):
    rig = Rig()
    events = _capture(request.addfinalizer)
    assert rig.ask("www.example.org", client="100.101.102.103").rcode() == dns.rcode.REFUSED
    (first,) = _refusals(events)
    assert first["client"] == "100.101.102.103" and first["name"] == "www.example.org"
    assert "Tailscale" in first["hint"] and "100.64.0.0/10" in first["hint"]
    for _ in range(50):  # a flood costs no more lines within the interval
        rig.ask("www.example.org", client="100.101.102.103")
    assert len(_refusals(events)) == 1
    rig.clock.advance(rig.responder.REFUSED_LOG_INTERVAL)
    rig.ask("www.example.org", client="2a01:4f8::1")
    second = _refusals(events)[1]
    assert second["count"] == 51 and second["total"] == 52
    assert "global IPv6" in second["hint"]


def test_other_refused_clients_carry_no_hint(request):
    rig = Rig()
    events = _capture(request.addfinalizer)
    rig.ask("www.example.org", client="203.0.113.9")
    (event,) = _refusals(events)
    assert event["hint"] == ""
