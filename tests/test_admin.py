"""
The admin site in memory: the overview built from a snapshot, the API,
``/metrics``, ``/healthz``, ``/ca.crt`` and basic auth, through a real
twisted.web Site driven by treq's StubTreq.
"""

from __future__ import annotations

import base64
import hashlib
import json

from treq.testing import StubTreq
from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from edge import metrics
from edge.admin.service import AdminService, routed_names
from edge.admin.view import Facts, overview
from edge.config import AdminConfig, Config, DNSConfig, EntryPoint
from edge.discovery.publisher import ProviderStatus, SnapshotPublisher
from edge.rules import Host
from edge.snapshot import (
    BackendService,
    BasicAuth,
    Node,
    Problem,
    RedirectScheme,
    Router,
    RouterTLS,
    Snapshot,
    Target,
)

SECRET_HASH = "$2y$05$abcdefghijklmnopqrstuuJ8Yt7n0n7C3mK0qQxv5b3xQyq7h9p2a"


def router(name, host, service, **kw) -> Router:
    return Router(
        name=name,
        rule=Host((host,)),
        rule_text=f"Host(`{host}`)",
        service=service,
        **kw,
    )


def target(tid, host, port=80) -> Target:
    return Target(id=tid, host=host, port=port, node_id="n1")


def sample_snapshot() -> Snapshot:
    return Snapshot.build(
        routers=[
            router(
                "web@docker",
                "web.example.test",
                "web@docker",
                middlewares=(BasicAuth(users=(f"alice:{SECRET_HASH}",)),),
            ),
            router("api@docker", "api.example.test", "api@docker", tls=RouterTLS(cert_resolver="internal")),
            router("ghost@docker", "ghost.example.test", "missing@docker", entry_points=("http",)),
            router("empty@docker", "empty.example.test", "empty@docker",
                   middlewares=(RedirectScheme(scheme="https", permanent=True),)),
        ],
        services=[
            BackendService("web@docker", targets=(target("t1", "10.0.1.5"), target("t2", "10.0.1.6"))),
            BackendService("api@docker", targets=(target("t3", "10.0.1.7", 8080),)),
            BackendService("empty@docker"),
        ],
        nodes=[Node("n1", "manager-1", "manager", "192.0.2.10", leader=True)],
        problems=[Problem("db@docker", "traefik.port is not a number", label="traefik.port")],
    )


CONFIG = Config(
    entrypoints=(EntryPoint("http", "tcp:80"), EntryPoint("https", "tcp:443", tls=True)),
    dns=DNSConfig(zone="swarm.test"),
)


