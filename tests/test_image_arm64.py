"""
edge's arm64 image, run on this amd64 machine under qemu-user-static.

``make test-arm64`` registers qemu for aarch64 with binfmt_misc
(tests/testbed/binfmt.sh), builds the image from the same Dockerfile on an
arm64 debootstrap base with PyPI's aarch64 wheels
(``EDGE_IMAGE_ARCH=arm64 tests/testbed/image.sh``) and sets
``EDGE_IMAGE_ARM64``. Every process in these containers is an aarch64 program
that the kernel hands to qemu, so these tests are what an ARM manager would
run: the image's compiled extensions are checked to be aarch64 and to load,
then the stack (config/edge-stack.yml, as test_image.py renders it) answers
DNS and proxies a request to a backend, through its published ports.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import time
from datetime import datetime
from importlib.metadata import version

import pytest

from tests.swarmkit import wait_for
from tests.test_image import deployed_stack, dns_a, http_get, routed_web_service, run_in_image, wait_healthy

pytestmark = pytest.mark.swarm

IMAGE = os.environ.get("EDGE_IMAGE_ARM64", "")
EM_AARCH64 = 183  # ELF e_machine

# Run inside the image: the machine Python reports, the e_machine of every
# shared object in edge's virtualenv, and an import of each compiled
# dependency (a wheel for the wrong machine fails here, not in production).
INSPECT = r"""
import json, os, platform
import bcrypt, httptools, zope.interface
import cryptography.hazmat.bindings._rust
from OpenSSL import SSL
machines = {}
for top, _, files in os.walk("/opt/edge"):
    for name in files:
        if ".so" in name:
            with open(os.path.join(top, name), "rb") as f:
                head = f.read(20)
            machines[name] = int.from_bytes(head[18:20], "little") if head[:4] == b"\x7fELF" else None
print(json.dumps({"machine": platform.machine(), "openssl": SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode(),
                  "shared_objects": machines}))
"""


def stamp(text: str) -> datetime:
    """An engine timestamp (nanoseconds, ``Z``) as a datetime."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00"))


def https_get(port: int, host: str, ca_pem: str) -> tuple[str, str]:
    """GET / with SNI ``host``, verified against ``ca_pem``: the status line and the body."""
    context = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body


def need_image():
    if not IMAGE:
        pytest.skip("no arm64 image: run `make test-arm64` (builds it under emulation, then runs this test)")


@pytest.fixture(scope="module")
def arm64_stack(swarm):
    need_image()
    deployed_at = time.monotonic()
    for deployed in deployed_stack(swarm, IMAGE):
        yield deployed, deployed_at


def test_image_is_arm64_and_its_extensions_are_aarch64(swarm):
    need_image()
    image = swarm.client.images.get(IMAGE)
    assert (image.attrs["Os"], image.attrs["Architecture"]) == ("linux", "arm64")
    out = run_in_image(swarm.client, IMAGE, "/bin/sh", "-c", "uname -m; twistd edge --version")
    assert out.split() == ["aarch64", "edge", version("edge")], out
    report = json.loads(run_in_image(swarm.client, IMAGE, "python3", "-c", INSPECT))
    assert report["machine"] == "aarch64"
    objects = report["shared_objects"]
    # httptools, cryptography, bcrypt, zope.interface and cffi ship compiled code.
    assert len(objects) >= 5, objects
    assert {name for name, machine in objects.items() if machine != EM_AARCH64} == set(), objects
    print(f"{len(objects)} aarch64 shared objects; {report['openssl']}")


def test_stack_under_emulation_answers_dns_and_proxies(swarm, arm64_stack, unique):
    (stack_name, ports), deployed_at = arm64_stack
    client = swarm.client
    host = f"arm-{unique}.test"
    backend_hostname = routed_web_service(swarm, f"armweb-{unique}", host)

    # The image's HEALTHCHECK passes, itself run under emulation.
    container = wait_healthy(client, stack_name)
    healthy_after = time.monotonic() - deployed_at
    # edge's own process (PID 1, twistd with --config /etc/edge/edge.toml) is
    # run by qemu: the host sees the binfmt interpreter in front of it.
    processes = [" ".join(p) for p in container.top(ps_args="-o pid,args")["Processes"]]
    assert any("qemu" in p and "twistd" in p and "/etc/edge/edge.toml" in p for p in processes), processes
    exit_code, machine = container.exec_run(["uname", "-m"])
    assert (exit_code, machine.decode().strip()) == (0, "aarch64")

    managers = sorted(n.attrs["Status"]["Addr"] for n in client.nodes.list(filters={"role": "manager"}))
    assert wait_for(lambda: dns_a(ports[53], host) or None, 60, "the DNS answer over UDP") == managers
    status, body = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(http_get(ports[80], host)),
        60,
        f"HTTP {host} through the arm64 edge on :{ports[80]}",
    )
    assert body.strip() == backend_hostname
    assert http_get(ports[80], f"nothing-{unique}.test")[0] == 404
    # HTTPS: edge's built-in CA (cryptography under emulation) issues the
    # routed name's certificate inside the handshake; the client verifies it.
    exit_code, ca_pem = container.exec_run(["cat", "/var/lib/edge/state/ca/edge-ca.crt"])
    assert exit_code == 0, ca_pem
    status_line, body = https_get(ports[443], host, ca_pem.decode())
    assert status_line.startswith("HTTP/1.") and " 200 " in status_line, status_line
    assert body.strip() == backend_hostname

    # Checks after the first healthy one: none may run out of the image's
    # HEALTHCHECK timeout (swarm would restart a working edge after three).
    def health_log():
        container.reload()
        log = container.attrs["State"]["Health"]["Log"]
        return log if sum(entry["ExitCode"] == 0 for entry in log) >= 3 else None

    log = wait_for(health_log, 90, "three passed health checks", interval=1)
    timeout_s = client.images.get(IMAGE).attrs["Config"]["Healthcheck"]["Timeout"] / 1e9
    seconds = [(stamp(e["End"]) - stamp(e["Start"])).total_seconds() for e in log]
    first_pass = next(i for i, entry in enumerate(log) if entry["ExitCode"] == 0)
    assert [e for e in log[first_pass:] if e["ExitCode"] != 0] == [], log
    print(
        f"arm64 edge healthy {healthy_after:.1f}s after the stack deploy (under emulation); "
        f"health checks took {', '.join(f'{s:.1f}' for s in seconds)} s (timeout {timeout_s:.0f} s)"
    )
