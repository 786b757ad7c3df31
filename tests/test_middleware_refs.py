"""
The config file's ``[middlewares]`` and references across providers
(``name@file``, ``name@docker``, a plain name): built by the labels' own code,
resolved as Traefik does, refused clearly when they cannot be, and followed on
reload; and the same through a real ``twistd edge`` on the real test swarm
(the last test).
"""

from __future__ import annotations

import tomllib

import pytest
from twisted.internet import task
from twisted.logger import Logger, formatEvent

from edge.config import ConfigError, parse
from edge.discovery.build import DockerState, build_snapshot
from edge.discovery.labels import read_labels
from edge.discovery.publisher import SnapshotPublisher
from edge.discovery.references import FileMiddlewares, file_middlewares
from edge.discovery.service import make_discovery_service
from edge.discovery.static import static_snapshot
from edge.config import DockerConfig
from edge.snapshot import BasicAuth, Headers


class FakeSource:
    """The Docker provider's source: one fixed state, counted syncs, a watch that stays open."""

    def __init__(self, state):
        self.state = state
        self.syncs = 0

    def start(self):
        pass

    def stop(self):
        pass

    def sync(self):
        from twisted.internet.defer import succeed

        from edge.discovery.build import SelfFacts

        self.syncs += 1
        return succeed((self.state, SelfFacts()))

    def poll(self):
        from twisted.internet.defer import Deferred

        return Deferred()

    def watch(self, on_event):
        from twisted.internet.defer import Deferred, succeed

        class Watch:
            ended = Deferred()

            def close(self):
                pass

        return succeed(Watch())

USER = "test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/"  # htpasswd -nb test test
OTHER = "other:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/"


def config(text: str):
    return parse(tomllib.loads(text), "edge.toml")


FILE = config(f"""
[middlewares.auth.basicAuth]
users = ["{USER}"]
[middlewares.secure.headers]
frameDeny = true
[middlewares.secure.headers.customResponseHeaders]
X-From-File = "yes"
[middlewares.both.chain]
middlewares = ["auth", "secure@file"]
""")
AVAILABLE = file_middlewares(FILE)[0]


def _router(refs: str, shared=None, **extra):
    labels = {
        "traefik.http.routers.r.rule": "Host(`r.test`)",
        "traefik.http.routers.r.middlewares": refs,
        **extra,
    }
    read = read_labels("app", labels, shared_middlewares={**AVAILABLE, **(shared or {})})
    errors = [p.message for p in read.problems if p.level == "error"]
    return (read.routers[0].middlewares if read.routers else None), errors


# -- the same builder as labels ---------------------------------------------------------


@pytest.mark.parametrize(
    "toml, labels",
    [
        (f'[middlewares.m.basicAuth]\nusers = ["{USER}", "{OTHER}"]\nrealm = "lab"\nremoveHeader = true',
         {"basicauth.users": f"{USER},{OTHER}", "basicauth.realm": "lab", "basicauth.removeheader": "true"}),
        ('[middlewares.m.forwardAuth]\naddress = "http://auth.lan:9091/verify"\ntrustForwardHeader = true\n'
         'authResponseHeaders = ["Remote-User", "Remote-Groups"]',
         {"forwardauth.address": "http://auth.lan:9091/verify", "forwardauth.trustforwardheader": "true",
          "forwardauth.authresponseheaders": "Remote-User,Remote-Groups"}),
        ('[middlewares.m.ipAllowList]\nsourceRange = ["192.168.1.0/24", "10.0.0.1"]\n'
         '[middlewares.m.ipAllowList.ipStrategy]\ndepth = 2',
         {"ipallowlist.sourcerange": "192.168.1.0/24,10.0.0.1", "ipallowlist.ipstrategy.depth": "2"}),
        ('[middlewares.m.headers]\nstsSeconds = 31536000\n[middlewares.m.headers.customRequestHeaders]\n'
         'X-Drop = ""\nX-Script-Name = "/app"',
         {"headers.stsseconds": "31536000", "headers.customrequestheaders.X-Script-Name": "/app",
          "headers.customrequestheaders.X-Drop": ""}),
        ('[middlewares.m.redirectScheme]\nscheme = "https"\npermanent = true',
         {"redirectscheme.scheme": "https", "redirectscheme.permanent": "true"}),
        ('[middlewares.m.stripPrefix]\nprefixes = ["/a", "/b"]', {"stripprefix.prefixes": "/a,/b"}),
        ('[middlewares.m.rateLimit]\naverage = 10\nburst = 20', {"ratelimit.average": "10", "ratelimit.burst": "20"}),
    ],
)
def test_a_file_middleware_is_what_the_same_labels_build(toml, labels):
    from_file = file_middlewares(config(toml))[0]
    via_file, errors = _router("m@file", shared=from_file)
    assert errors == []
    own = {f"traefik.http.middlewares.m.{k}": v for k, v in labels.items()}
    via_labels, errors = _router("m", **own)
    assert errors == []
    assert via_file == via_labels and len(via_file) == 1


