"""
Docs that run: every fenced block in README.md and docs/*.md is checked.

- ```toml: loads as an edge config (config.parse), as the docs promise.
- ```yaml: parses; a stack's edge service gives only edge's flags (the
  image's ENTRYPOINT is ``twistd ... edge``) and keeps ``--config``.
- ```sh / ```console: every ``python -m edge...`` line runs (console output
  is compared, ``...`` matching anything) and every ``twistd ... edge`` line
  runs with ``--check`` appended (it validates flags and config, then exits
  instead of binding ports 80 and 53), with ``/etc/edge/edge.toml`` read as
  ``config/edge.toml``. Any other command (docker, dig, curl, make, ...) needs
  a swarm, a LAN or a running edge: its block must say so right above the
  fence with ``<!-- docs-test: skip REASON -->`` (its runnable lines still run).
- Blocks without a language are output or diagrams.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass

import pytest

from edge import config as _config

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"<!--\s*docs-test:\s*skip\s+(\S.*?)\s*-->")
RUNNABLE = re.compile(r"^(?:[^|]*\|\s*)?(?:\.venv/bin/)?(?:python3?|twistd)\b.*\bedge\b")


@dataclass
class Block:
    path: pathlib.Path
    line: int
    lang: str
    body: str
    skip: str  # the reason given, or ""

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in FILES:
        lines = path.read_text().split("\n")
        i = 0
        while i < len(lines):
            match = re.match(r"^```(\w*)\s*$", lines[i])
            if match:
                end = i + 1
                while not lines[end].startswith("```"):
                    end += 1
                mark = MARK.search(lines[i - 1]) if i else None
                found.append(Block(path, i + 1, match.group(1), "\n".join(lines[i + 1 : end]),
                                   mark.group(1) if mark else ""))
                i = end
            i += 1
    return found


BLOCKS = blocks()


def _ids(kind):
    return [b for b in BLOCKS if b.lang in kind]


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each command of a shell block."""
    text = block.body.replace("\\\n", " ")
    found: list[tuple[str, list[str]]] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if block.lang == "console":
            if line.startswith("$ "):
                found.append((line[2:], []))
            elif found and line:
                found[-1][1].append(line)
            continue
        if line and not line.startswith("#"):
            found.append((line, []))
    return found


@pytest.mark.parametrize("block", _ids({"toml"}), ids=str)
def test_toml_snippets_are_valid_config(block):
    if block.skip:
        pytest.skip(block.skip)
    _config.parse(tomllib.loads(block.body), source=str(block))


@pytest.mark.parametrize("block", _ids({"yaml", "yml"}), ids=str)
def test_yaml_snippets_parse_and_stacks_do_not_double_the_entrypoint(block):
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load(block.body)
    services = document.get("services", {}) if isinstance(document, dict) else {}
    for name, service in (services or {}).items():
        image = str((service or {}).get("image", ""))
        if name != "edge" and not image.split(":")[0].endswith("edge"):
            continue
        command = (service or {}).get("command")
        if command is None:
            continue
        words = command if isinstance(command, list) else str(command).split()
        assert words[0] not in ("twistd", "python", "python3"), (
            f"{block}: the image's ENTRYPOINT is already `twistd --nodaemon --pidfile= edge`; give edge's flags only"
        )
        assert "--config" in words, f"{block}: the stack's config file (--config) is dropped"


def _shell(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    venv = pathlib.Path(sys.executable).parent
    for name, target in (("python", sys.executable), ("python3", sys.executable), ("twistd", venv / "twistd")):
        # A wrapper, not a symlink: Python finds its venv next to the path it was run by.
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        wrapper.chmod(0o755)
    (tmp_path / ".venv").symlink_to(venv.parent)  # the venv running this test
    (tmp_path / "config").symlink_to(ROOT / "config")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    # The snippets are about flags and config: no engine of the test run is read.
    env["DOCKER_HOST"] = "unix:///nonexistent/docs-test.sock"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


SHELL = _ids({"sh", "console", "bash"})


@pytest.mark.parametrize("block", SHELL, ids=str)
def test_shell_snippets_run_or_say_why_not(block, tmp_path):
    found = commands(block)
    others = [c for c, _ in found if not RUNNABLE.match(c)]
    assert not others or block.skip, (
        f"{block}: {others[0]!r} cannot run here; put `<!-- docs-test: skip REASON -->` right above the block"
    )
    env = _shell(tmp_path)
    for command, expected in found:
        if not RUNNABLE.match(command):
            continue
        check = bool(re.search(r"\btwistd\b", command))
        if check:
            command = command.split(" #", 1)[0].replace("/etc/edge/edge.toml", "config/edge.toml") + " --check"
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        # --check exits 3 when an engine it reached has routers that would not
        # serve (a --docker-url in the snippet may name a real socket): the
        # snippet's flags and config were still fine.
        assert done.returncode in ((0, 3) if check else (0,)), f"{block}: {command}\n{done.stdout}\n{done.stderr}"
        if check:
            assert re.search(r"^configuration .*: ok$", done.stdout, re.M), done.stdout
        assert "Traceback" not in done.stderr, f"{block}: {command}\n{done.stderr}"
        if expected:
            pattern = "\n".join(re.escape(line).replace(re.escape("..."), ".*") for line in expected)
            assert re.fullmatch(pattern, done.stdout.strip()), f"{block}: {command}\n{done.stdout}"


def test_every_block_is_seen():
    """The extraction finds the blocks (a broken parser would pass everything)."""
    assert len(BLOCKS) > 30
    assert {"toml", "yaml", "sh", "console", ""} <= {b.lang for b in BLOCKS}
    assert any(RUNNABLE.match(c) for b in SHELL for c, _ in commands(b))

