"""
Access log: Common/Combined Log Format (Traefik's fields appended) or JSON lines.

Lines are written to a buffered file and flushed once a second by the HTTP
service's housekeeping tick, so logging costs a format and a write call per
request, not a system call.
"""

from __future__ import annotations

import json
import sys
import time

from edge.http.middlewares import get_header
from edge.logs import rfc3339

__all__ = ["AccessLog", "open_access_log"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessLog:
    def __init__(self, stream, format: str = "common", wall=time.time):
        self._stream = stream
        self._format = format
        self._wall = wall
        self._stamp_second = -1
        self._stamp = ""
        self.count = 0

    def _timestamp(self) -> str:
        now = self._wall()
        second = int(now)
        if second != self._stamp_second:
            t = time.gmtime(second)
            self._stamp = (
                f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
            )
            self._stamp_second = second
        return self._stamp

    def log(self, server, req, now: float) -> None:
        self.count += 1
        duration_ms = int((now - req.started) * 1000) if req.started else 0
        router = req.route.router if req.route is not None else "-"
        method = req.method.decode("latin-1") or "-"
        target = req.target.decode("latin-1") or "-"
        if self._format == "json":
            record = {
                "time": rfc3339(self._wall()),
                "client": req.client_ip,
                "method": method,
                "host": req.host.decode("latin-1"),
                "path": target,
                "protocol": f"HTTP/{req.version}",
                "status": req.status,
                "bytes": req.sent_bytes,
                "duration_ms": duration_ms,
                "router": router,
                "target": req.target_url or "-",
                "entrypoint": server.factory.name,
            }
            if req.error:
                record["error"] = req.error
            line = json.dumps(record, separators=(",", ":"))
        else:
            line = (
                f'{req.client_ip} - - [{self._timestamp()}] "{method} {target} HTTP/{req.version}"'
                f" {req.status} {req.sent_bytes}"
            )
            if self._format == "combined":
                referer = get_header(req.headers, b"referer") or b"-"
                agent = get_header(req.headers, b"user-agent") or b"-"
                line += f' "{referer.decode("latin-1")}" "{agent.decode("latin-1")}"'
            line += f' {self.count} "{router}" "{req.target_url or "-"}" {duration_ms}ms'
        self._stream.write(line + "\n")

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.flush()
        if self._stream is not sys.__stdout__:
            self._stream.close()


def open_access_log(path: str, format: str) -> AccessLog | None:
    """"" = off, "-" = standard output, else a file opened for appending."""
    if not path:
        return None
    if path == "-":
        # The process's own standard output, not twistd's logging stand-in
        # for sys.stdout: an access line stays a line of its own, not a
        # "[stdout#info]" message inside the log.
        return AccessLog(sys.__stdout__, format)
    return AccessLog(open(path, "a", buffering=1 << 16, encoding="utf-8"), format)
