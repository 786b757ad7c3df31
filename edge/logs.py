"""
Log observers for twistd: readable text by default, flat JSON lines on request.

JSON lines are what ``jq``, Loki and friends take: one object per line with
an RFC 3339 ``time``, ``level``, ``namespace``, the rendered ``message``, the
event's own fields, and a failure's traceback as one string.  Twisted's own
chatter (a line per port opened or closed, per UDP client of the DNS
forwarder, per factory started) is demoted to ``debug`` in both formats, so
``info`` carries what an admin needs: listeners, snapshots, problems, reloads.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    ILogObserver,
    LogLevelFilterPredicate,
    eventAsText,
    formatEvent,
)
from zope.interface import implementer

from edge.redact import redact_text

__all__ = ["make_observer", "event_as_json", "demote_noise"]

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

# Messages Twisted logs at info for every port, protocol and factory.
_NOISE = re.compile(
    r"^\(?(?:"
    r".+ starting on \S+"  # "ProxyFactory starting on 80", "ProxyFactory (TLS) starting on 443"
    r"|(?:TCP|UDP|SSL|Unix)\w* Port \S+ Closed"  # "(UDP Port 43121 Closed)"
    r"|Starting protocol .+|Stopping protocol .+"
    r"|Starting factory .+|Stopping factory .+"
    r")\)?$"
)


def demote_noise(event: dict) -> dict:
    """``event`` at ``debug`` when it is one of Twisted's per-port/per-protocol lines."""
    level = event.get("log_level")
    if level is not LogLevel.info or event.get("log_failure") is not None:
        return event
    text = event.get("log_text")  # legacy twisted.python.log events
    if text is None:
        message = event.get("message")
        if isinstance(message, tuple) and len(message) == 1:
            text = message[0]
        else:
            text = event.get("log_format")
    if isinstance(text, str) and _NOISE.match(text.strip()):
        event = dict(event, log_level=LogLevel.debug)
    return event


def rfc3339(seconds: float | None) -> str | None:
    """``seconds`` since the epoch as RFC 3339 UTC with milliseconds (``...T15:16:55.449Z``)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value):
    """A JSON-ready form of an event field (repr() for what JSON cannot hold)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


# Fields of legacy (twisted.python.log) events that are not the event's own.
_LEGACY = {"message", "time", "system", "format", "isError", "why", "failure", "printed", "factory", "protocol"}


def event_as_json(event: dict) -> str:
    """One flat JSON object for ``event``, without a trailing newline."""
    level = event.get("log_level") or LogLevel.info
    record = {
        "time": rfc3339(event.get("log_time")),
        "level": level.name,
        "namespace": event.get("log_namespace") or "-",
        "message": redact_text(formatEvent(event)),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # a failure that cannot even print itself
            record["traceback"] = repr(failure)
        record.setdefault("error", failure.getErrorMessage())
    legacy = "log_legacy" in event or event.get("log_namespace") == "log_legacy"
    for key, value in event.items():
        if key.startswith("log_") or key in record or (legacy and key in _LEGACY):
            continue
        value = _plain(value)
        record[key] = redact_text(value) if isinstance(value, str) else value
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _text(event: dict) -> str | None:
    text = eventAsText(event, includeSystem=True)
    return redact_text(text) + "\n" if text else None


@implementer(ILogObserver)
class _Demoting:
    """Passes events on with Twisted's noise demoted, before the level filter."""

    def __init__(self, observer):
        self._observer = observer

    def __call__(self, event: dict) -> None:
        self._observer(demote_noise(event))


def make_observer(format: str = "text", level: str = "info", stream=None):
    """An observer writing ``format`` ("text" or "json") at ``level`` and above."""
    stream = stream or sys.stdout
    if format == "json":
        observer = FileLogObserver(stream, lambda event: event_as_json(event) + "\n")
    else:
        observer = FileLogObserver(stream, _text)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return _Demoting(FilteringLogObserver(observer, [predicate]))

