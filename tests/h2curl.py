"""curl --http2 against a test edge's TLS entry point: (status line, headers, body)."""

from __future__ import annotations

import subprocess


def curl_h2(root: str, port: int, host: str, path: str, *args: str):
    """One request; headers maps each lower-case name to the list of its values."""
    done = subprocess.run(
        ["curl", "-sS", "--http2", "-i", "--max-time", "20", "--cacert", root,
         "--resolve", f"{host}:{port}:127.0.0.1", *args, f"https://{host}:{port}{path}"],
        capture_output=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return lines[0], headers, body
