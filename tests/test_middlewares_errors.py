"""
The ``errors`` middleware through both client framings, in memory.

The world is ``tests/test_http_pipeline.World`` (real exchange, tables,
balancers, pool, backend connections on StringTransports); the error page
service is another service of the same snapshot, reached through its own
balancer and the shared pool.
"""

from __future__ import annotations

import zlib

import pytest

from edge.discovery.labels import read_labels
from edge.http.errorpages import PAGE_LIMIT
from edge.rules import Host
from edge.snapshot import BackendService, Compress, Errors, Router, Snapshot, Target
from tests.test_http_pipeline import DEAD, H1Client, H2Client, World
from tests.test_http_swarm import edge  # noqa: F401 -- the swarm test's fixture: a real twistd edge

FRAMINGS = pytest.mark.parametrize("framing", [H1Client, H2Client], ids=["http1", "h2"])
PAGE = b"<h1>sorry</h1>"
PAGE_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Page: 1\r\nContent-Length: %d\r\n\r\n%s" % (
    len(PAGE), PAGE)
ORIGINAL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nX-Original: 1\r\nContent-Length: 5\r\n\r\nboom!"


def _world(*middlewares, down=False):
    """Router app.test (through its middlewares) -> app; the pages service is its own balancer."""
    world = World()
    world.service.apply(Snapshot.build(
        routers=[Router("app", Host(("app.test",)), "Host(`app.test`)", "gone" if down else "app",
                        middlewares=middlewares)],
        services=[BackendService("app", (Target("a1", "10.9.9.9", 80),)),
                  BackendService("gone", (Target("d1", DEAD[1], DEAD[2]),)),
                  BackendService("pages", (Target("p1", "10.9.9.7", 8080),), pass_host_header=False)],
    ))
    return world


def _errors(**kw):
    values = dict(status=((500, 599),), service="pages", query="/{status}.html")
    values.update(kw)
    return Errors(**values)


def _page_request(world) -> bytes:
    backend, transport = world.backends[-1]
    assert backend.key == ("http", "10.9.9.7", 8080)
    return transport.value()


@FRAMINGS
def test_a_caught_status_gets_the_page_with_the_original_status(framing):
    world = _world(_errors())
    client = framing(world)
    client.send(b"GET", b"/x?a=1", b"app.test", ((b"Cookie", b"sid=7"),))
    world.answer(ORIGINAL)
    asked = _page_request(world)
    assert asked.startswith(b"GET /500.html HTTP/1.1\r\nHost: 10.9.9.7:8080\r\n"), asked
    assert b"sid=7" in asked  # the client's request headers go with it (Traefik copies them)
    world.answer(PAGE_ANSWER)
    answer = client.answer()
    assert answer.status == 500
    assert answer.body == PAGE
    assert answer.header(b"content-type") == b"text/html" and answer.header(b"x-page") == b"1"
    assert answer.header(b"x-original") is None and b"boom" not in answer.body
    # Both backend connections finished cleanly and wait in the pool.
    assert world.service.pool.idle_count() == 2


@FRAMINGS
def test_a_status_out_of_range_passes(framing):
    world = _world(_errors(status=((500, 599),)))
    client = framing(world)
    client.send(b"GET", b"/x", b"app.test")
    world.answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
    answer = client.answer()
    assert (answer.status, answer.body) == (404, b"nope")
    assert len(world.backends) == 1


