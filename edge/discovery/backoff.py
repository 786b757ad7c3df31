"""
Capped exponential back-off with jitter, for reconnecting to a source.

Full jitter (a random pause between half and all of the exponential step)
keeps many edge instances from hammering a restarted daemon in lockstep.
"""

from __future__ import annotations

import random as _random
from typing import Callable

__all__ = ["Backoff"]


class Backoff:
    """
    Pauses that grow ``initial * factor**n`` up to ``maximum`` seconds.

    ``next()`` returns the pause before the next attempt; ``reset()`` after a
    success starts again from ``initial``.  ``random`` is injectable so tests
    get exact values.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        random: Callable[[], float] = _random.random,
    ):
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial <= maximum, factor >= 1, 0 <= jitter <= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._random = random
        self.attempts = 0

    def next(self) -> float:
        step = min(self.maximum, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        # Between (1 - jitter) * step and step.
        return step * (1 - self.jitter * self._random())

    def reset(self) -> None:
        self.attempts = 0
