"""ACMEService with a fake CA client: what is ordered, when, and what is served meanwhile."""

import datetime

from twisted.internet.task import Clock

from edge.acme.challenges import ChallengeBoard
from edge.acme.client import Issued, OrderError
from edge.acme.files import ResolverFiles
from edge.acme.service import ACMEService
from edge.config import ACMEResolver, parse
from edge.discovery.rule_parser import parse_v2
from edge.discovery.static import static_snapshot
from edge.snapshot import Router, RouterTLS, Snapshot
from edge.tls.ca import create_ca

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 6, 1, tzinfo=UTC)


class FakePublisher:
    def __init__(self):
        self.subscribers = []

    def subscribe(self, callback):
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def publish(self, snapshot):
        for callback in list(self.subscribers):
            callback(snapshot)


class FakeClient:
    """Issues from a throw-away CA, or fails with ``error``; counts orders."""

    def __init__(self, clock_now, lifetime=datetime.timedelta(days=90)):
        self.ca = create_ca()
        self.now = clock_now
        self.lifetime = lifetime
        self.orders = []
        self.error = None

    def order(self, names):
        self.orders.append(names)
        if self.error is not None:
            raise self.error
        return Issued(self.ca.issue(names, self.lifetime, now=self.now()))


def _router(name, host, resolver="le"):
    rule = f"Host(`{host}`)"
    return Router(name=name, rule=parse_v2(rule), rule_text=rule, service="s", tls=RouterTLS(cert_resolver=resolver))


def _service(tmp_path):
    clock = Clock()
    now = lambda: START + datetime.timedelta(seconds=clock.seconds())  # noqa: E731
    client = FakeClient(now)
    publisher = FakePublisher()
    resolvers = {"le": ACMEResolver("le")}
    service = ACMEService(
        resolvers, {"le": client}, {"le": ResolverFiles(str(tmp_path), "le")}, publisher, clock,
        ChallengeBoard(), pool=None, now=now, retry_base=60, retry_cap=600,
    )
    service.startService()
    return service, client, publisher, clock


def test_orders_once_for_a_routed_name_and_serves_it(tmp_path):
    service, client, publisher, clock = _service(tmp_path)
    assert service.lookup("a.example.com") is None
    publisher.publish(Snapshot.build(routers=[_router("a", "a.example.com")]))
    assert client.orders == [("a.example.com",)]
    served = service.lookup("a.example.com")
    assert served is not None and "a.example.com" in served.names
    assert service.lookup("b.example.com") is None  # never ordered: not routed
    for _ in range(5):
        clock.advance(1)
        publisher.publish(Snapshot.build(routers=[_router("a", "a.example.com")]))
    assert client.orders == [("a.example.com",)]
    (row,) = service.certificates()
    assert row["names"] == ["a.example.com"] and row["last_error"] == "" and row["not_after"]


def test_a_saved_certificate_is_reused_after_a_restart(tmp_path):
    service, client, publisher, _ = _service(tmp_path)
    publisher.publish(Snapshot.build(routers=[_router("a", "a.example.com")]))
    service.stopService()
    again, client2, publisher2, _ = _service(tmp_path)
    publisher2.publish(Snapshot.build(routers=[_router("a", "a.example.com")]))
    assert client2.orders == []
    assert again.lookup("a.example.com") is not None


def test_failure_backs_off_and_keeps_the_working_certificate(tmp_path):
    service, client, publisher, clock = _service(tmp_path)
    client.lifetime = datetime.timedelta(days=3)
    routed = Snapshot.build(routers=[_router("a", "a.example.com")])
    publisher.publish(routed)
    first = service.lookup("a.example.com")
    assert first is not None
    # Renewal falls due a third of the lifetime before expiry (after 2 days).
    client.error = OrderError("rateLimited: too many certificates", retry_after=300)
    clock.advance(2 * 86400 + 1)
    service.tick()
    assert len(client.orders) == 2
    assert service.lookup("a.example.com") is first
    (row,) = service.certificates()
    assert row["last_error"] == "rateLimited: too many certificates"
    clock.advance(299)
    service.tick()
    assert len(client.orders) == 2  # Retry-After 300 s honoured
    clock.advance(2)
    service.tick()
    assert len(client.orders) == 3
    client.error = None
    clock.advance(299)  # second failure: 120 s doubled would be due, Retry-After 300 wins
    service.tick()
    assert len(client.orders) == 3
    clock.advance(1)
    service.tick()
    assert len(client.orders) == 4
    assert service.lookup("a.example.com") is not first
    assert service.certificates()[0]["last_error"] == ""


