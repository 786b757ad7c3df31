"""``python -m edge check`` against the real test swarm: the labels are read and judged."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.edge_process import ROOT

pytestmark = pytest.mark.swarm


def test_check_reads_the_swarms_labels_and_fails_on_a_bad_entry_point(swarm, tmp_path, unique):
    good, typo = f"chk-{unique}", f"chkt-{unique}"
    created = [
        swarm.create_web_service(good, labels={"traefik.port": "80", "traefik.frontend.rule": f"Host:{good}.test"}),
        swarm.create_web_service(typo, labels={
            f"traefik.http.routers.{typo}.rule": f"Host(`{typo}.test`)",
            f"traefik.http.routers.{typo}.entrypoints": "htps",
            f"traefik.http.services.{typo}.loadbalancer.server.port": "80",
        }),
    ]
    try:
        _check(swarm, tmp_path, good, typo)
    finally:  # other tests watch the same swarm: leave nothing behind
        for service in created:
            swarm.remove_service(service.id)


def _check(swarm, tmp_path, good, typo):
    path = tmp_path / "edge.toml"
    path.write_text(f'[docker]\nurl = "{swarm.url}"\n[dns]\nadvertise = ["192.0.2.10"]\n')
    done = subprocess.run([sys.executable, "-m", "edge", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 3, out + done.stderr
    assert f"docker {swarm.url}: read " in out
    assert f"ok     {good}@docker  Host:{good}.test" in out
    lines = out.splitlines()
    (bad,) = [i for i, line in enumerate(lines) if line.startswith("  error") and f"{typo}.test" in line]
    assert "unknown entry point 'htps' (known: http, https)" in lines[bad + 1]
    assert f"{good}.test A 192.0.2.10" in out
    assert out.rstrip().endswith("check failed: some routers would not serve")
