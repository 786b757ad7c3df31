"""
SIGHUP: re-read the configuration file and hand it to every service.

The file is read and checked completely before anything changes; a mistake
is logged in one line and the running configuration stays.  A good one goes
to every service in the tree that has a ``reload(config)`` method (the TLS
service re-reads its certificate directory there), in tree order.

SIGTERM needs nothing here: twistd stops the service tree and waits for the
Deferreds that ``stopService`` returns, which is where the HTTP front end
lets requests in flight finish within ``[http] shutdown_grace``.
"""

from __future__ import annotations

import inspect
import signal
from typing import Callable

from twisted.application.service import IService, Service
from twisted.logger import Logger

from edge.admin.service import walk
from edge.config import Config, ConfigError

__all__ = ["ReloadService"]


def _takes_config(method) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters
    )


class ReloadService(Service):
    """Installs the SIGHUP handler while running; ``load`` builds the new config."""

    _log = Logger()

    def __init__(self, load: Callable[[], Config], reactor, signum: int = signal.SIGHUP):
        self._load = load
        self._reactor = reactor
        self._signum = signum
        self._previous = None
        self.reloads = 0
        self.rejected = 0

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self._signum, self._on_signal)

    def stopService(self):
        if self._previous is not None:
            signal.signal(self._signum, self._previous)
            self._previous = None
        return super().stopService()

    def _on_signal(self, signum, frame) -> None:
        # A signal handler may run between any two bytecodes of the reactor
        # thread: only queue the work and wake the reactor.
        self._reactor.callFromThread(self.handle_hangup)

    def _root(self) -> IService:
        node: IService = self
        while getattr(node, "parent", None) is not None:
            node = node.parent
        return node

    def handle_hangup(self) -> bool:
        """Reload now; True when the new configuration was taken."""
        self._log.info("SIGHUP: re-reading the configuration")
        try:
            config = self._load()
        except ConfigError as e:
            self.rejected += 1
            self._log.error(
                "Configuration reload rejected, keeping the running configuration: {error}",
                error=str(e),
            )
            return False
        except Exception:
            self.rejected += 1
            self._log.failure("Configuration reload failed, keeping the running configuration")
            return False
        root = self._root()
        for service in walk(root):
            if service is self:
                continue
            reload = getattr(service, "reload", None)
            if not callable(reload):
                continue
            try:
                if _takes_config(reload):
                    reload(config)
                else:  # e.g. TLS: re-reads its certificate directory
                    reload()
            except Exception:
                self._log.failure(
                    "Service {service!r} failed to take the new configuration",
                    service=getattr(service, "name", None) or type(service).__name__,
                )
        if hasattr(root, "config"):
            root.config = config
        self.reloads += 1
        self._log.info(
            "Configuration reloaded from {source}", source=config.source or "defaults and flags"
        )
        return True
