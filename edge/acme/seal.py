"""
Messages between edge instances, sealed with the cluster's shared secret.

AES-256-GCM under a key derived (HKDF-SHA256) from the secret file's
content: a message is confidential (certificate keys travel in them) and
authentic (only holders of the secret can make one).  The request path is
bound in as associated data, so a message for one endpoint cannot be
replayed at another, and every message carries its time: older than
``max_age`` seconds is refused.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Sealer", "SealError", "MAX_MESSAGE"]

MAX_MESSAGE = 4 << 20  # a few certificates; far above one message's size


class SealError(Exception):
    """A message that is not authentic, too old, or not JSON."""


class Sealer:
    def __init__(self, secret: bytes, max_age: float = 120.0, clock: Callable[[], float] = time.time):
        if len(secret.strip()) < 16:
            raise ValueError("the cluster secret must be at least 16 bytes")
        key = HKDF(hashes.SHA256(), 32, salt=None, info=b"edge acme peers v1").derive(secret.strip())
        self._aead = AESGCM(key)
        self._max_age = max_age
        self._clock = clock

    @classmethod
    def from_file(cls, path: str) -> "Sealer":
        with open(path, "rb") as f:
            return cls(f.read(4096))

    def seal(self, purpose: bytes, value: dict) -> bytes:
        nonce = os.urandom(12)
        body = json.dumps({"t": self._clock(), "v": value}).encode()
        return nonce + self._aead.encrypt(nonce, body, purpose)

    def open(self, purpose: bytes, data: bytes) -> dict:
        if len(data) < 29 or len(data) > MAX_MESSAGE:
            raise SealError("bad message size")
        try:
            body = json.loads(self._aead.decrypt(data[:12], data[12:], purpose))
        except InvalidTag:
            raise SealError("not sealed with this cluster's secret") from None
        except ValueError:
            raise SealError("not JSON") from None
        if not isinstance(body, dict) or abs(self._clock() - float(body.get("t", 0))) > self._max_age:
            raise SealError("too old (or the clocks differ by minutes)")
        value = body.get("v")
        if not isinstance(value, dict):
            raise SealError("no value")
        return value
