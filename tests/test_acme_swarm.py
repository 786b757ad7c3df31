"""
Labelled services on the real test swarm get pebble certificates through
edge's discovery: a Traefik v2 router with ``tls.certresolver`` and a
Traefik v1 frontend through ``on_host_rule``; each name ordered once.

Run inside the test namespace (``make test NETNS=...`` does).
"""

import shutil
import time

import pytest

from tests.acme_harness import EdgePorts, EdgeProcess, Pebble, curl, wait_until

pytestmark = [
    pytest.mark.swarm,
    pytest.mark.skipif(shutil.which("pebble") is None, reason="Debian's pebble is not installed (make system-deps)"),
]


def test_labelled_services_get_acme_certificates(swarm, tmp_path, unique):
    ports = EdgePorts()
    pebble = Pebble(str(tmp_path / "pebble"), ports.http, ports.https, f"127.0.0.1:{ports.dns}")
    edge = EdgeProcess(
        str(tmp_path / "edge"), ports,
        f'[tls]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[acme.pebble]\nca = "{pebble.directory_url}"\nca_bundle = "{pebble.listener_ca}"\nchallenge = "http-01"\n'
        f'[acme.v1]\nca = "{pebble.directory_url}"\nca_bundle = "{pebble.listener_ca}"\n'
        'challenge = "tls-alpn-01"\non_host_rule = true\n',
        docker=f'url = "{swarm.url}"\nbackend_addressing = "published"\ndebounce = 0.05',
    )
    try:
        trust = pebble.trust_file()
        v2, v1 = f"v2-{unique}", f"v1-{unique}"
        created = time.monotonic()
        swarm.create_web_service(v2, labels={
            f"traefik.http.routers.{v2}.rule": f"Host(`{v2}.test`)",
            f"traefik.http.routers.{v2}.tls.certresolver": "pebble",
            f"traefik.http.services.{v2}.loadbalancer.server.port": "80",
        })
        swarm.create_web_service(v1, labels={"traefik.frontend.rule": f"Host:{v1}.test", "traefik.port": "80"})

        def served(host):
            result = curl(f"https://{host}:{ports.https}/", host, ports.https, trust)
            return result.returncode == 0 and result.stdout.strip() != ""

        assert wait_until(lambda: served(f"{v2}.test"), 120), edge.log()[-3000:]
        print(f"v2 labelled service: served with a pebble certificate {time.monotonic() - created:.1f} s after"
              " `docker service create` (task start included)")
        assert wait_until(lambda: served(f"{v1}.test"), 120), edge.log()[-3000:]
        log = edge.log()
        # Each of the two names was ordered once.  The test swarm is shared:
        # v1 routers other tests left on it also match on_host_rule, so
        # pebble's total is held to edge's own count of orders, not to 2.
        assert log.count(f"Ordering a certificate for {v2}.test from ACME resolver pebble") == 1
        assert log.count(f"Ordering a certificate for {v1}.test from ACME resolver v1") == 1
        assert wait_until(lambda: pebble.orders() == edge.log().count("Ordering a certificate for "), 10), (
            pebble.orders(), edge.log().count("Ordering a certificate for "))
    finally:
        edge.stop()
        pebble.stop()