@FRAMINGS
def test_status_rewrites_and_the_query_variables(framing):
    world = _world(_errors(status=((400, 499),), status_rewrites=((418, 418, 404),),
                           query="page/{status}-{originalStatus}?u={url}"))
    client = framing(world)
    client.send(b"GET", b"/tea?pot=1&x=a%20b", b"app.test")
    world.answer(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n")
    asked = _page_request(world)
    assert asked.startswith(b"GET /page/404-418?u=%2Ftea%3Fpot%3D1%26x%3Da%2520b HTTP/1.1\r\n"), asked
    world.answer(PAGE_ANSWER)
    answer = client.answer()
    assert (answer.status, answer.body) == (404, PAGE)


@FRAMINGS
def test_edge_s_own_502_for_a_service_that_is_down_gets_the_page(framing):
    world = _world(_errors(status=((502, 503),)), down=True)
    client = framing(world)
    client.send(b"GET", b"/x", b"app.test")
    assert _page_request(world).startswith(b"GET /502.html HTTP/1.1\r\n")
    world.answer(PAGE_ANSWER)
    answer = client.answer()
    assert (answer.status, answer.body) == (502, PAGE)


@FRAMINGS
def test_a_backend_that_fails_before_its_head_gets_the_page(framing):
    world = _world(_errors(status=((502, 502),)))
    client = framing(world)
    client.send(b"GET", b"/x", b"app.test")
    world.answer(b"HTTP/1.1 2OO OK\r\n\r\n")  # malformed: edge's 502
    world.answer(PAGE_ANSWER)
    answer = client.answer()
    assert (answer.status, answer.body) == (502, PAGE)


@FRAMINGS
def test_the_page_service_s_own_status_does_not_leak(framing):
    """Whatever the page service answers, the client gets the original status (Traefik)."""
    world = _world(_errors())
    client = framing(world)
    client.send(b"GET", b"/x", b"app.test")
    world.answer(ORIGINAL)
    world.answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nmissing")
    answer = client.answer()
    assert (answer.status, answer.body) == (500, b"missing")


@FRAMINGS
@pytest.mark.parametrize("how", ["no such service", "page too large", "no answer in time", "page service closes"])
def test_without_a_page_the_client_gets_edge_s_text_with_the_original_status(framing, how):
    world = _world(_errors(service="nothere") if how == "no such service" else _errors())
    client = framing(world)
    client.send(b"GET", b"/x", b"app.test")
    world.answer(ORIGINAL)
    if how == "page too large":
        world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (PAGE_LIMIT + 10))
        world.answer(b"x" * (PAGE_LIMIT + 10))
    elif how == "no answer in time":
        world.clock.advance(61)
    elif how == "page service closes":
        backend, _ = world.backends[-1]
        backend.connectionLost(None)
    answer = client.answer()
    assert answer.status == 500
    assert answer.body == b"500 Internal Server Error\n"


@FRAMINGS
def test_head_gets_the_status_and_no_body(framing):
    world = _world(_errors())
    client = framing(world)
    client.send(b"HEAD", b"/x", b"app.test")
    world.answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\n")
    assert _page_request(world).startswith(b"GET /503.html HTTP/1.1\r\n")
    world.answer(PAGE_ANSWER)
    answer = client.answer()
    assert (answer.status, answer.body) == (503, b"")


@FRAMINGS
def test_the_next_request_on_the_connection_is_served_after_an_error_page(framing):
    world = _world(_errors())
    client = framing(world)
    client.send(b"GET", b"/x", b"app.test")
    world.answer(ORIGINAL)
    world.answer(PAGE_ANSWER)
    assert client.answer().status == 500
    client.send(b"GET", b"/y", b"app.test")
    backend, transport = world.backends[0]
    assert transport.value().count(b"GET /y HTTP/1.1") == 1
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.answer().body.endswith(b"ok")


@FRAMINGS
@pytest.mark.parametrize("order", ["compress outside errors", "errors outside compress"])
def test_compress_and_errors_in_either_order(framing, order):
    """The first middleware listed is the outer one: only then is the page compressed (Traefik)."""
    big = b"<p>an error page of some length</p>\n" * 100
    mws = (Compress(), _errors()) if order == "compress outside errors" else (_errors(), Compress())
    world = _world(*mws)
    client = framing(world)
    client.send(b"GET", b"/x", b"app.test", ((b"Accept-Encoding", b"gzip"),))
    world.answer(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big))
    world.answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big))
    answer = client.answer()
    assert answer.status == 500
    if order == "compress outside errors":
        assert answer.header(b"content-encoding") == b"gzip"
        assert zlib.decompress(answer.body, 31) == big
    else:
        assert answer.header(b"content-encoding") is None and answer.body == big


def test_labels_errors_v2():
    config = read_labels("web", {
        "traefik.http.routers.r.rule": "Host(`a.test`)",
        "traefik.http.routers.r.middlewares": "e",
        "traefik.http.services.s.loadbalancer.server.port": "80",
        "traefik.http.middlewares.e.errors.status": "500-599, 404",
        "traefik.http.middlewares.e.errors.service": "pages",
        "traefik.http.middlewares.e.errors.query": "/{status}.html",
        "traefik.http.middlewares.e.errors.statusRewrites.418": "404",
        "traefik.http.middlewares.e.errors.statusRewrites.502-504": "500",
    })
    assert config.problems == ()
    assert config.routers[0].middlewares == (Errors(
        status=((500, 599), (404, 404)), service="pages@docker", query="/{status}.html",
        status_rewrites=((418, 418, 404), (502, 504, 500))),)


