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
}


def test_example_config_loads():
    loaded = config.load(str(ROOT / "config" / "edge.toml"))
    assert loaded.entrypoint("http").address == "tcp:8080"
    assert [r.name for r in loaded.routes] == ["dashboard"]


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