# -- resolution -------------------------------------------------------------------------


def test_name_at_file_from_a_label_uses_the_files():
    used, errors = _router("auth@file,secure@file")
    assert errors == []
    assert used[0] == BasicAuth(users=(USER,))
    assert isinstance(used[1], Headers) and used[1].custom_response == (("X-From-File", "yes"),)


def test_a_file_chain_from_a_label_expands_to_the_files_members():
    used, errors = _router("both@file")
    assert errors == [] and [type(m) for m in used] == [BasicAuth, Headers]


def test_a_plain_name_is_the_routers_own_provider_not_the_file():
    # "auth" on a Docker router is the labels' auth, even though the file defines one.
    used, errors = _router(
        "auth", **{"traefik.http.middlewares.auth.basicauth.users": OTHER}
    )
    assert errors == [] and used == (BasicAuth(users=(OTHER,)),)
    used, errors = _router("auth@file", **{"traefik.http.middlewares.auth.basicauth.users": OTHER})
    assert used == (BasicAuth(users=(USER,)),)


def test_name_at_docker_reaches_another_services_middleware():
    used, errors = _router("auth@docker", shared={"auth@docker": BasicAuth(users=(OTHER,))})
    assert errors == [] and used == (BasicAuth(users=(OTHER,)),)


def test_the_provider_name_is_case_insensitive():
    used, errors = _router("auth@File")
    assert errors == [] and used == (BasicAuth(users=(USER,)),)


@pytest.mark.parametrize(
    "refs, why",
    [
        ("missing@file", "'missing@file' is not defined in the config file's [middlewares]"),
        ("auth@internal", "names provider 'internal', which edge does not have (its providers: docker, file)"),
        ("auth@kubernetescrd", "names provider 'kubernetescrd'"),
        ("secure@file,nowhere", "'nowhere' is not defined in this service's labels or another service's"),
        ("nowhere@docker", "'nowhere@docker' is not defined in this service's labels or another service's"),
    ],
)
def test_an_unknown_name_or_provider_drops_the_router_with_the_reason(refs, why):
    used, errors = _router(refs)
    assert used is None  # dropped: never served without the middleware it asks for
    assert any(why in e and "router dropped" in e for e in errors), errors


def test_in_the_docker_snapshot_a_missing_file_middleware_is_a_problem_and_no_router():
    state = _container_state()
    docker = DockerConfig(url="unix:///x.sock")
    with_file = build_snapshot(state, docker, file_middlewares=AVAILABLE)
    (router,) = with_file.routers
    assert router.middlewares == (BasicAuth(users=(USER,)),)
    without = build_snapshot(state, docker)
    assert without.routers == ()
    assert any("auth@file" in p.message and p.level == "error" for p in without.problems)


# -- static routes --------------------------------------------------------------------------


def test_a_static_routes_plain_name_is_the_files_middleware_applied_after_its_own_options():
    snap = static_snapshot(config(
        FILE_TEXT + '[routes.nas]\nrule = "Host(`nas.home`)"\nbackends = ["http://127.0.0.1:5000"]\n'
        'allow_ips = ["127.0.0.1"]\nmiddlewares = ["both"]\n'
    ))
    (router,) = snap.routers
    assert [type(m).__name__ for m in router.middlewares] == ["IPAllowList", "BasicAuth", "Headers"]