def test_labels_errors_v1():
    config = read_labels("web", {
        "traefik.frontend.rule": "Host:a.test", "traefik.port": "80",
        "traefik.frontend.errors.network.status": "500-511",
        "traefik.frontend.errors.network.backend": "error_pages",
        "traefik.frontend.errors.network.query": "/{status}.html",
    })
    assert config.problems == ()
    assert config.routers[0].middlewares == (Errors(status=((500, 511),), service="error-pages@docker",
                                                    query="/{status}.html"),)


@pytest.mark.parametrize("extra,why", [
    ({"traefik.http.middlewares.e.errors.status": "5xx"}, "not a status code"),
    ({"traefik.http.middlewares.e.errors.status": "599-500"}, "not a status code"),
    ({"traefik.http.middlewares.e.errors.query": "/a b"}, "not a path"),
    ({"traefik.http.middlewares.e.errors.service": ""}, "names no service"),
])
def test_labels_errors_refused(extra, why):
    labels = {
        "traefik.http.routers.r.rule": "Host(`a.test`)", "traefik.http.routers.r.middlewares": "e",
        "traefik.http.services.s.loadbalancer.server.port": "80",
        "traefik.http.middlewares.e.errors.status": "500-599",
        "traefik.http.middlewares.e.errors.service": "pages", **extra,
    }
    config = read_labels("web", labels)
    assert config.routers and config.routers[0].middlewares == ()  # left out: it protects nothing
    assert any(why in p.message for p in config.problems), config.problems


# -- on the real test swarm (marker swarm; `make test` runs it in the test namespace) --------


@pytest.mark.swarm
def test_compress_and_errors_labels_on_the_swarm(swarm, edge, unique):
    """A labelled service compresses its big page and gets another service's page for its 404s."""
    import requests

    from tests.swarmkit import wait_for

    name, pages = f"ce-{unique}", f"ce-pages-{unique}"
    host = f"{name}.swarm.test"
    swarm.create_web_service(pages, labels={
        "traefik.enable": "true", f"traefik.http.services.{pages}.loadbalancer.server.port": "80"})
    swarm.create_web_service(name, labels={
        "traefik.enable": "true",
        f"traefik.http.routers.{name}.rule": f"Host(`{host}`)",
        f"traefik.http.routers.{name}.middlewares": f"{name}-gz, {name}-oops",
        f"traefik.http.middlewares.{name}-gz.compress": "true",
        f"traefik.http.middlewares.{name}-oops.errors.status": "404",
        f"traefik.http.middlewares.{name}-oops.errors.service": pages,
        f"traefik.http.middlewares.{name}-oops.errors.query": "/",
        f"traefik.http.services.{name}.loadbalancer.server.port": "80",
    }, command=["/bin/sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && "
                "for i in $(seq 400); do echo \"<p>line $i of a page edge compresses</p>\"; done"
                " > /tmp/www/big.html && exec /bin/httpd -f -p 80 -h /tmp/www"])
    page = swarm.wait_running(pages, 1, 90.0)[0]["Status"]["ContainerStatus"]["ContainerID"][:12]
    swarm.wait_running(name, 1, 90.0)

    def get(path, **headers):
        try:
            return requests.get(edge + path, headers={"Host": host, **headers}, timeout=5, stream=True)
        except requests.RequestException:
            return None

    def served():
        r = get("/big.html", **{"Accept-Encoding": "gzip"})
        return (r,) if r is not None and r.status_code == 200 else None

    (big,) = wait_for(served, 90.0, f"{host} served")
    assert big.headers["Content-Encoding"] == "gzip" and "Content-Length" not in big.headers
    raw = big.raw.read(decode_content=False)
    text = zlib.decompress(raw, 31)
    assert text.startswith(b"<p>line 1 of a page edge compresses</p>\n") and text.count(b"\n") == 400
    assert len(raw) < len(text) / 4

    def page_served():
        r = get("/missing.html")
        return (r,) if r is not None and r.status_code == 404 and r.text.strip() == page else None

    (missing,) = wait_for(page_served, 90.0, f"{host}'s 404 answered with the page of {pages}")
    assert missing.status_code == 404
