"""
Labels of the ``retry``, ``circuitBreaker`` and ``buffering`` middlewares
(v2/v3) and Traefik 1.7's ``traefik.backend.circuitbreaker`` /
``maxconn`` / ``buffering`` options, read into snapshot values.

:func:`build` and :func:`v1_backend` are called by :mod:`edge.discovery.labels`
with its reader (which collects warnings and errors for ``edge check`` and the
log).  A value that cannot be used is an error naming the label, and the
middleware is broken: the routers using it are dropped, as for any broken
middleware, rather than served without the behaviour asked for.
"""

from __future__ import annotations

from edge.expression import CIRCUIT_BREAKER, RETRY, ExpressionError, parse
from edge.snapshot import MAX_RETRY_ATTEMPTS as MAX_ATTEMPTS, Buffering, CircuitBreaker, InFlightReq, Retry

__all__ = ["KINDS", "build", "v1_backend", "is_v1_backend"]

KINDS = frozenset({"retry", "circuitbreaker", "buffering"})
_V1_PREFIXES = ("circuitbreaker.", "maxconn.", "buffering.")
_BYTES_MAX = 2**63 - 1


def is_v1_backend(opt: str) -> bool:
    """Whether ``traefik.backend.<opt>`` is one read here (``opt`` lower case)."""
    return opt.startswith(_V1_PREFIXES)


def _expression(reader, label: str, value: str, functions) -> str | None:
    try:
        parse(value, functions)
    except ExpressionError as e:
        reader.error(label, f"label {label}: {value!r} is not an expression edge can evaluate: {e}")
        return None
    return value.strip()


def _interval(reader, label: str, value: str, default: float) -> float:
    if value.strip() in ("0", "0s", "0ms"):
        return 0.0
    return reader.duration(label, value, default)


def build(reader, kind: str, opts: dict[str, tuple[str, str]]):
    """A Retry, CircuitBreaker or Buffering from its options, or a str: why it cannot be built."""
    values: dict = {}
    if kind == "retry":
        for opt, (label, value) in opts.items():
            if opt == "attempts":
                attempts = reader.integer(label, value, None, 1, 2**31 - 1)
                if attempts is None:
                    return "its attempts is not a positive number"
                if attempts > MAX_ATTEMPTS:
                    reader.warn(label, f"label {label}: edge makes at most {MAX_ATTEMPTS} attempts")
                values["attempts"] = min(attempts, MAX_ATTEMPTS)
            elif opt == "initialinterval":
                values["initial_interval"] = _interval(reader, label, value, 0.1)
            else:
                reader.unknown(label)
        if "attempts" not in values:
            return "it has no attempts"
        return Retry(**values)

    if kind == "circuitbreaker":
        durations = {"checkperiod": ("check_period", 0.1), "fallbackduration": ("fallback_duration", 10.0),
                     "recoveryduration": ("recovery_duration", 10.0)}
        for opt, (label, value) in opts.items():
            if opt == "expression":
                expression = _expression(reader, label, value, CIRCUIT_BREAKER)
                if expression is None:
                    return "its expression does not parse"
                values["expression"] = expression
            elif opt in durations:
                field, default = durations[opt]
                values[field] = reader.duration(label, value, default)
            elif opt == "responsecode":
                code = reader.integer(label, value, None, 100, 599)
                if code is None:
                    return "its responseCode is not an HTTP status"
                values["response_code"] = code
            else:
                reader.unknown(label)
        if "expression" not in values:
            return "it has no expression"
        return CircuitBreaker(**values)

    # buffering
    for opt, (label, value) in opts.items():
        if opt in ("maxrequestbodybytes", "memrequestbodybytes"):
            number = reader.integer(label, value, None, 0, _BYTES_MAX)
            if number is None:
                return f"its {opt} is not a number of bytes"
            values["max_request_body_bytes" if opt == "maxrequestbodybytes" else "mem_request_body_bytes"] = number
        elif opt in ("maxresponsebodybytes", "memresponsebodybytes"):
            number = reader.integer(label, value, None, 0, _BYTES_MAX)
            if number is None:
                return f"its {opt} is not a number of bytes"
            if opt == "maxresponsebodybytes":
                values["max_response_body_bytes"] = number
        elif opt == "retryexpression":
            if value.strip():
                expression = _expression(reader, label, value, RETRY)
                if expression is None:
                    return "its retryExpression does not parse"
                values["retry_expression"] = expression
        else:
            reader.unknown(label)
    return Buffering(**values)


def v1_backend(reader, opts: dict[str, tuple[str, str]], extractor) -> tuple[tuple, bool]:
    """
    Traefik 1.7 ``traefik.backend.circuitbreaker.expression``,
    ``maxconn.amount``/``extractorfunc`` and ``buffering.*`` (``opts`` keyed
    by the part after ``traefik.backend.``, lower case): the middlewares for
    every router of the service, and False when one cannot be built (the
    routers are then dropped).  ``extractor(reader, label, value)`` reads an
    ``extractorFunc`` into a SourceCriterion, or None.
    """
    built: list = []
    ok = True
    groups: dict[str, dict[str, tuple[str, str]]] = {}
    for opt, pair in opts.items():
        group, _, rest = opt.partition(".")
        groups.setdefault(group, {})[rest] = pair
    maxconn = groups.pop("maxconn", None)
    if maxconn is not None:
        amount_pair = maxconn.pop("amount", None)
        func_pair = maxconn.pop("extractorfunc", None)
        for _rest, (label, _value) in maxconn.items():
            reader.unknown(label)
        if amount_pair is None or func_pair is None:
            # Traefik 1.7 builds the limit only from both labels together.
            label = (func_pair or amount_pair)[0]
            reader.warn(label, "traefik.backend.maxconn needs both .amount and .extractorfunc; ignored"
                               " (as in Traefik 1.7)")
        else:
            amount = reader.integer(amount_pair[0], amount_pair[1], None, 1, 2**31 - 1)
            criterion = extractor(reader, *func_pair)
            if amount is None or criterion is None:
                ok = False
            else:
                built.append(InFlightReq(amount=amount, source=criterion))
    for group in ("circuitbreaker", "buffering"):
        options = groups.pop(group, None)
        if options is None:
            continue
        result = build(reader, group, options)
        if isinstance(result, str):
            label = next(iter(options.values()))[0]
            reader.error(label, f"traefik.backend.{group} cannot be used ({result}); the service's frontends"
                                " are dropped")
            ok = False
        else:
            built.append(result)
    for options in groups.values():
        for label, _value in options.values():
            reader.unknown(label)
    return tuple(built), ok
