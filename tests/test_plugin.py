"""
``twistd edge``: the plugin, its options, flags laid over the config file, and
config errors that name the file and the key in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edge import config as _config
from edge import tap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def twistd(*args, timeout=60):
    return subprocess.run(
        [TWISTD, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_twistd_edge_help_lists_the_options():
    done = twistd("edge", "--help")
    assert done.returncode == 0, done.stderr
    for option in (
        "--config=",
        "--docker-url=",
        "--http=",
        "--https=",
        "--admin=",
        "--dns-port=",
        "--dns-interface=",
        "--dns-upstream=",
        "--zone=",
        "--domain=",
        "--exposed-by-default=",
        "--backend-addressing=",
        "--log-format=",
        "--log-level=",
    ):
        assert option in done.stdout, option
    assert "DOCKER_TLS_VERIFY" in done.stdout


def test_twistd_lists_edge_among_plugins():
    done = twistd("--help")
    assert done.returncode == 0
    assert any(line.split()[:1] == ["edge"] for line in done.stdout.splitlines())


@pytest.mark.parametrize(
    "content, key",
    [
        ('[docker]\nswarm = "maybe"\n', "docker.swarm"),
        ("[docker]\nurll = 'unix:///x'\n", "docker.urll"),
        ("[dns]\nport = 'fifty'\n", "dns.port"),
        ("[entrypoints.web]\naddress = 'tcpp:80'\n", "entrypoints.web.address"),
    ],
)
def test_bad_config_file_gives_one_clear_line(tmp_path, content, key):
    path = tmp_path / "edge.toml"
    path.write_text(content)
    done = twistd("-n", "edge", "--config", str(path))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"edge: configuration error: {path}: {key}:"), lines[0]
    assert "Traceback" not in done.stderr + done.stdout


def test_bad_flag_value_gives_one_clear_line():
    done = twistd("-n", "edge", "--backend-addressing", "sometimes")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "edge: configuration error: command line: docker.backend_addressing:"
        " expected one of auto, task, published, got 'sometimes'"
    ]


# -- apply_flags ------------------------------------------------------------------


def options(*argv):
    o = tap.Options()
    o.parseOptions(list(argv))
    return o


def test_flags_override_the_file():
    base = _config.parse(
        {"docker": {"url": "unix:///file.sock", "domain": "file.test"}, "dns": {"port": 5300}},
        source="edge.toml",
    )
    merged = tap.apply_flags(
        base,
        options(
            "--docker-url", "tcp://127.0.0.1:2375",
            "--exposed-by-default", "no",
            "--dns-port", "53",
            "--dns-interface", "127.0.0.1",
            "--dns-interface", "::1",
            "--dns-upstream", "127.0.0.53",
            "--zone", "cluster.test",
            "--admin", "none",
            "--http", "tcp:80",
            "--backend-addressing", "published",
        ),
    )
    assert merged.docker.url == "tcp://127.0.0.1:2375"
    assert merged.docker.domain == "file.test"  # not given: the file's value stays
    assert merged.docker.exposed_by_default is False
    assert merged.docker.backend_addressing == "published"
    assert (merged.dns.port, merged.dns.interfaces, merged.dns.upstream, merged.dns.zone) == (
        53,
        ("127.0.0.1", "::1"),
        ("127.0.0.53",),
        "cluster.test",
    )
    assert merged.admin.address == ""
    assert merged.entrypoint("http").address == "tcp:80"
    assert merged.entrypoint("https").address == "tcp:8443"


def test_no_flags_changes_nothing():
    base = _config.Config()
    assert tap.apply_flags(base, options()) == base


def test_https_flag_adds_missing_entry_point_with_tls():
    base = _config.parse({"entrypoints": {"http": {"address": "tcp:8080"}}})
    merged = tap.apply_flags(base, options("--https", "tcp:9443"))
    assert merged.entrypoint("https").address == "tcp:9443" and merged.entrypoint("https").tls


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--exposed-by-default", "perhaps"), "--exposed-by-default: expected true or false"),
        (("--http", "nonsense:80"), "entrypoints.http.address"),
        (("--log-level", "loud"), "log.level"),
    ],
)
def test_bad_flags_raise_config_errors(argv, message):
    with pytest.raises(_config.ConfigError) as e:
        tap.apply_flags(_config.Config(), options(*argv))
    assert message in str(e.value)


def test_dns_port_flag_must_be_a_number():
    from twisted.python import usage

    with pytest.raises(usage.UsageError):
        options("--dns-port", "fifty")


# -- config.load errors -------------------------------------------------------------


def load_text(tmp_path, text):
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("[docker]\nresync = 5\n", "docker.resync", "unknown key (known keys:"),
        ("colour = 'blue'\n", "colour", "unknown key"),
        ("[docker]\nresync_interval = 'often'\n", "docker.resync_interval", "expected a number"),
        ("[dns]\nenabled = 'yes'\n", "dns.enabled", "expected true or false"),
        ("[dns]\ninterfaces = '127.0.0.1'\n", "dns.interfaces", "expected a list of a string"),
        ("[admin]\naddress = 'tcp:notaport'\n", "admin.address", "expected a Twisted endpoint string"),
        ("[routes.nas]\nrule = 'Host(`nas.test`)'\n", "routes.nas", "missing required key 'backends'"),
    ],
)
def test_load_errors_name_file_and_key(tmp_path, text, key, words):
    path = load_text(tmp_path, text)
    with pytest.raises(_config.ConfigError) as e:
        _config.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message
    assert "\n" not in message


def test_load_unreadable_file(tmp_path):
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(_config.ConfigError) as e:
        _config.load(missing)
    assert str(e.value) == f"{missing}: cannot read: No such file or directory"
    directory = str(tmp_path)
    with pytest.raises(_config.ConfigError) as e:
        _config.load(directory)
    assert str(e.value).startswith(f"{directory}: cannot read: ")


def test_load_invalid_toml(tmp_path):
    path = load_text(tmp_path, "[docker\nurl = 1\n")
    with pytest.raises(_config.ConfigError) as e:
        _config.load(path)
    assert str(e.value).startswith(f"{path}: not valid TOML: ")


def test_load_good_file(tmp_path):
    path = load_text(
        tmp_path,
        '[docker]\nurl = "tcp://127.0.0.1:2375"\nswarm = "true"\nresync_interval = 30\n'
        '[routes.nas]\nrule = "Host(`nas.test`)"\nbackends = ["http://127.0.0.1:5000"]\n',
    )
    config = _config.load(path)
    assert config.docker.url == "tcp://127.0.0.1:2375"
    assert config.docker.resync_interval == 30.0
    assert [r.name for r in config.routes] == ["nas"]
    assert config.source == path
