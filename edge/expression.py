"""
The small expression language of Traefik's ``circuitBreaker.expression`` and
``buffering.retryExpression`` (oxy's predicates), parsed here, never eval'd.

Grammar::

    expr    := and ( "||" and )*
    and     := primary ( "&&" primary )*
    primary := "(" expr ")" | operand [ cmp operand ]
    operand := NAME "(" [ NUMBER ( "," NUMBER )* ] ")" | NUMBER
    cmp     := ">" | ">=" | "<" | "<=" | "==" | "!="

The functions are given by the caller as ``name -> (arity, boolean)``; a
boolean function may stand alone (``IsNetworkError()``), a number may not,
and a comparison needs a function on at least one side.  :func:`parse`
returns a function ``values -> bool`` where ``values(name, args)`` supplies
each function's current value; a text that does not fit raises
:class:`ExpressionError` saying where.
"""

from __future__ import annotations

import operator
import re

__all__ = ["ExpressionError", "parse", "CIRCUIT_BREAKER", "RETRY"]

# Functions of circuitBreaker.expression: (arity, boolean result).
CIRCUIT_BREAKER = {
    "NetworkErrorRatio": (0, False),
    "ResponseCodeRatio": (4, False),
    "LatencyAtQuantileMS": (1, False),
}
# Functions of buffering.retryExpression.
RETRY = {
    "Attempts": (0, False),
    "ResponseCode": (0, False),
    "IsNetworkError": (0, True),
}

_MAX_LENGTH = 1024
_MAX_DEPTH = 32
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z_][A-Za-z0-9_]*)|(&&|\|\||>=|<=|==|!=|[<>(),]))")
_CMP = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
        "==": operator.eq, "!=": operator.ne}


class ExpressionError(ValueError):
    """An expression that does not parse; the message says what and where."""


def _tokens(text: str) -> list[tuple[str, object, int]]:
    out = []
    pos = 0
    end = len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"unexpected {text[pos:].strip()[:10]!r} at position {pos}")
        number, name, op = m.groups()
        start = m.start(m.lastindex)
        if number is not None:
            out.append(("num", float(number), start))
        elif name is not None:
            out.append(("name", name, start))
        else:
            out.append(("op", op, start))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, functions: dict):
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self.functions = functions

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else ("end", None, -1)

    def take(self, op: str | None = None):
        tok = self.peek()
        if op is not None and (tok[0] != "op" or tok[1] != op):
            where = "the end" if tok[0] == "end" else f"{tok[1]!r} at position {tok[2]}"
            raise ExpressionError(f"expected {op!r}, found {where}")
        self.i += 1
        return tok

    def expr(self):
        terms = [self.conj()]
        while self.peek()[:2] == ("op", "||"):
            self.take()
            terms.append(self.conj())
        if len(terms) == 1:
            return terms[0]
        return lambda values: any(t(values) for t in terms)

    def conj(self):
        terms = [self.primary()]
        while self.peek()[:2] == ("op", "&&"):
            self.take()
            terms.append(self.primary())
        if len(terms) == 1:
            return terms[0]
        return lambda values: all(t(values) for t in terms)

    def primary(self):
        if self.peek()[:2] == ("op", "("):
            self.take()
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise ExpressionError(f"the expression nests more than {_MAX_DEPTH} parentheses deep")
            inner = self.expr()
            self.take(")")
            self.depth -= 1
            return inner
        left, left_bool, left_fn = self.operand()
        tok = self.peek()
        if tok[0] == "op" and tok[1] in _CMP:
            self.take()
            right, right_bool, right_fn = self.operand()
            if left_bool or right_bool:
                raise ExpressionError(f"{tok[1]!r} at position {tok[2]} compares a true/false function")
            if not (left_fn or right_fn):
                raise ExpressionError(f"{tok[1]!r} at position {tok[2]} compares two numbers")
            cmp = _CMP[tok[1]]
            return lambda values: cmp(left(values), right(values))
        if not left_bool:
            raise ExpressionError(f"a number is not a condition (at position {tok[2] if tok[2] >= 0 else 'end'});"
                                  " compare it, e.g. NetworkErrorRatio() > 0.5")
        return left

    def operand(self):
        kind, value, pos = self.take()
        if kind == "num":
            return (lambda values, v=value: v), False, False
        if kind != "name":
            where = "the end" if kind == "end" else f"{value!r} at position {pos}"
            raise ExpressionError(f"expected a function or a number, found {where}")
        if value not in self.functions:
            known = ", ".join(f"{n}()" for n in self.functions)
            raise ExpressionError(f"unknown function {value!r} at position {pos} (known: {known})")
        arity, boolean = self.functions[value]
        self.take("(")
        args: list[float] = []
        while self.peek()[:2] != ("op", ")"):
            if args:
                self.take(",")
            tok = self.take()
            if tok[0] != "num":
                raise ExpressionError(f"{value}() takes numbers, found {tok[1]!r}")
            args.append(tok[1])
        self.take(")")
        if len(args) != arity:
            raise ExpressionError(f"{value}() takes {arity} argument{'s' if arity != 1 else ''}, got {len(args)}")
        name, frozen = value, tuple(args)
        return (lambda values: values(name, frozen)), boolean, True


def parse(text: str, functions: dict):
    """``text`` as a function ``values -> bool`` (see the module docstring)."""
    if not text.strip():
        raise ExpressionError("the expression is empty")
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {_MAX_LENGTH} characters")
    parser = _Parser(text, functions)
    tree = parser.expr()
    tok = parser.peek()
    if tok[0] != "end":
        raise ExpressionError(f"unexpected {tok[1]!r} at position {tok[2]}")
    return tree
