"""
When to order: first issue, renewal, and retries after a failure (pure).

A certificate is renewed when its CA's renewal information (ARI) says so,
else when less than ``renew_fraction`` of its lifetime is left (a third,
as Let's Encrypt advises).  A failed order is retried after a doubling
delay, capped, and never sooner than the CA's ``Retry-After``; the
certificate it was meant to replace stays in service meanwhile.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from edge.acme.names import Wanted
from edge.tls.store import CertifiedKey

__all__ = ["Managed", "renewal_time", "backoff", "RETRY_BASE", "RETRY_CAP", "RETRY_AFTER_CAP"]

RETRY_BASE = 60.0
RETRY_CAP = 6 * 3600.0
# A Retry-After beyond this is taken as this (a typo'd header must not park a name for a year).
RETRY_AFTER_CAP = 7 * 86400.0


def renewal_time(
    certified: CertifiedKey, fraction: float, ari: datetime.datetime | None = None
) -> datetime.datetime:
    """ARI's suggestion if there is one, else ``fraction`` of the lifetime before not-after."""
    if ari is not None:
        return min(ari, certified.not_after)
    lifetime = certified.not_after - certified.not_before
    return certified.not_after - lifetime * fraction


def backoff(failures: int, retry_after: float | None = None, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> float:
    """Seconds before the next attempt after ``failures`` failures in a row (>= 1)."""
    delay = min(cap, base * 2 ** max(0, failures - 1))
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


@dataclass
class Managed:
    """One managed certificate and its ordering history (reactor thread only)."""

    wanted: Wanted
    certified: CertifiedKey | None = None
    ari: datetime.datetime | None = None
    last_attempt: datetime.datetime | None = None
    last_error: str = ""
    failures: int = 0
    not_before_attempt: datetime.datetime | None = None
    ordering: bool = False
    orders: int = 0
    path: str = ""
    notes: list = field(default_factory=list)

    def renew_at(self, fraction: float) -> datetime.datetime | None:
        if self.certified is None:
            return None
        return renewal_time(self.certified, fraction, self.ari)

    def due(self, now: datetime.datetime, fraction: float) -> bool:
        if self.ordering:
            return False
        if self.not_before_attempt is not None and now < self.not_before_attempt:
            return False
        renew_at = self.renew_at(fraction)
        return renew_at is None or now >= renew_at

    def serving(self, now: datetime.datetime) -> CertifiedKey | None:
        """The certificate while it is valid; an expired one is never served."""
        if self.certified is not None and self.certified.not_after > now:
            return self.certified
        return None
