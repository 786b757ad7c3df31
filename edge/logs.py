"""Log observers for twistd: readable text by default, JSON lines on request."""

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

__all__ = ["make_observer"]

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


def make_observer(format: str = "text", level: str = "info", stream=None):
    """An observer writing ``format`` ("text" or "json") at ``level`` and above."""
    stream = stream or sys.stdout
    if format == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(observer, [predicate])
