"""Stopping the processes tests start."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; a no-op once it has exited."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