# -- the config file refuses what would not work --------------------------------------------


FILE_TEXT = f"""
[middlewares.auth.basicAuth]
users = ["{USER}"]
[middlewares.secure.headers]
frameDeny = true
[middlewares.both.chain]
middlewares = ["auth", "secure@file"]
"""


@pytest.mark.parametrize(
    "text, message",
    [
        ('[middlewares.a.basicAuth]\nusers = ["justaname"]',
         "edge.toml: middlewares.a.basicAuth.users: expected user:hash entries, got 'justaname'"),
        ('[middlewares.a.basicAuth]\nusers = ["x:y"]\nuserz = "x"', "middlewares.a.basicAuth.userz: unknown option"),
        ('[middlewares.a.fancy]\nx = 1', "middlewares.a.fancy.x: not supported by edge (the fancy middleware)"),
        ('[middlewares.a.forwardAuth]\naddress = "auth:4181"', "middlewares.a.forwardAuth.address"),
        ('[middlewares.a.chain]\nmiddlewares = ["b"]', "'b@file' (in chain 'a@file') is not defined in [middlewares]"),
        ('[middlewares.a.chain]\nmiddlewares = ["a"]', "chain 'a@file' includes itself"),
        ('[middlewares.a.chain]\nmiddlewares = ["b@docker"]', "a chain here names only [middlewares] of this file"),
        ('[middlewares.a]\nusers = 1', "middlewares.a.users: expected a table of the users middleware's options"),
        ('[middlewares.a.basicAuth]\nusers = ["a:b", "c,d:e"]', "list items cannot hold a comma"),
        ('[http.middlewares.a.basicAuth]\nusers = ["a:b"]', "edge's middlewares are [middlewares.NAME.KIND] tables"),
        ('[routes.r]\nrule = "Host(`a.b`)"\nbackends = ["http://a"]\nmiddlewares = ["auth@internal"]',
         "routes.r.middlewares: router r: middleware 'auth@internal' names provider 'internal'"),
        ('[routes.r]\nrule = "Host(`a.b`)"\nbackends = ["http://a"]\nmiddlewares = ["auth@docker"]',
         "routes of the config file use only its own [middlewares]"),
        ('[routes.r]\nrule = "Host(`a.b`)"\nbackends = ["http://a"]\nmiddlewares = ["nope"]',
         "'nope' is not defined in [middlewares]"),
    ],
)
def test_a_middleware_that_would_not_work_is_a_configuration_error(text, message):
    with pytest.raises(ConfigError) as caught:
        config(text)
    assert message in str(caught.value)
    assert "router dropped" not in str(caught.value)  # the whole file is refused, not one router


# -- reload ---------------------------------------------------------------------------------


def _container_state():
    container = {
        "Id": "c1", "Names": ["/app"], "State": "running", "Status": "Up 5 minutes",
        "HostConfig": {"NetworkMode": "default"}, "Ports": [{"PrivatePort": 80, "Type": "tcp"}],
        "NetworkSettings": {"Networks": {"bridge": {"NetworkID": "n1", "IPAddress": "10.0.0.7"}}},
        "Labels": {"traefik.http.routers.app.rule": "Host(`app.test`)",
                   "traefik.http.routers.app.middlewares": "auth@file"},
    }
    return DockerState(containers_read=True, containers=[container])


