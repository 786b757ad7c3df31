"""
Which configured listeners are actually listening.

Every front end binds its ports while twistd starts the service tree; a port
that cannot be had raises :class:`ListenError`, whose one line stops start-up
(``twistd edge`` exits non-zero).  Afterwards the :class:`ListenerBoard` is
what ``/healthz``, the admin API and the start-up summary ask: it reads each
listener's port when asked, so a port that stops listening later (or a new
address a reload could not bind) shows up at once as a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["ListenError", "ListenerBoard", "ListenerState", "describe_error"]


class ListenError(Exception):
    """A configured listener could not start; ``str()`` is the one line shown."""


def describe_error(error: BaseException) -> str:
    """``[Errno 98] Address already in use`` and friends, without Twisted's wrapping."""
    socket_error = getattr(error, "socketError", None)  # CannotListenError
    if socket_error is not None:
        error = socket_error
    strerror = getattr(error, "strerror", None)
    if strerror:
        return strerror
    return str(error) or type(error).__name__


@dataclass(frozen=True)
class ListenerState:
    """One configured listener as it is right now."""

    kind: str  # "http", "https", "dns", "admin"
    name: str  # entry point name, "udp 127.0.0.1", ...
    address: str
    listening: bool
    error: str = ""

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "address": self.address,
            "state": "listening" if self.listening else "not listening",
            "error": self.error,
        }


def _is_listening(port) -> bool:
    # Twisted's ports set ``connected`` while bound and clear it on close;
    # a port object without the flag is taken at its word.
    return port is not None and bool(getattr(port, "connected", True))


class ListenerBoard:
    """The listeners edge was configured with and a way to read each one's port."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, str, str, Callable[[], object], Callable[[], str]]] = []

    def expect(
        self,
        kind: str,
        name: str,
        address: str,
        port: Callable[[], object],
        error: Callable[[], str] = lambda: "",
    ) -> None:
        """``port()`` returns the listening port (or None); ``error()`` why it is missing."""
        self._entries.append((kind, name, address, port, error))

    def states(self) -> tuple[ListenerState, ...]:
        found = []
        for kind, name, address, port, error in self._entries:
            up = _is_listening(port())
            found.append(
                ListenerState(kind, name, address, up, "" if up else (error() or "not listening"))
            )
        return tuple(found)

    def failed(self) -> tuple[ListenerState, ...]:
        return tuple(s for s in self.states() if not s.listening)