def test_an_unrouted_name_stops_being_ordered(tmp_path):
    service, client, publisher, clock = _service(tmp_path)
    client.error = OrderError("connection refused")
    publisher.publish(Snapshot.build(routers=[_router("a", "a.example.com")]))
    assert len(client.orders) == 1
    publisher.publish(Snapshot.build())
    clock.advance(3600)
    service.tick()
    assert len(client.orders) == 1
    assert service.certificates() == []


def test_static_route_cert_resolver_orders(tmp_path):
    config = parse({
        "acme": {"le": {}},
        "routes": {"r": {"rule": "Host(`r.example.com`)", "backends": ["http://127.0.0.1:1"], "cert_resolver": "le"}},
    })
    service, client, publisher, _ = _service(tmp_path)
    publisher.publish(static_snapshot(config))
    assert client.orders == [("r.example.com",)]


class FakeCluster:
    def __init__(self, orderer=False):
        self.orderer = orderer
        self.sent = []
        self.elsewhere = set()

    def may_order(self):
        return self.orderer

    def in_flight_elsewhere(self):
        return self.elsewhere

    def broadcast(self, path, value):
        self.sent.append((path, value))

    def send(self, address, path, value):
        self.sent.append((address, path, value))


def _clustered(tmp_path, orderer):
    clock = Clock()
    now = lambda: START + datetime.timedelta(seconds=clock.seconds())  # noqa: E731
    client = FakeClient(now)
    publisher = FakePublisher()
    cluster = FakeCluster(orderer)
    service = ACMEService(
        {"le": ACMEResolver("le")}, {"le": client}, {"le": ResolverFiles(str(tmp_path), "le")}, publisher, clock,
        ChallengeBoard(), pool=None, now=now, cluster=cluster,
    )
    service.startService()
    return service, client, publisher, cluster


def test_only_the_orderer_orders_and_it_sends_what_it_got(tmp_path):
    follower, follower_client, follower_pub, _ = _clustered(tmp_path / "f", orderer=False)
    orderer, orderer_client, orderer_pub, cluster = _clustered(tmp_path / "o", orderer=True)
    routed = Snapshot.build(routers=[_router("a", "a.example.com")])
    follower_pub.publish(routed)
    orderer_pub.publish(routed)
    assert follower_client.orders == [] and orderer_client.orders == [("a.example.com",)]
    ((path, message),) = cluster.sent
    assert path == "/v1/certificate" and message["names"] == ["a.example.com"]
    assert follower.accept_certificate(message) == {"kept": True}
    assert follower.lookup("a.example.com").not_after == orderer.lookup("a.example.com").not_after
    assert follower.accept_certificate(message) == {"kept": False}  # not newer
    # A restarted follower finds it on disk.
    again, client, publisher, _ = _clustered(tmp_path / "f", orderer=True)
    publisher.publish(routed)
    assert client.orders == [] and again.lookup("a.example.com") is not None


def test_a_certificate_that_does_not_cover_its_names_is_refused(tmp_path):
    import pytest

    follower, _, publisher, _ = _clustered(tmp_path / "f", orderer=False)
    orderer, _, orderer_pub, cluster = _clustered(tmp_path / "o", orderer=True)
    orderer_pub.publish(Snapshot.build(routers=[_router("a", "a.example.com")]))
    message = dict(cluster.sent[0][1], names=["bank.example.com"])
    with pytest.raises(ValueError):
        follower.accept_certificate(message)
    assert follower.lookup("bank.example.com") is None


def test_an_order_in_flight_at_another_instance_is_left_alone(tmp_path):
    service, client, publisher, cluster = _clustered(tmp_path, orderer=True)
    cluster.elsewhere = {("le", "a.example.com")}
    publisher.publish(Snapshot.build(routers=[_router("a", "a.example.com")]))
    assert client.orders == []
    cluster.elsewhere = set()
    service.tick()
    assert client.orders == [("a.example.com",)]
