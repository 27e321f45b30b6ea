"""The syntax of the ``${...}`` language: its tree, tokenizer and parser, and `unparse`.

An expression is parsed here by hand (a tokenizer and a recursive-descent parser; never
``eval``) into a small tree of frozen nodes. The grammar, loosest first (``==`` does not
chain; ``not a == b`` is ``not (a == b)``)::

    expression := and ( "or" and )*
    and        := not ( "and" not )*
    not        := "not" not | compare
    compare    := primary ( ( "==" | "!=" ) primary )?
    primary    := literal | reference | "(" expression ")"
    reference  := "params" "." NAME path
                | "steps" "." NAME "." ( "result" path | "phase" )
                | "item" path
    path       := ( "." KEY | "[" INTEGER "]" | "[" STRING "]" )*
    literal    := STRING | INTEGER | FLOAT | "true" | "false" | "null"

Strings are quoted with ``'`` or ``"`` and take the escapes ``\\\\ \\' \\" \\n \\r \\t \\uXXXX``.
Names and keys are ``[A-Za-z_][A-Za-z0-9_-]*`` (a key that is not: ``["a key"]``). An error
names the column and what was expected there. Templates and evaluation:
`corra.workflows._expressions`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TypeAlias

import attrs

from corra._errors import ExpressionSyntaxError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
_KEYWORDS = {"true": True, "false": False, "null": None}
_VALUE = "a value (a literal, params.NAME, steps.NAME.result, steps.NAME.phase, item, not, '(')"


# The tree ------------------------------------------------------------------------------------


@attrs.frozen
class Literal:
    value: str | int | float | bool | None


@attrs.frozen
class Reference:
    """``params.NAME path``, ``steps.NAME.result path``, ``steps.NAME.phase`` or ``item path``.

    Attributes:
        root: ``"params"``, ``"steps"`` or ``"item"``.
        name: the param's or the step's name; None for ``item``.
        attribute: ``"result"`` or ``"phase"`` for a step; None else.
        path: the keys (str) and indexes (int) that follow.
    """

    root: str
    name: str | None = None
    attribute: str | None = None
    path: tuple[str | int, ...] = ()


@attrs.frozen
class Not:
    operand: Expression


@attrs.frozen
class BinaryOp:
    """``left OP right`` with OP one of ``and``, ``or``, ``==``, ``!=``."""

    op: str
    left: Expression
    right: Expression


Expression: TypeAlias = Literal | Reference | Not | BinaryOp


# Tokens --------------------------------------------------------------------------------------


@attrs.frozen
class _Token:
    kind: str  # "name", "number", "string", "op", "end"
    value: Any
    offset: int
    text: str


class _Tokens:
    """The tokens of one expression in ``source`` from ``start``: up to a ``}`` (in a
    template) or the end of the text."""

    def __init__(self, source: str, start: int, in_template: bool) -> None:
        self.source = source
        self.start = start
        self.in_template = in_template
        self.tokens = list(self._scan(start))
        self.index = 0

    def fail(self, offset: int, message: str) -> ExpressionSyntaxError:
        return ExpressionSyntaxError(self.source, offset + 1, message)

    def _scan(self, offset: int) -> Iterator[_Token]:
        source = self.source
        while True:
            while offset < len(source) and source[offset] in " \t\r\n":
                offset += 1
            if offset >= len(source):
                if self.in_template:
                    raise self.fail(self.start - 2, "unterminated '${': no '}' closes it")
                yield _Token("end", None, offset, "the end")
                return
            char = source[offset]
            if char == "}" and self.in_template:
                yield _Token("end", None, offset, "'}'")
                return
            if source.startswith(("==", "!="), offset):
                operator = source[offset : offset + 2]
                yield _Token("op", operator, offset, repr(operator))
                offset += 2
            elif char in "()[].":
                yield _Token("op", char, offset, repr(char))
                offset += 1
            elif char in "'\"":
                value, end = self._string(offset)
                yield _Token("string", value, offset, "a string")
                offset = end
            elif (match := _NUMBER.match(source, offset)) is not None:
                text = match.group()
                value = int(text) if match.group(1) is None and match.group(2) is None else None
                if value is None:
                    value = float(text)
                    if value in (float("inf"), float("-inf")):
                        raise self.fail(offset, f"the number {text} is too large")
                yield _Token("number", value, offset, text)
                offset = match.end()
            elif (match := NAME.match(source, offset)) is not None:
                yield _Token("name", match.group(), offset, repr(match.group()))
                offset = match.end()
            else:
                hint = "; did you mean '=='?" if char == "=" else ""
                raise self.fail(offset, f"unexpected character {char!r}{hint}")

    def _string(self, start: int) -> tuple[str, int]:
        source, quote = self.source, self.source[start]
        parts: list[str] = []
        offset = start + 1
        while offset < len(source):
            char = source[offset]
            if char == quote:
                return "".join(parts), offset + 1
            if char == "\\":
                escape = source[offset + 1 : offset + 2]
                if escape in _ESCAPES:
                    parts.append(_ESCAPES[escape])
                    offset += 2
                    continue
                digits = source[offset + 2 : offset + 6]
                if escape == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
                    parts.append(chr(int(digits, 16)))
                    offset += 6
                    continue
                raise self.fail(offset, f"unknown escape {source[offset : offset + 2]!r}")
            parts.append(char)
            offset += 1
        raise self.fail(start, "unterminated string")

    @property
    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def accept(self, kind: str, value: Any = None) -> _Token | None:
        token = self.peek
        if token.kind == kind and (value is None or token.value == value):
            return self.take()
        return None

    def expect(self, kind: str, value: Any, expected: str) -> _Token:
        token = self.accept(kind, value)
        if token is None:
            raise self.unexpected(expected)
        return token

    def unexpected(self, expected: str) -> ExpressionSyntaxError:
        token = self.peek
        return self.fail(token.offset, f"unexpected {token.text}; expected {expected}")


# The parser ----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: _Tokens) -> None:
        self.tokens = tokens

    def expression(self) -> Expression:
        left = self.conjunction()
        while self.tokens.accept("name", "or"):
            left = BinaryOp("or", left, self.conjunction())
        return left

    def conjunction(self) -> Expression:
        left = self.negation()
        while self.tokens.accept("name", "and"):
            left = BinaryOp("and", left, self.negation())
        return left

    def negation(self) -> Expression:
        if self.tokens.accept("name", "not"):
            return Not(self.negation())
        left = self.primary()
        operator = self.tokens.accept("op", "==") or self.tokens.accept("op", "!=")
        if operator is None:
            return left
        return BinaryOp(operator.value, left, self.primary())

    def primary(self) -> Expression:
        tokens = self.tokens
        token = tokens.peek
        if token.kind in ("string", "number"):
            return Literal(tokens.take().value)
        if tokens.accept("op", "("):
            inner = self.expression()
            tokens.expect("op", ")", "')' or an operator (and, or, ==, !=)")
            return inner
        if token.kind != "name":
            if token.kind == "end" and tokens.index == 0:
                raise tokens.fail(token.offset, f"empty expression; expected {_VALUE}")
            raise tokens.unexpected(_VALUE)
        name = token.value
        if name in _KEYWORDS:
            tokens.take()
            return Literal(_KEYWORDS[name])
        if name == "item":
            tokens.take()
            return Reference("item", path=self.path())
        if name == "params":
            tokens.take()
            tokens.expect("op", ".", "'.' after 'params' (params.NAME)")
            param = tokens.expect("name", None, "a param name after 'params.'").value
            return Reference("params", param, path=self.path())
        if name == "steps":
            tokens.take()
            tokens.expect("op", ".", "'.' after 'steps' (steps.NAME.result)")
            step = tokens.expect("name", None, "a step name after 'steps.'").value
            tokens.expect("op", ".", f"'.result' or '.phase' after 'steps.{step}'")
            attribute = tokens.peek
            if attribute.kind == "name" and attribute.value == "result":
                tokens.take()
                return Reference("steps", step, "result", self.path())
            if attribute.kind == "name" and attribute.value == "phase":
                tokens.take()
                return Reference("steps", step, "phase")
            raise tokens.unexpected(f"'result' or 'phase' after 'steps.{step}.'")
        raise tokens.fail(
            token.offset,
            f"unknown name {name!r}; expected {_VALUE.removeprefix('a value ')[1:-1]}",
        )

    def path(self) -> tuple[str | int, ...]:
        tokens = self.tokens
        parts: list[str | int] = []
        while True:
            if tokens.accept("op", "."):
                parts.append(tokens.expect("name", None, "a key after '.'").value)
            elif tokens.accept("op", "["):
                index = tokens.peek
                if not (index.kind == "string" or type(index.value) is int):
                    raise tokens.unexpected("an integer index or a quoted key after '['")
                parts.append(tokens.take().value)
                tokens.expect("op", "]", "']'")
            else:
                return tuple(parts)


def parse_at(source: str, start: int, in_template: bool) -> tuple[Expression, int]:
    """The expression in ``source`` from ``start``, and the offset of its end token."""
    tokens = _Tokens(source, start, in_template)
    expression = _Parser(tokens).expression()
    token = tokens.peek
    if token.kind == "op" and token.value in ("==", "!="):
        raise tokens.fail(token.offset, f"unexpected {token.text}: comparisons do not chain")
    if token.kind != "end":
        end = "'}'" if in_template else "the end"
        raise tokens.unexpected(f"an operator (and, or, ==, !=) or {end}")
    return expression, tokens.peek.offset


def parse_expression(source: str) -> Expression:
    """The expression ``source`` (without ``${`` and ``}``).

    Raises:
        ExpressionSyntaxError: naming the column and what was expected there.
    """
    return parse_at(source, 0, in_template=False)[0]


# Unparsing -----------------------------------------------------------------------------------

_PRECEDENCE = {"or": 1, "and": 2, "==": 4, "!=": 4}


def unparse(expression: Expression) -> str:
    """The source of ``expression``, which `parse_expression` reads back as it is."""
    return _unparse(expression, 0)


def _unparse(node: Expression, needed: int) -> str:
    if isinstance(node, Literal):
        return _literal(node.value)
    if isinstance(node, Reference):
        head = node.root if node.name is None else f"{node.root}.{node.name}"
        if node.attribute is not None:
            head += f".{node.attribute}"
        return head + "".join(path_text(part) for part in node.path)
    if isinstance(node, Not):
        text, own = f"not {_unparse(node.operand, 3)}", 3
    else:
        own = _PRECEDENCE[node.op]
        # Left-associative, and == does not chain: the right operand binds tighter.
        left_needed, right_needed = (5, 5) if own == 4 else (own, own + 1)
        text = f"{_unparse(node.left, left_needed)} {node.op} {_unparse(node.right, right_needed)}"
    return f"({text})" if own < needed else text


def _literal(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return f'"{escaped}"'
    return repr(value)


def path_text(part: str | int) -> str:
    """A key or index of a path as written: ``.key``, ``[0]`` or ``[\"a key\"]``."""
    if isinstance(part, int):
        return f"[{part}]"
    if NAME.fullmatch(part):
        return f".{part}"
    return f"[{_literal(part)}]"
