"""
Errors an admin can act on (one line, no traceback) and the tools an admin
expects: ``python -m edge check`` / ``twistd edge --check`` and
``python -m edge.passwd``, each run as a real process.
"""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from tests.edge_process import ROOT, TWISTD, Edge, Ports, run_to_exit


def python(*args, input=None, timeout=60):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          input=input, timeout=timeout)


def _one_line_error(done, *words):
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- point 10: one-line errors -----------------------------------------------------


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_bytes(b'[docker]\nurl = "unix:///x.sock"\n# caf\xe9\n')
    _one_line_error(run_to_exit(path), "not UTF-8 text", "line 3")


@pytest.mark.parametrize(
    "flag, words",
    [
        (("--dns-upstream", "dns.example.org"), ("dns.upstream", "'dns.example.org'")),
        (("--dns-interface", "eth0"), ("dns.interfaces", "'eth0'")),
    ],
)
def test_bad_dns_flags_are_one_line(tmp_path, flag, words):
    path = tmp_path / "edge.toml"
    path.write_text(Ports().config())
    _one_line_error(run_to_exit(path, *flag), "configuration error", *words)


def test_an_unwritable_state_dir_is_one_line(tmp_path):
    ports = Ports()
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be\n")
    path = tmp_path / "edge.toml"
    path.write_text(
        ports.config().replace("[entrypoints.web]", f"[tls]\ninternal_ca = true\nstate_dir = \"{blocker}/state\"\n"
                                                   "[entrypoints.websecure]\n"
                                                   f"address = \"tcp:{ports.http}:interface=127.0.0.1\"\n"
                                                   "tls = true\n[entrypoints.web]", 1)
        .replace(f'address = "tcp:{ports.http}:interface=127.0.0.1"\n[admin]',
                 'address = "tcp:0:interface=127.0.0.1"\n[admin]')
    )
    line = _one_line_error(run_to_exit(path), "edge: cannot start:", "tls.state_dir")
    assert str(blocker) in line


def test_healthcheck_help_is_help():
    done = python("-m", "edge.admin.healthcheck", "--help")
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "usage: python -m edge.admin.healthcheck" in done.stdout


# -- point 16: check ---------------------------------------------------------------

GOOD = (
    '[docker]\nurl = "unix:///nonexistent/edge-test.sock"\n'
    '[dns]\nadvertise = ["192.168.1.2"]\n'
    '[routes.nas]\nrule = "Host(`nas.home`)"\nbackends = ["http://192.168.1.10:5000"]\n'
)


def test_python_m_edge_check_prints_routers_and_names(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD)
    done = python("-m", "edge", "check", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"configuration {path}: ok" in out
    assert "unreachable" in out and "labels not checked" in out
    assert "ok     nas@file  Host(`nas.home`)  [all entry points] -> http://192.168.1.10:5000" in out
    assert "nas.home A 192.168.1.2  (nas@file)" in out
    assert out.rstrip().endswith("check passed")


def test_twistd_edge_check_exits_without_serving(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD)
    done = subprocess.run([TWISTD, "-n", "--pidfile=", "edge", "--config", str(path), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nas@file" in done.stdout and "check passed" in done.stdout


def test_check_fails_on_a_config_error(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD.replace("Host(`nas.home`)", "Hots(`nas.home`)"))
    done = python("-m", "edge", "check", str(path))
    assert done.returncode == 1
    assert "routes.nas.rule: bad rule" in done.stdout


def test_check_fails_when_a_router_would_not_serve(tmp_path):
    from io import StringIO

    from edge import config as _config
    from edge.check import run_check
    from edge.rules import Host
    from edge.snapshot import Router, Snapshot

    path = tmp_path / "edge.toml"
    path.write_text(GOOD)
    labels = Snapshot.build(routers=[Router(name="app@docker", rule=Host(("app.home",)),
                                            rule_text="Host(`app.home`)", service="app@docker",
                                            entry_points=("htps",))])
    out = StringIO()
    code = run_check(lambda: _config.load(str(path)), out, docker=lambda config: (labels, ""))
    assert code == 3
    text = out.getvalue()
    assert "read 1 routers from labels" in text
    assert "error  app@docker" in text and "unknown entry point 'htps' (known: http, https)" in text
    assert "check failed" in text


# -- point 17: passwd --------------------------------------------------------------


def test_passwd_entry_opens_a_basic_auth_route(tmp_path):
    done = python("-m", "edge.passwd", "alice", "--cost", "5", input="s3cret\n")
    assert done.returncode == 0, done.stderr
    entry = done.stdout.strip()
    assert entry.startswith("alice:$2b$05$") and "s3cret" not in entry
    assert python("-m", "edge", "passwd", "--help").returncode == 0

    ports = Ports()
    path = tmp_path / "edge.toml"
    admin = f'[admin]\naddress = "tcp:{ports.admin}:interface=127.0.0.1"\n'
    path.write_text(ports.config().replace(admin, admin + f"users = ['{entry}']\n"))
    edge = Edge(path, ports)
    try:
        edge.wait_admin()
        good = base64.b64encode(b"alice:s3cret").decode()
        bad = base64.b64encode(b"alice:wrong").decode()
        assert edge.get("/api/summary")[0] == 401
        assert edge.get("/api/summary", headers={"Authorization": f"Basic {bad}"})[0] == 401
        assert edge.get("/api/summary", headers={"Authorization": f"Basic {good}"})[0] == 200
    finally:
        edge.stop()


def test_passwd_refuses_a_colon_in_the_user():
    done = python("-m", "edge.passwd", "a:b", input="x\n")
    assert done.returncode == 2 and "no ':'" in done.stderr