def test_a_reloaded_file_rebuilds_docker_routers_with_its_middlewares():
    clock = task.Clock()
    publisher = SnapshotPublisher(clock, debounce=0)
    source = FakeSource(_container_state())
    first = config('[docker]\nurl = "unix:///fake.sock"\n' + FILE_TEXT)
    tree = make_discovery_service(first, publisher, clock, docker_source=source)
    docker = next(s for s in tree if type(s).__name__ == "DockerProvider")
    logged: list[dict] = []
    docker._log = Logger(observer=logged.append)
    tree.startService()
    try:
        (router,) = [r for r in publisher.current.routers if r.provider == "docker"]
        assert router.middlewares == (BasicAuth(users=(USER,)),)
        static = next(s for s in tree if type(s).__name__ == "StaticProvider")
        # auth now lists another user: the Docker router follows without a Docker event.
        changed = config(f'[docker]\nurl = "unix:///fake.sock"\n[middlewares.auth.basicAuth]\nusers = ["{OTHER}"]\n')
        syncs = source.syncs
        static.reload(changed)
        (router,) = [r for r in publisher.current.routers if r.provider == "docker"]
        assert router.middlewares == (BasicAuth(users=(OTHER,)),)
        assert source.syncs == syncs  # built again from the last read, not read again
        # auth removed: the router is dropped (never served without it) and says why.
        static.reload(config('[docker]\nurl = "unix:///fake.sock"\n'))
        assert [r for r in publisher.current.routers if r.provider == "docker"] == []
        assert any("auth@file" in p.message for p in publisher.current.problems)
        # ... and the log says so once, not at every build.
        docker.rebuild()
        said = [formatEvent(e) for e in logged if "auth@file" in formatEvent(e)]
        assert len(said) == 1 and "router dropped" in said[0]
        assert [e["log_level"].name for e in logged if "auth@file" in formatEvent(e)] == ["error"]
    finally:
        tree.stopService()


def test_file_middlewares_call_their_listeners_only_on_a_change():
    calls = []
    held = FileMiddlewares(AVAILABLE)
    held.listen(lambda: calls.append(1))
    held.replace(dict(AVAILABLE))
    assert calls == []
    held.replace({})
    assert calls == [1] and held.current == {}


# -- end to end: a labelled service on the real test swarm, a real edge ----------------------


@pytest.mark.swarm
def test_labels_use_the_config_files_middlewares_through_a_real_edge(swarm, tmp_path, unique):
    import base64
    import signal

    import requests

    from tests.ports import free_port
    from tests.swarmkit import twistd_edge, wait_for

    port, admin = free_port(), free_port()
    head = (
        f'[entrypoints.http]\naddress = "tcp:{port}:interface=127.0.0.1"\n'
        f'[dns]\nenabled = false\n[admin]\naddress = "tcp:{admin}:interface=127.0.0.1"\n'
        f'[docker]\nurl = "{swarm.url}"\nbackend_addressing = "published"\ndebounce = 0.05\n'
        'resync_interval = 30.0\n'
    )
    tag = '[middlewares.tag.headers.customResponseHeaders]\nX-From-File = "yes"\n'

    def auth(user):
        return f'[middlewares.auth.basicAuth]\nusers = ["{user}"]\n'

    name = f"mwref-{unique}"
    host = f"{name}.swarm.test"
    good = {"Authorization": "Basic " + base64.b64encode(b"test:test").decode()}
    other = {"Authorization": "Basic " + base64.b64encode(b"other:test").decode()}

    def get(**headers):
        try:
            return requests.get(f"http://127.0.0.1:{port}/", headers={"Host": host, **headers}, timeout=5)
        except requests.RequestException:
            return None

    def status(**headers):
        r = get(**headers)
        return r.status_code if r is not None else None

    def problems():
        return requests.get(f"http://127.0.0.1:{admin}/api/problems", timeout=5).text

    with twistd_edge(head + auth(USER) + tag, tmp_path) as process:
        config_path = tmp_path / "edge.toml"
        log = tmp_path / "edge.log"

        def reload(text):
            config_path.write_text(text)
            before = log.read_text().count("Configuration reload")
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: log.read_text().count("Configuration reload") > before, 30, "the reload logged")

        created = swarm.create_web_service(name, replicas=1, labels={
            "traefik.enable": "true",
            f"traefik.http.routers.{name}.rule": f"Host(`{host}`)",
            f"traefik.http.routers.{name}.middlewares": "auth@file,tag@file",
            f"traefik.http.routers.{name}-x.rule": f"Host(`x-{host}`)",
            f"traefik.http.routers.{name}-x.middlewares": "auth@internal",
            f"traefik.http.routers.{name}-x.service": name,
            f"traefik.http.services.{name}.loadbalancer.server.port": "80",
        })
        try:
            swarm.wait_running(name, 1, 90)
            # Bounded waits for discovery and the task; what is asserted is the answer.
            wait_for(lambda: status() == 401, 90, f"{host} asks for credentials (basicAuth from the file)")
            served = wait_for(lambda: (r := get(**good)) is not None and r.status_code == 200 and (r,), 90,
                              f"{host} served with the file's credentials")[0]
            assert served.headers.get("X-From-File") == "yes"
            # A provider edge does not have: that router is dropped, and says why.
            assert requests.get(f"http://127.0.0.1:{port}/", headers={"Host": f"x-{host}", **good},
                                timeout=5).status_code == 404
            assert "names provider 'internal', which edge does not have" in problems()
            assert log.read_text().count("middleware 'auth@internal' names provider 'internal'") == 1  # once, not per build

            # A reload whose middleware does not build is rejected whole: the routes stay as they were.
            reload(head + auth("justaname") + tag)
            assert "Configuration reload rejected" in log.read_text()
            assert "middlewares.auth.basicAuth.users: expected user:hash entries" in log.read_text()
            assert status() == 401 and status(**good) == 200

            # A reload with another user: the Docker router follows at once (no Docker event needed).
            reload(head + auth(OTHER) + tag)
            wait_for(lambda: status(**good) == 401, 10, "the old user refused after the reload")
            assert status(**other) == 200

            # auth gone from the file: the router that names it is dropped (404), never served without it.
            reload(head + tag)
            wait_for(lambda: status(**other) == 404, 10, "the router dropped once auth@file is gone")
            assert "'auth@file' is not defined in the config file's [middlewares]" in problems()
            assert "[edge.discovery.docker_provider.DockerProvider#error]" in log.read_text().split(
                "'auth@file' is not defined in the config file's [middlewares]")[0].splitlines()[-1]
        finally:  # other tests watch the same swarm: leave nothing behind
            swarm.remove_service(created.id)