class OverviewTests(SynchronousTestCase):
    def view(self, health=None, statuses=()) -> dict:
        health = health or {}
        facts = Facts(
            generation=7,
            now=100.0,
            statuses=statuses,
            health=lambda service, t: health.get((service, t.id)),
            dns_names=routed_names(sample_snapshot(), CONFIG),
        )
        return overview(sample_snapshot(), CONFIG, facts)

    def test_routers_show_rule_entrypoints_tls_and_service(self):
        routers = {r["name"]: r for r in self.view()["routers"]}
        api = routers["api@docker"]
        self.assertEqual(api["rule"], "Host(`api.example.test`)")
        self.assertEqual(api["hosts"], ["api.example.test"])
        self.assertEqual(api["entrypoints"], ["http", "https"])  # empty = every entry point
        self.assertTrue(api["tls"]["enabled"])
        self.assertEqual(api["tls"]["cert_resolver"], "internal")
        ghost = routers["ghost@docker"]
        self.assertEqual(ghost["entrypoints"], ["http"])
        self.assertFalse(ghost["tls"]["enabled"])
        self.assertEqual(ghost["status"], "error")
        self.assertEqual(
            routers["empty@docker"]["middlewares"],
            [{"type": "RedirectScheme", "detail": "to https (permanent)"}],
        )

    def test_target_health_comes_from_the_lookup(self):
        view = self.view(health={("web@docker", "t1"): True, ("web@docker", "t2"): False})
        web = next(s for s in view["services"] if s["name"] == "web@docker")
        self.assertEqual([t["health"] for t in web["targets"]], ["up", "down"])
        self.assertEqual(web["status"], "warning")
        self.assertEqual(web["routers"], ["web@docker"])
        api = next(s for s in view["services"] if s["name"] == "api@docker")
        self.assertEqual(api["targets"][0]["health"], "unknown")
        self.assertEqual(api["targets"][0]["url"], "http://10.0.1.7:8080")
        self.assertEqual(view["summary"]["targets_down"], 1)

    def test_problems_put_errors_first_and_name_the_cause(self):
        statuses = (ProviderStatus("docker", connected=False, last_sync=50.0, last_error="socket gone"),)
        view = self.view(health={("web@docker", "t1"): True, ("web@docker", "t2"): False}, statuses=statuses)
        levels = [p["level"] for p in view["problems"]]
        self.assertEqual(levels, sorted(levels, key=lambda l: l != "error"))
        messages = {(p["source"], p["message"]) for p in view["problems"]}
        self.assertIn(("ghost@docker", "routes to service 'missing@docker', which does not exist"), messages)
        self.assertIn(("empty@docker", "no targets: requests get 503"), messages)
        self.assertIn(("web@docker", "1 of 2 targets down: 1 failing the health check"), messages)
        self.assertIn(("db@docker", "traefik.port is not a number"), messages)
        self.assertIn(
            ("discovery docker", "not connected: socket gone (serving its last good state)"), messages
        )
        self.assertEqual(view["discovery"][0]["last_sync_age"], 50.0)

    def test_basic_auth_hashes_never_leave(self):
        text = json.dumps(self.view())
        self.assertNotIn(SECRET_HASH, text)
        self.assertNotIn("alice", text)
        routers = {r["name"]: r for r in self.view()["routers"]}
        self.assertEqual(routers["web@docker"]["middlewares"][0]["detail"], "1 user(s), realm 'edge'")

    def test_dns_names_point_routed_hosts_at_the_managers(self):
        names = {n["name"]: n for n in self.view()["dns"]["names"]}
        self.assertEqual(names["web.example.test"]["values"], ["192.0.2.10"])
        self.assertEqual(names["web.example.test"]["source"], "web@docker")
        self.assertEqual(names["managers.swarm.test"]["values"], ["192.0.2.10"])


class FakeTLS(Service):
    def __init__(self, pem):
        self.pem = pem

    def root_certificate_pem(self):
        return self.pem


