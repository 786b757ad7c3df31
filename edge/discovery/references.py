"""
Middlewares the config file defines, for its routes and for Docker labels.

``[middlewares.<name>.<kind>]`` is Traefik's dynamic
``[http.middlewares.<name>.<kind>]`` (edge's ``[http]`` holds the proxy's
settings).  Its keys become the options a label would carry
(``headers.customResponseHeaders.X-Frame = "DENY"`` is
``...headers.customresponseheaders.X-Frame=DENY``) and are built by the
labels' own code, so every kind labels support works from the file.  They
are ``<name>@file``: a label ``middlewares=auth@file`` uses one, and a
route's plain ``auth`` means the file's (Traefik's rule: a plain name is the
router's own provider's).  One that does not build is a configuration error,
so start-up stops and a reload is rejected with the running routes kept.

:class:`FileMiddlewares` carries them to the Docker provider's builds and
tells it to build again when a reload changes them.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Mapping

from edge.snapshot import Problem

__all__ = [
    "FileMiddlewares", "label_options", "read_files", "file_middlewares", "route_middlewares", "first_error",
]

PROVIDER = "file"


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    kind = "a date or time" if isinstance(value, (datetime.date, datetime.time)) else type(value).__name__
    raise ValueError(f"{key}: expected a string, number, true/false or a list of them, got {kind}")


def _flatten(key: str, written: str, value: Any, out: list[tuple[str, str, str]]) -> None:
    if isinstance(value, dict):
        if not value:
            out.append((key, written, ""))
        for name, inner in value.items():
            _flatten(f"{key}.{name}", f"{written}.{name}" if written else name, inner, out)
        return
    if isinstance(value, list):
        items = [_scalar(f"{key}[{i}]", item) for i, item in enumerate(value)]
        with_comma = [item for item in items if "," in item]
        if with_comma:
            # Labels separate list items with commas; one inside an item would split it.
            raise ValueError(f"{key}: list items cannot hold a comma, got {with_comma[0]!r}")
        out.append((key, written, ",".join(items)))
        return
    out.append((key, written, _scalar(key, value)))


def label_options(name: str, table: Any) -> tuple[tuple[str, str, str], ...]:
    """
    ``[middlewares.<name>]`` as ``(kind, option as written with dots, value)``
    triples in label form; a kind with no options is ``(kind, "", "")``.
    Raises ``ValueError`` (``"key: message"``) for a shape labels cannot say.
    """
    key = f"middlewares.{name}"
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{key}: expected one table naming the middleware's kind, e.g. [{key}.basicAuth]")
    out: list[tuple[str, str, str]] = []
    for kind, options in table.items():
        if not isinstance(options, dict):
            raise ValueError(
                f"{key}.{kind}: expected a table of the {kind} middleware's options ([{key}.{kind}])"
            )
        flat: list[tuple[str, str, str]] = []
        _flatten(f"{key}.{kind}", "", options, flat)
        out.extend((kind, written, value) for _key, written, value in flat)
    return tuple(out)


def read_files(name: str, options: tuple[tuple[str, str, str], ...]):
    """
    The files the options name (``usersFile``, forwardAuth's ``tls.ca``...),
    read with the config file itself so that building stays pure.
    """
    from edge.discovery.labels import read_label_files

    labels = {f"traefik.http.middlewares.{name}.{kind}.{written}": value for kind, written, value in options if written}
    return read_label_files([labels])


def _kinds(name: str, options: tuple[tuple[str, str, str], ...]) -> dict:
    """Options as the labels' builder takes them: kind -> option -> (key, written, value)."""
    kinds: dict[str, dict[str, tuple[str, str, str]]] = {}
    for kind, written, value in options:
        opts = kinds.setdefault(kind.lower(), {})
        if written:
            opts[written.lower()] = (f"middlewares.{name}.{kind}.{written}", written, value)
    return kinds


def file_middlewares(config) -> tuple[dict[str, object], tuple[Problem, ...]]:
    """
    The config file's usable middlewares by qualified name (``auth@file``),
    and the problems of those that are not (each an ``error`` or a warning).
    """
    from edge.discovery.labels import build_file_middleware, resolve_references

    source = config.source or "config"
    built: dict[str, object] = {}
    problems: list[Problem] = []
    for middleware in config.middlewares:
        value, found = build_file_middleware(
            source, middleware.name, _kinds(middleware.name, middleware.options), middleware.files
        )
        problems.extend(found)
        if value is not None:
            built[f"{middleware.name}@{PROVIDER}"] = value
    # A chain's members must exist here and not loop: resolve each as a router would.
    for qualified in list(built):
        name = qualified.rsplit("@", 1)[0]
        _used, keep, found = resolve_references(
            source, PROVIDER, name, f"middlewares.{name}", (qualified,), {}, built
        )
        if not keep:
            problems.extend(
                Problem(p.source, p.message.replace(f"router {name}: ", f"middleware {name}: ", 1), p.level, p.label)
                for p in found
            )
            del built[qualified]
    return built, tuple(problems)


def route_middlewares(config, route, available: Mapping[str, object]):
    """A static route's ``middlewares``: (values in order, keep the route, problems)."""
    from edge.discovery.labels import resolve_references

    local = {qualified.rsplit("@", 1)[0]: value for qualified, value in available.items()}
    return resolve_references(
        config.source or "config", PROVIDER, route.name, f"routes.{route.name}.middlewares",
        route.middlewares, local, available,
    )


def first_error(problems) -> tuple[str, str] | None:
    """(key, message) of the first problem, for a configuration error; None when there is none."""
    for problem in problems:
        message = problem.message
        for prefix in (f"label {problem.label}: ", f"{problem.label}: "):
            message = message.replace(prefix, "", 1)
        message = message.replace(f"unknown label {problem.label} is ignored", "unknown option")
        message = message.replace(f"label {problem.label} is not supported by edge and is ignored", "not supported by edge")
        # What a router would suffer does not apply: the whole file is refused.
        message = message.split("; router dropped", 1)[0]
        return problem.label or "middlewares", message
    return None


class FileMiddlewares:
    """
    The config file's middlewares as Docker labels see them.  The static
    provider replaces them on reload; listeners (the Docker provider's
    rebuild) are called when they changed.
    """

    def __init__(self, middlewares: Mapping[str, object] | None = None):
        self.current: dict[str, object] = dict(middlewares or {})
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def replace(self, middlewares: Mapping[str, object]) -> None:
        if dict(middlewares) == self.current:
            return
        self.current = dict(middlewares)
        for callback in list(self._listeners):
            callback()

    def build(self, state, config, me):
        """The Docker provider's build: :func:`build_snapshot` with these middlewares."""
        from edge.discovery.build import build_snapshot

        return build_snapshot(state, config, me, file_middlewares=self.current)