@pytest.mark.swarm
def test_edge_check_resolves_labels_against_the_checked_files_middlewares(swarm, tmp_path, unique):
    import subprocess
    import sys

    from tests.edge_process import ROOT

    name = f"mwchk-{unique}"
    created = swarm.create_web_service(name, labels={
        f"traefik.http.routers.{name}.rule": f"Host(`{name}.test`)",
        f"traefik.http.routers.{name}.middlewares": "auth@file",
        f"traefik.http.services.{name}.loadbalancer.server.port": "80",
    })
    path = tmp_path / "edge.toml"

    def check(extra: str) -> str:
        path.write_text(f'[docker]\nurl = "{swarm.url}"\n[dns]\nenabled = false\n' + extra)
        done = subprocess.run([sys.executable, "-m", "edge", "check", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 3), done.stdout + done.stderr  # 3: other tests' services may not serve
        return done.stdout

    try:
        out = check(f'[middlewares.auth.basicAuth]\nusers = ["{USER}"]\n')
        assert f"ok     {name}@docker  Host(`{name}.test`)" in out, out
        out = check("")
        assert f"{name}@docker  Host" not in out
        assert f"error: {name}: router {name}: middleware 'auth@file' is not defined in the config file's" in out, out
    finally:
        swarm.remove_service(created.id)


def test_a_users_file_is_read_with_the_config_file(tmp_path):
    users = tmp_path / "users"
    users.write_text(f"# the lab's users\n{USER}\n")
    built = file_middlewares(config(f'[middlewares.a.basicAuth]\nusersFile = "{users}"'))[0]
    assert built == {"a@file": BasicAuth(users=(USER,))}
    with pytest.raises(ConfigError) as caught:
        config(f'[middlewares.a.basicAuth]\nusersFile = "{tmp_path / "missing"}"')
    assert "middlewares.a.basicAuth.usersFile: cannot read" in str(caught.value)
