"""Config-file routes -> the "file" provider's snapshot."""

from twisted.internet.task import Clock

from edge.config import parse
from edge.discovery.publisher import SnapshotPublisher
from edge.discovery.static import StaticProvider, static_snapshot
from edge.rules import And, Host, PathPrefix
from edge.snapshot import (
    BasicAuth,
    IPAllowList,
    RedirectScheme,
    RouterTLS,
    StripPrefix,
    Target,
)


def _config(routes):
    return parse({"routes": routes}, source="edge.toml")


def _unchecked(routes):
    """Routes the config file would refuse, built in code: the provider still drops them."""
    import dataclasses

    from edge.config import Config, StaticRoute

    built = tuple(
        StaticRoute(name=name, **{k: tuple(v) if isinstance(v, list) else v for k, v in table.items()})
        for name, table in routes.items()
    )
    return dataclasses.replace(Config(), routes=built, source="edge.toml")


def test_routes_become_routers_and_services():
    config = _config(
        {
            "nas": {
                "rule": "Host(`nas.home.lan`) && PathPrefix(`/dsm`)",
                "backends": ["http://192.168.1.10:5000", "https://192.168.1.11"],
                "entry_points": ["https"],
                "priority": 7,
                "pass_host_header": False,
                "tls": True,
                "redirect_https": True,
                "strip_prefixes": ["/dsm"],
                "basic_auth": ["admin:$apr1$x$y"],
                "allow_ips": ["192.168.0.0/16"],
            },
        }
    )
    snapshot = static_snapshot(config)
    assert snapshot.problems == ()
    (router,) = snapshot.routers
    assert router.name == "nas@file"
    assert router.provider == "file" and router.source == "edge.toml"
    assert router.rule == And((Host(("nas.home.lan",)), PathPrefix(("/dsm",))))
    assert router.service == "nas@file"
    assert router.entry_points == ("https",)
    assert router.priority == 7
    assert router.tls == RouterTLS()
    assert router.middlewares == (
        IPAllowList(("192.168.0.0/16",)),
        RedirectScheme(scheme="https"),
        BasicAuth(("admin:$apr1$x$y",)),
        StripPrefix(("/dsm",)),
    )
    service = snapshot.service("nas@file")
    assert service is not None and service.pass_host_header is False
    assert service.targets == (
        Target(id="http://192.168.1.10:5000", host="192.168.1.10", port=5000),
        Target(id="https://192.168.1.11", host="192.168.1.11", port=443, scheme="https"),
    )


def test_v1_rule_is_accepted_and_its_strip_kept():
    snapshot = static_snapshot(
        _config({"old": {"rule": "Host:old.lan;PathPrefixStrip:/o", "backends": ["http://[::1]:81"]}})
    )
    (router,) = snapshot.routers
    assert router.rule == And((Host(("old.lan",)), PathPrefix(("/o",))))
    assert router.middlewares == (StripPrefix(("/o",)),)
    (service,) = snapshot.services
    assert service.targets == (Target(id="http://[::1]:81", host="::1", port=81),)
    assert service.targets[0].url == "http://[::1]:81"


def test_a_broken_rule_drops_only_its_route():
    snapshot = static_snapshot(
        _unchecked(
            {
                "good": {"rule": "Host(`good.lan`)", "backends": ["http://127.0.0.1:8000"]},
                "bad": {"rule": "Host(`bad.lan`", "backends": ["http://127.0.0.1:8001"]},
            }
        )
    )
    assert [r.name for r in snapshot.routers] == ["good@file"]
    assert [s.name for s in snapshot.services] == ["good@file"]
    (problem,) = snapshot.problems
    assert problem.level == "error"
    assert problem.source == "edge.toml"
    assert problem.label == "routes.bad.rule"
    assert "route bad" in problem.message and "position" in problem.message


def test_a_backend_url_with_a_path_is_refused():
    snapshot = static_snapshot(
        _config({"r": {"rule": "Host(`r`)", "backends": ["http://h:1/sub", "http://h:2"]}})
    )
    (service,) = snapshot.services
    assert [t.port for t in service.targets] == [2]
    (problem,) = snapshot.problems
    assert problem.label == "routes.r.backends" and "/sub" in problem.message


class _Recorder:
    def __init__(self):
        self.reports = []

    def report(self, provider, snapshot):
        self.reports.append((provider, snapshot))


def test_provider_reports_on_start_and_reload():
    first = _config({"a": {"rule": "Host(`a`)", "backends": ["http://127.0.0.1:1"]}})
    second = _config({"b": {"rule": "Host(`b`)", "backends": ["http://127.0.0.1:2"]}})
    publisher = _Recorder()
    provider = StaticProvider(first, publisher)
    provider.reload(first)  # not running yet: nothing reported
    assert publisher.reports == []
    provider.startService()
    assert publisher.reports == [("file", static_snapshot(first))]
    provider.reload(second)
    assert publisher.reports[-1] == ("file", static_snapshot(second))
    assert [r.name for r in publisher.reports[-1][1].routers] == ["b@file"]
    provider.stopService()


def test_provider_feeds_a_real_publisher():
    clock = Clock()
    publisher = SnapshotPublisher(clock, debounce=0.2)
    seen = []
    publisher.subscribe(seen.append)
    config = _config({"a": {"rule": "Host(`a.lan`)", "backends": ["http://127.0.0.1:1"]}})
    StaticProvider(config, publisher).startService()
    clock.advance(0.2)
    assert [r.name for r in seen[-1].routers] == ["a@file"]
    assert dict(seen[-1].host_names()).keys() == {"a.lan"}
    assert publisher.status("file").connected


def test_bad_basic_auth_drops_the_route_and_bad_prefix_is_ignored():
    snapshot = static_snapshot(
        _unchecked(
            {
                "locked": {"rule": "Host(`l`)", "backends": ["http://h:1"], "basic_auth": ["nohash"]},
                "strip": {"rule": "Host(`s`)", "backends": ["http://h:2"], "strip_prefixes": ["x", "/y"]},
            }
        )
    )
    assert [r.name for r in snapshot.routers] == ["strip@file"]
    assert snapshot.routers[0].middlewares == (StripPrefix(("/y",)),)
    assert {(p.label, p.level) for p in snapshot.problems} == {
        ("routes.locked.basic_auth", "error"),
        ("routes.strip.strip_prefixes", "error"),
    }
