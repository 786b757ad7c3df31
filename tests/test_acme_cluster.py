"""
Three edge instances (loopback ports, separate state directories: no shared
filesystem) share one ACME account and certificate through their sealed
peer channel; pebble validates through an instance that did not order.
"""

import os
import shutil
import time

import pytest

from tests.acme_harness import Backend, EdgePorts, EdgeProcess, Pebble, curl, wait_until
from tests.ports import free_port

pytestmark = pytest.mark.skipif(shutil.which("pebble") is None, reason="Debian's pebble is not installed (make system-deps)")


class Trio:
    def __init__(self, tmp_path, challenge, pebble_env=None):
        self.edges = {}
        self.pebble = None
        try:
            self._start(tmp_path, challenge, pebble_env)
        except BaseException:
            self.stop()  # an instance that failed to start must not leave the others running
            raise

    def _start(self, tmp_path, challenge, pebble_env):
        self.tmp = tmp_path
        self.backend = Backend()
        self.ports = {name: EdgePorts() for name in "abc"}
        self.peer_ports = {name: free_port() for name in "abc"}
        secret = tmp_path / "cluster-secret"
        secret.write_bytes(os.urandom(32).hex().encode())
        # pebble reaches instance b (HTTP-01/TLS-ALPN-01 and DNS): never the orderer a.
        b = self.ports["b"]
        self.pebble = Pebble(str(tmp_path / "pebble"), b.http, b.https, f"127.0.0.1:{b.dns}", env=pebble_env)
        for name in "abc":
            peers = ", ".join(f'"127.0.0.1:{self.peer_ports[o]}"' for o in "abc" if o != name)
            text = (
                f'[tls]\nstate_dir = "{tmp_path / name / "state"}"\n'
                f'[cluster]\nname = "{name}"\nlisten = "tcp:{self.peer_ports[name]}:interface=127.0.0.1"\n'
                f'secret_file = "{secret}"\npeers = [{peers}]\npeer_timeout = 2.0\n'
                f'[acme.pebble]\nca = "{self.pebble.directory_url}"\nca_bundle = "{self.pebble.listener_ca}"\n'
                f'challenge = "{challenge}"\n'
                f'[routes.app]\nrule = "Host(`app.test`)"\nbackends = ["http://127.0.0.1:{self.backend.port}"]\n'
                'cert_resolver = "pebble"\n'
            )
            # All three start together.
            self.edges[name] = EdgeProcess(str(tmp_path / name), self.ports[name], text, wait=False)
        for edge in self.edges.values():
            edge.wait()

    def served(self, name, trust):
        port = self.ports[name].https
        result = curl(f"https://app.test:{port}/", "app.test", port, trust)
        return result.returncode == 0 and result.stdout == "hello from the backend\n"

    def stop(self):
        for edge in self.edges.values():
            edge.stop()
        if self.pebble is not None:
            self.pebble.stop()
        if getattr(self, "backend", None) is not None:
            self.backend.stop()


@pytest.fixture
def trio_factory(tmp_path):
    made = []

    def make(challenge, **kwargs):
        trio = Trio(tmp_path, challenge, **kwargs)
        made.append(trio)
        return trio

    yield make
    for trio in made:
        trio.stop()


def _logs(trio):
    return "\n".join(f"--- {n}\n{e.log()[-2500:]}" for n, e in trio.edges.items()) + "\n--- pebble\n" + trio.pebble.log()[-2000:]


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_one_order_validated_elsewhere_served_by_all(trio_factory, challenge):
    trio = trio_factory(challenge)
    trust = trio.pebble.trust_file()
    started = time.monotonic()
    everywhere = wait_until(lambda: all(trio.served(n, trust) for n in "abc"), 60)
    assert everywhere, _logs(trio)
    print(f"served by all three {time.monotonic() - started:.1f} s after the instances answered")
    assert trio.pebble.orders() == 1, _logs(trio)
    logs = {n: e.log() for n, e in trio.edges.items()}
    assert "Ordering a certificate for app.test" in logs["a"]
    assert "Ordering a certificate" not in logs["b"] and "Ordering a certificate" not in logs["c"]
    assert f"Answered the {challenge.upper()} challenge for app.test" in logs["b"]  # b never ordered
    for name in "bc":
        assert "Serving app.test as ordered by another instance" in logs[name]
    assert logs["a"].count("Created an ACME account") == 1
    assert "Created an ACME account" not in logs["b"] + logs["c"]
    rows = [trio.edges[n].api("/api/certificates")["certificates"][0] for n in "abc"]
    assert len({r["not_after"] for r in rows}) == 1 and all(r["issuer"] for r in rows)


def test_orderer_killed_mid_order_another_finishes(trio_factory):
    # Validation waits up to 5 s at pebble, so the order is still open when a dies.
    trio = trio_factory("tls-alpn-01", pebble_env={"PEBBLE_VA_NOSLEEP": "0", "PEBBLE_VA_SLEEPTIME": "5"})
    trust = trio.pebble.trust_file()
    opened = wait_until(lambda: trio.pebble.orders() >= 1, 30, step=0.05)
    assert opened, _logs(trio)
    trio.edges["a"].kill()
    assert "Issued app.test" not in trio.edges["a"].log(), "a finished before it was killed; nothing taken over"
    killed = time.monotonic()
    served = wait_until(lambda: trio.served("b", trust) and trio.served("c", trust), 60)
    assert served, _logs(trio)
    print(f"b and c serve {time.monotonic() - killed:.1f} s after the orderer was killed;"
          f" pebble saw {trio.pebble.orders()} orders")
    logs = {n: trio.edges[n].log() for n in "bc"}
    assert "Ordering a certificate for app.test" in logs["b"]
    assert "Ordering a certificate" not in logs["c"]
    assert "Serving app.test as ordered by another instance" in logs["c"]
    assert trio.pebble.orders() == 2  # a's abandoned order and b's
