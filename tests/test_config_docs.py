"""The example config loads, and docs/configuration.md names every key the code accepts."""

import dataclasses
import pathlib

import pytest

from edge import config

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTIONS = {
    "docker": config.DockerConfig,
    "entrypoints.NAME": config.EntryPoint,
    "admin": config.AdminConfig,
    "dns": config.DNSConfig,
    "http": config.HTTPConfig,
    "tls": config.TLSConfig,
    "routes.NAME": config.StaticRoute,
    "acme.NAME": config.ACMEResolver,
    "cluster": config.ClusterConfig,
    "log": config.LogConfig,
    "tcp": config.TCPConfig,
    "udp": config.UDPConfig,
}


def test_example_config_loads():
    loaded = config.load(str(ROOT / "config" / "edge.toml"))
    assert loaded.entrypoint("http").address == "tcp:8080:interface=127.0.0.1"
    assert [r.name for r in loaded.routes] == ["dashboard"]


def test_example_config_says_which_values_are_not_defaults():
    """config/edge.toml claims its values are the defaults unless marked "demo:"."""
    path = ROOT / "config" / "edge.toml"
    loaded = config.load(str(path))
    defaults = config.Config()
    section = None
    previous = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            repeated = section == line.strip("[]")
            section = line.strip("[]")
            if section.startswith(("routes.", "dns.records")) and not repeated:
                assert "demo:" in previous, f"line {number}: {line} is an example, not a default; say demo:"
            previous = ""
            continue
        # The comment block right above a section header.
        previous = previous + line if line.startswith("#") else ""
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, rest = line.partition("=")
        key = key.strip()
        comment = rest.partition("#")[2].strip()
        if comment.startswith("demo:") or section is None or section.startswith(("routes.", "dns.records")):
            continue
        if section.startswith("entrypoints."):
            name = section.split(".", 1)[1]
            value = getattr(loaded.entrypoint(name), key)
            default = getattr(defaults.entrypoint(name), key)
        else:
            value = getattr(getattr(loaded, section), key)
            default = getattr(getattr(defaults, section), key)
        assert value == default, f"line {number}: {section}.{key} = {value!r} is not the default {default!r}; say demo:"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_key_is_documented(section):
    doc = (ROOT / "docs" / "configuration.md").read_text()
    heading = f"## `[{section}]`"
    assert heading in doc, f"no section {heading}"
    body = doc.split(heading, 1)[1].split("\n## ", 1)[0]
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name in ("name", "source"):
            continue
        assert f"| `{f.name}` |" in body, f"{section}.{f.name} is not documented"


def test_documented_flags_exist():
    from edge.tap import Options

    doc = (ROOT / "docs" / "configuration.md").read_text()
    table = doc.split("## Command-line flags", 1)[1].split("\n## ", 1)[0]
    names = {opt[0] for opt in Options.optParameters} | {"dns-interface", "dns-upstream"}
    for name in names:
        assert f"`--{name}" in table, f"--{name} is not documented"


def test_the_make_run_demo_stays_on_loopback():
    """The demo's dashboard route has no login: nothing of it may face the network."""
    loaded = config.load(str(ROOT / "config" / "edge.toml"))
    for ep in loaded.entrypoints:
        assert ":interface=127.0.0.1" in ep.address or ":interface=\\:\\:1" in ep.address, ep
    assert "interface=127.0.0.1" in loaded.admin.address
    assert loaded.dns.interfaces == ("127.0.0.1",)
    (dashboard,) = [r for r in loaded.routes if "127.0.0.1:8081" in r.backends[0]]
    assert set(dashboard.allow_ips) == {"127.0.0.0/8", "::1/128"}
    assert loaded.admin.users or dashboard.allow_ips


def test_readme_names_the_debian_prerequisites():
    import re

    readme = (ROOT / "README.md").read_text()
    assert "python3-venv" in readme
    # Debian has no `python` command: only python3, or the venv's own python.
    bare = [line for line in readme.splitlines() if re.search(r"(?<![\w/.-])python -m", line)]
    assert bare == [], bare
    makefile = (ROOT / "Makefile").read_text()
    assert "PYTHON ?= python3" in makefile
