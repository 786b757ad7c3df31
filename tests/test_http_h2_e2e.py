"""
HTTP/2 end to end: a real edge process (tests/test_http_harness.py) with TLS
offering h2, the raw origin behind it, and real clients: curl --http2 and
h2load (Debian's nghttp2-client).  Everything on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.ports import free_port
from tests.swarmkit import wait_for
from tests.test_http_proxy import Edge, Origin, snapshot, web

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")


@pytest.fixture(scope="module")
def origin():
    o = Origin("h2o")
    yield o
    o.stop()


def tls_edge(tmp_path, targets, extra: str = "", entrypoint: str = "") -> Edge:
    """
    A real edge serving web.test over TLS with ALPN h2 to ``targets`` (also used by
    test_hostile_h2); ``entrypoint``: more keys of its entry point (``proxy_protocol = [...]``).
    """
    from tests.test_tls_store import TestCA, write

    ca = TestCA()
    pem = write(str(tmp_path / "web.pem"), ca.bundle("web.test"))
    root = write(str(tmp_path / "root.pem"), ca.pem())
    port = free_port()
    eps = f'[entrypoints.https]\naddress = "tcp:{port}:interface=127.0.0.1"\ntls = true\n' + entrypoint
    env = {**os.environ, "EDGE_TEST_CERT": pem, "EDGE_TEST_ALPN": "h2,http/1.1"}
    e = Edge(tmp_path, snapshot(web(targets)), extra=extra, entrypoints=eps, env=env)
    e.https_port = port
    e.root = root
    return e


@pytest.fixture
def edge(origin, tmp_path):
    e = tls_edge(tmp_path, [origin.target()])
    yield e
    e.stop()


def _curl(edge, *args, path="/echo", timeout=60):
    return subprocess.run(
        ["curl", "-sS", "--http2", "--max-time", str(timeout - 5), "--cacert", edge.root,
         "--resolve", f"web.test:{edge.https_port}:127.0.0.1", *args,
         f"https://web.test:{edge.https_port}{path}"],
        capture_output=True, timeout=timeout,
    )


def test_curl_http2_get_reaches_the_backend_over_http11_and_is_logged(edge):
    done = _curl(edge, "-i")
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    seen = json.loads(body)
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["host"] == f"web.test:{edge.https_port}"
    wait_for(lambda: edge.log_lines(), 10, "access log line")
    lines = edge.log_lines()
    assert [(line["protocol"], line["status"]) for line in lines] == [("HTTP/2.0", 200)]


def test_upload_streams_through_one_stream_with_bounded_memory(edge, tmp_path):
    size = 64 << 20
    blob = tmp_path / "upload.bin"
    with open(blob, "wb") as f:
        chunk = os.urandom(1 << 20)
        digest = hashlib.sha256()
        for _ in range(size >> 20):
            f.write(chunk)
            digest.update(chunk)
    _curl(edge, path="/name")  # warm the process up before the baseline
    before = edge.rss_kib()
    done = _curl(edge, "--data-binary", f"@{blob}", "-H", "Content-Type: application/octet-stream")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["body_len"] == size
    assert seen["body_sha256"] == ""  # the origin hashes up to 16 MiB only
    # Peak RSS: the body streamed, it was never held whole.
    grown = edge.rss_kib() - before
    assert grown < 16 * 1024, f"peak RSS grew by {grown} KiB for a {size >> 20} MiB upload"


def test_upload_without_length_is_chunked_to_the_backend_intact(edge, tmp_path):
    data = os.urandom(3 << 20)
    blob = tmp_path / "u.bin"
    blob.write_bytes(data)
    done = _curl(edge, "-T", str(blob), "-X", "POST", "-H", "Transfer-Encoding:")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["body_len"], seen["body_sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_big_response_is_relayed_whole(edge):
    done = _curl(edge, "-o", "-", "-w", "\n%{http_version} %{size_download}", path=f"/big/{5 << 20}")
    assert done.returncode == 0, done.stderr
    body, _, meta = done.stdout.rpartition(b"\n")
    assert meta == b"2 %d" % (5 << 20)
    assert body == b"b" * (5 << 20)


@pytest.mark.parametrize("conns,streams", [(4, 10), (1, 100)])
def test_h2load_many_streams(edge, conns, streams):
    total = 400
    done = subprocess.run(
        ["h2load", "-c", str(conns), "-m", str(streams), "-n", str(total), "-H", ":authority: web.test",
         f"https://127.0.0.1:{edge.https_port}/name"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("requests:"))
    assert f"{total} succeeded, 0 failed, 0 errored" in line, done.stdout
    assert "status codes: %d 2xx" % total in done.stdout
    assert "Application protocol: h2" in done.stdout
    # One access log line per stream (the log is flushed once a second).
    wait_for(lambda: len(edge.log_lines()) >= total, 10, "access log lines")
    assert len(edge.log_lines()) == total


def test_shutdown_lets_a_stream_in_flight_finish(edge):
    slow = subprocess.Popen(
        ["curl", "-sS", "--http2", "--max-time", "20", "--cacert", edge.root,
         "--resolve", f"web.test:{edge.https_port}:127.0.0.1", "-o", "-", "-w", " %{http_code}",
         f"https://web.test:{edge.https_port}/slow/1.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until the request is in flight
        out = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{edge.https_port} )"],
                             capture_output=True, text=True).stdout
        if out.strip():
            break
        time.sleep(0.05)
    time.sleep(0.3)
    edge.process.send_signal(signal.SIGTERM)
    out, err = slow.communicate(timeout=30)
    assert out == b"slow 200", (out, err)
    assert edge.process.wait(15) == 0
