"""
Secrets out of everything written for people: snapshot JSON, the admin API,
problem messages and log lines.

Password hashes (bcrypt, ``$apr1$``, ``{SHA}``) are offline-crackable, and a
label or config line that was meant to hold one sometimes holds the password
itself; custom headers may carry tokens.  edge needs these values to route,
nobody needs to read them back: users keep their name, the rest shows as
``<hidden>``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["HIDDEN", "redact_text", "redact_snapshot_data", "sensitive_header"]

HIDDEN = "<hidden>"

_SECRETS = re.compile(
    r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}"  # bcrypt
    r"|\$apr1\$[./0-9A-Za-z]{0,8}\$[./0-9A-Za-z]{22}"  # Apache MD5
    r"|\{SHA\}[A-Za-z0-9+/]{27}="  # SHA-1
)
# "expected user:hash entries, got 'hunter2'": what was given in place of a hash.
_GIVEN = re.compile(r"((?:user|name):hash['\"]?(?: entries)?,? got )(['\"]).*?\2")

_SENSITIVE_HEADER = re.compile(r"authorization|cookie|token|secret|password|passwd|api[-_]?key|auth", re.I)


def redact_text(text: str) -> str:
    """``text`` with password hashes and would-be passwords replaced by ``<hidden>``."""
    if "$" not in text and "{SHA}" not in text and ":hash" not in text:
        return text
    text = _SECRETS.sub(HIDDEN, text)
    return _GIVEN.sub(lambda m: f"{m.group(1)}{m.group(2)}{HIDDEN}{m.group(2)}", text)


def sensitive_header(name: str) -> bool:
    return bool(_SENSITIVE_HEADER.search(name))


def _user(entry: Any) -> str:
    name, sep, _ = str(entry).partition(":")
    return f"{name}:{HIDDEN}" if sep else HIDDEN


def _headers(pairs: Any) -> Any:
    if not isinstance(pairs, list):
        return pairs
    out = []
    for pair in pairs:
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and sensitive_header(str(pair[0])):
            out.append([pair[0], HIDDEN])
        else:
            out.append(pair)
    return out


def _middleware(data: dict) -> dict:
    data = dict(data)
    if isinstance(data.get("users"), list):
        data["users"] = [_user(u) for u in data["users"]]
    for key in ("custom_request", "custom_response"):
        if key in data:
            data[key] = _headers(data[key])
    return data


def redact_snapshot_data(data: dict) -> dict:
    """A copy of :func:`edge.discovery.jsonview.snapshot_to_data`'s output without secrets."""
    data = dict(data)
    routers = []
    for router in data.get("routers", ()):
        router = dict(router)
        router["middlewares"] = [_middleware(m) for m in router.get("middlewares", ())]
        routers.append(router)
    data["routers"] = routers
    problems = []
    for problem in data.get("problems", ()):
        problem = dict(problem)
        if isinstance(problem.get("message"), str):
            problem["message"] = redact_text(problem["message"])
        problems.append(problem)
    data["problems"] = problems
    return data