def _auth(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class SiteTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.publisher = SnapshotPublisher(self.clock, debounce=0)
        self.publisher.report("docker", sample_snapshot())
        self.root = MultiService()
        self.admin = AdminService(CONFIG, self.publisher, self.clock)
        self.admin.setServiceParent(self.root)
        self.client = StubTreq(self.admin.site.resource)

    def get(self, path, headers=None):
        pending = self.client.get(f"http://admin.invalid{path}", headers=headers)
        self.client.flush()
        response = self.successResultOf(pending)
        pending = response.content()
        self.client.flush()
        body = self.successResultOf(pending)
        return response, body

    def test_overview_and_sections(self):
        response, body = self.get("/api/overview")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"])
        data = json.loads(body)
        self.assertEqual(data["generation"], 1)
        self.assertEqual(len(data["routers"]), 4)
        response, body = self.get("/api/routers")
        self.assertEqual([r["name"] for r in json.loads(body)], [r["name"] for r in data["routers"]])
        response, body = self.get("/api/nonsense")
        self.assertEqual(response.code, 404)
        self.assertIn("no API section", json.loads(body)["error"])

    def test_snapshot_is_the_discovery_encoding(self):
        response, body = self.get("/api/snapshot")
        data = json.loads(body)
        self.assertEqual([r["name"] for r in data["routers"]], sorted(r.name for r in sample_snapshot().routers))
        self.assertNotIn(SECRET_HASH, body.decode())
        web = next(r for r in data["routers"] if r["name"] == "web@docker")
        self.assertEqual(web["middlewares"][0]["users"], ["alice:<hidden>"])

    def test_health_from_the_http_layer_shows_in_the_api(self):
        metrics.target_health.labels("web@docker", "t1").set(1)
        metrics.target_health.labels("web@docker", "t2").set(0)
        self.addCleanup(metrics.target_health.remove, "web@docker", "t1")
        self.addCleanup(metrics.target_health.remove, "web@docker", "t2")
        _, body = self.get("/api/services")
        web = next(s for s in json.loads(body) if s["name"] == "web@docker")
        self.assertEqual([t["health"] for t in web["targets"]], ["up", "down"])

    def test_metrics_are_prometheus_text(self):
        self.publisher.report_error("docker", "connection refused")
        response, body = self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        text = body.decode()
        self.assertIn("edge_snapshot_generation 1.0", text)
        self.assertIn('edge_discovery_connected{provider="docker"} 0.0', text)
        self.assertIn('edge_discovery_last_sync_age_seconds{provider="docker"} 0.0', text)
        self.assertIn("# TYPE edge_http_request_duration_seconds histogram", text)
        self.assertIn("# TYPE edge_dns_queries_total counter", text)

    def test_healthz(self):
        response, body = self.get("/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["status"], "ok")

    def test_dashboard_page_and_assets(self):
        response, body = self.get("/")
        self.assertEqual(response.code, 200)
        self.assertIn(b'<script src="static/dashboard.js">', body)
        response, body = self.get("/static/dashboard.js")
        self.assertEqual(response.code, 200)
        self.assertIn(b'fetch("api/overview"', body)

    def test_ca_certificate_from_the_tls_service(self):
        response, _ = self.get("/ca.crt")
        self.assertEqual(response.code, 404)
        self.admin.front_ends.tls = FakeTLS(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        response, body = self.get("/ca.crt")
        self.assertEqual(response.code, 200)
        self.assertTrue(body.startswith(b"-----BEGIN CERTIFICATE-----"))

    def with_users(self, *users):
        config = Config(entrypoints=CONFIG.entrypoints, admin=AdminConfig(users=users))
        self.admin.reload(config)

    def test_basic_auth_guards_everything_but_healthz(self):
        sha = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
        self.with_users(f"ops:{{SHA}}{sha}")
        for path in ("/", "/api/overview", "/metrics", "/ca.crt"):
            response, _ = self.get(path)
            self.assertEqual(response.code, 401, path)
            self.assertIn("Basic", response.headers.getRawHeaders("www-authenticate")[0])
        response, _ = self.get("/api/overview", _auth("ops", "wrong"))
        self.assertEqual(response.code, 401)
        response, _ = self.get("/api/overview", _auth("nobody", "s3cret"))
        self.assertEqual(response.code, 401)
        response, _ = self.get("/api/overview", _auth("ops", "s3cret"))
        self.assertEqual(response.code, 200)
        response, _ = self.get("/healthz")
        self.assertEqual(response.code, 200)

    def test_bcrypt_users(self):
        import bcrypt

        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
        self.with_users(f"ops:{hashed}")
        self.assertEqual(self.get("/api/overview", _auth("ops", "pw"))[0].code, 200)
        self.assertEqual(self.get("/api/overview", _auth("ops", "px"))[0].code, 401)

    def test_reload_keeps_the_listening_address(self):
        config = Config(admin=AdminConfig(address="tcp:9999", users=("a:{SHA}x",)))
        self.admin.reload(config)
        self.assertEqual(self.admin.config.admin.address, CONFIG.admin.address)
        self.assertEqual(self.admin.config.admin.users, ("a:{SHA}x",))


class ServiceTreeTests(SynchronousTestCase):
    def test_empty_address_turns_the_admin_site_off(self):
        from edge.admin import make_admin_service

        config = Config(admin=AdminConfig(address=""))
        service = make_admin_service(config, SnapshotPublisher(Clock(), debounce=0), Clock())
        self.assertNotIsInstance(service, AdminService)
        self.assertEqual(list(service), [])

    def test_admin_listens_on_its_address(self):
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        config = Config(admin=AdminConfig(address="tcp:18099:interface=127.0.0.1"))
        service = AdminService(config, SnapshotPublisher(reactor, debounce=0), reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers], [(18099, "127.0.0.1")])

    def test_static_records_are_listed(self):
        from edge.config import DNSRecord

        config = Config(dns=DNSConfig(zone="", records=(DNSRecord("nas.home", "a", "192.0.2.5"),)))
        self.assertEqual(routed_names(Snapshot(), config), (("nas.home", "A", ("192.0.2.5",), "config"),))

    def test_managers_follow_the_dns_rule_through_an_election(self):
        """Without a DNS server the admin API lists the managers DNS would answer, by its own function."""
        from edge.dns.table import serving_managers
        from edge.snapshot import Node

        config = Config(dns=DNSConfig(zone="swarm.test", advertise=("192.0.2.99",)))
        # A leader election: every node reads unknown; DNS keeps the managers not known to be gone.
        election = Snapshot.build(nodes=[
            Node("m1", "m1", "manager", "192.0.2.1", state="unknown", reachability="reachable"),
            Node("m2", "m2", "manager", "192.0.2.2", state="unknown", reachability="unreachable"),
            Node("w1", "w1", "worker", "192.0.2.3", state="unknown"),
        ])
        # A drained manager and a stopped one (unreachable before it reads down) get no clients.
        settled = Snapshot.build(nodes=[
            Node("m1", "m1", "manager", "192.0.2.1"),
            Node("m2", "m2", "manager", "192.0.2.2", availability="drain"),
            Node("m3", "m3", "manager", "192.0.2.3", reachability="unreachable"),
        ])
        for snapshot, expected in ((election, ("192.0.2.1",)), (settled, ("192.0.2.1",))):
            rows = {(name, rtype): values for name, rtype, values, _ in routed_names(snapshot, config)}
            self.assertEqual(rows[("managers.swarm.test", "A")], expected)
            self.assertEqual(expected, tuple(n.address for n in serving_managers(snapshot)))


class LiveDNSTableTests(SynchronousTestCase):
    """The DNS part of the overview is what the DNS server's table answers."""

    def test_answers_come_from_the_dns_table(self):
        from edge.admin.dnsview import answers, candidate_names
        from edge.config import DNSRecord
        from edge.dns.table import build_table
        from edge.snapshot import PublishedPort, SwarmService

        snapshot = Snapshot.build(
            routers=sample_snapshot().routers,
            services=sample_snapshot().services,
            nodes=[
                Node("n1", "manager-1", "manager", "192.0.2.10", leader=True),
                Node("n2", "worker-1", "worker", "192.0.2.20"),
            ],
            swarm_services=[
                SwarmService("gitea", node_ids=("n2",), replicas_running=1,
                             published_ports=(PublishedPort(22, 2222, mode="host"),)),
            ],
        )
        config = Config(
            dns=DNSConfig(
                zone="swarm.test",
                records=(
                    DNSRecord("nas.home.test", "A", "192.0.2.5"),
                    DNSRecord("files.home.test", "CNAME", "nas.home.test"),
                    DNSRecord("v6.home.test", "AAAA", "2001:db8::7"),
                ),
            )
        )
        table, _ = build_table(snapshot, config.dns)
        rows = {(name, kind): (values, source) for name, kind, values, source in
                answers(table, candidate_names(snapshot, config))}
        self.assertEqual(rows[("web.example.test", "A")], (("192.0.2.10",), "web@docker"))
        self.assertEqual(rows[("managers.swarm.test", "A")], (("192.0.2.10",), "cluster zone"))
        self.assertEqual(rows[("workers.swarm.test", "A")], (("192.0.2.20",), "cluster zone"))
        # A service with a host-mode port: the nodes running it.
        self.assertEqual(rows[("gitea.swarm.test", "A")], (("192.0.2.20",), "service gitea"))
        self.assertEqual(rows[("nas.home.test", "A")], (("192.0.2.5",), "config"))
        self.assertEqual(rows[("files.home.test", "CNAME")][0], ("nas.home.test",))
        self.assertEqual(rows[("v6.home.test", "AAAA")][0], ("2001:db8::7",))

    def test_admin_service_reads_the_running_dns_service(self):
        from edge.dns.table import build_table

        class FakeDNS(Service):
            pass

        clock = Clock()
        publisher = SnapshotPublisher(clock, debounce=0)
        publisher.report("docker", sample_snapshot())
        root = MultiService()
        admin = AdminService(CONFIG, publisher, clock)
        admin.setServiceParent(root)
        dns_service = FakeDNS()
        dns_service.responder = type("R", (), {})()
        dns_service.responder.table, _ = build_table(sample_snapshot(), CONFIG.dns.__class__(zone="other.test"))
        dns_service.setServiceParent(root)
        admin.front_ends.dns = dns_service
        names = {n["name"]: n for n in admin.overview()["dns"]["names"]}
        # The running table's zone, not the config's, decides the cluster names.
        self.assertIn("web.example.test", names)
        self.assertEqual(names["managers.swarm.test"]["type"], "-")
        self.assertIn("no answer", names["managers.swarm.test"]["source"])


class PassiveHealthTests(SynchronousTestCase):
    def test_failed_connects_show_as_down_while_the_proxy_backs_off(self):
        from edge.http.balancer import HealthRegistry, target_key

        clock = Clock()
        publisher = SnapshotPublisher(clock, debounce=0)
        publisher.report("docker", sample_snapshot())
        root = MultiService()
        AdminService(CONFIG, publisher, clock).setServiceParent(root)
        http = Service()
        http.health = HealthRegistry(clock)
        http.setServiceParent(root)
        admin = list(root)[0]
        admin.front_ends.http = http
        http.health.connect_failed(target_key(target("t3", "10.0.1.7", 8080)))
        api = next(s for s in admin.overview()["services"] if s["name"] == "api@docker")
        self.assertEqual(api["targets"][0]["health"], "failing")
        clock.advance(60)  # the back-off is over: the proxy tries it again
        api = next(s for s in admin.overview()["services"] if s["name"] == "api@docker")
        self.assertEqual(api["targets"][0]["health"], "unknown")


class FrontEndWiringTests(SynchronousTestCase):
    def test_build_service_hands_the_admin_site_the_services_it_reads(self):
        """Passed in by the builder: nothing is found by walking the service tree."""
        import os
        import shutil
        import tempfile

        from edge.config import load as load_config
        from edge.dns.server import DNSService
        from edge.http.service import HTTPService
        from edge.tap import build_service
        from edge.tls.service import TLSService

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "edge.toml")
        with open(path, "w") as f:
            f.write(
                '[entrypoints.websecure]\naddress = "tcp:0:interface=127.0.0.1"\ntls = true\n'
                f'[tls]\ninternal_ca = true\nstate_dir = "{directory}/state"\n'
                '[dns]\nport = 5399\n[admin]\naddress = "tcp:0:interface=127.0.0.1"\n'
            )
        root = build_service(load_config(path), Clock())
        [admin] = [s for s in root if isinstance(s, AdminService)]
        self.assertIsInstance(admin.front_ends.dns, DNSService)
        self.assertIsInstance(admin.front_ends.tls, TLSService)
        self.assertIsInstance(admin.front_ends.http, HTTPService)
        self.assertTrue(admin.ca_certificate().startswith(b"-----BEGIN CERTIFICATE-----"))

    def test_a_service_in_the_tree_but_not_handed_over_is_not_read(self):
        root = MultiService()
        publisher = SnapshotPublisher(Clock(), debounce=0)
        admin = AdminService(CONFIG, publisher, Clock())
        admin.setServiceParent(root)
        FakeTLS(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").setServiceParent(root)
        self.assertIsNone(admin.ca_certificate())
