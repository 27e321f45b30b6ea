"""The ``${...}`` language of job definitions: templates and their evaluation.

A template is text with zero or more ``${expression}`` parts (``$${`` is a literal ``${``;
a literal ``$`` just before a part is written ``${"$"}``). The expressions' grammar and
parser are `corra.workflows._syntax`'s; here they are evaluated over a context mapping::

    {"params": {...}, "steps": {NAME: {"result": value, "phase": "..."}}, "item": value}

Values are JSON values; truthiness is Python's (an empty list, table or string, 0 and null
are false); ``and`` and ``or`` give one of their operands, as Python's do; ``==`` compares
JSON values (``1 == 1.0``, but ``true != 1``). Nothing else: no arithmetic, no calls.

Errors never show a value (an env value rendered from a template is a secret): they name the
expression, the path and what it found there (its kind, or the keys of a table).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from corra._errors import WorkflowError
from corra.workflows._syntax import BinaryOp, Expression, Literal, Not, Reference, parse_at, unparse

# Templates -----------------------------------------------------------------------------------


@attrs.frozen
class _Part:
    expression: Expression
    source: str  # as written, with its ${ and }: what an error names


@attrs.frozen
class Template:
    """A parsed template; equal to another with the same text (see `parse_template`).

    Attributes:
        text: the template as written.
        parts: its literal texts (str) and its ``${...}`` parts, in order.
    """

    text: str
    parts: tuple[str | _Part, ...] = attrs.field(eq=False, repr=False)

    @property
    def single(self) -> bool:
        """Whether the template is exactly one ``${...}`` (it renders to a value of any
        type; any other template renders to a string)."""
        return len(self.parts) == 1 and isinstance(self.parts[0], _Part)

    def expressions(self) -> tuple[Expression, ...]:
        return tuple(part.expression for part in self.parts if isinstance(part, _Part))

    def references(self) -> frozenset[tuple[str, str | None]]:
        """The ``(kind, name)`` references the template makes: ``("params", NAME)``,
        ``("steps", NAME)``, ``("item", None)``."""
        return frozenset(ref for _, refs in self.part_references() for ref in refs)

    def part_references(self) -> Iterator[tuple[str, frozenset[tuple[str, str | None]]]]:
        """Each ``${...}`` part as written, with the references it makes."""
        for part in self.parts:
            if isinstance(part, _Part):
                found = {
                    (node.root, node.name)
                    for node in _walk(part.expression)
                    if isinstance(node, Reference)
                }
                yield part.source, frozenset(found)

    def render(self, context: Mapping[str, Any]) -> Any:
        """The template's value over ``context``: the value itself if the template is one
        ``${...}``, else a string in which each value stands as itself if it is a string,
        as compact JSON if not (``3``, ``true``, ``[1,2]``).

        Raises:
            WorkflowError: naming the ``${...}`` part and what it did not find.
        """
        if self.single:
            return _evaluate_part(self.parts[0], context)  # type: ignore[arg-type]
        pieces = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
            else:
                pieces.append(to_text(_evaluate_part(part, context)))
        return "".join(pieces)


def to_text(value: Any) -> str:
    """A value as it stands in a string: itself if it is one, else compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def has_template(text: str) -> bool:
    """Whether ``text`` has a ``${`` that is not escaped as ``$${``."""
    return any(isinstance(part, _Part) for part in _split(text, parse=False))


@functools.lru_cache(maxsize=4096)
def parse_template(text: str) -> Template:
    """The template ``text``: literal text and ``${expression}`` parts. (Templates are
    frozen: one parse of each text serves every item of a fan-out, and every step.)

    Raises:
        ExpressionSyntaxError: naming the column (in ``text``) and what was expected there.
    """
    if "$" not in text:
        return Template(text, (text,) if text else ())
    return Template(text, tuple(_split(text, parse=True)))


def _split(text: str, parse: bool) -> Iterator[str | _Part]:
    literal: list[str] = []
    offset = 0
    while True:
        found = text.find("${", offset)
        if found < 0:
            literal.append(text[offset:])
            break
        if found > 0 and text[found - 1] == "$":
            literal.append(text[offset : found - 1] + "${")  # ($${ is a literal ${)
            offset = found + 2
            continue
        literal.append(text[offset:found])
        if not parse:
            yield _Part(Literal(None), "")
            return
        expression, end = parse_at(text, found + 2, in_template=True)
        if "".join(literal):
            yield "".join(literal)
        literal = []
        yield _Part(expression, text[found : end + 1])
        offset = end + 1
    if "".join(literal):
        yield "".join(literal)


def _walk(node: Expression) -> Iterator[Expression]:
    yield node
    if isinstance(node, Not):
        yield from _walk(node.operand)
    elif isinstance(node, BinaryOp):
        yield from _walk(node.left)
        yield from _walk(node.right)


# Evaluation ----------------------------------------------------------------------------------


def _evaluate_part(part: _Part, context: Mapping[str, Any]) -> Any:
    try:
        return evaluate(part.expression, context)
    except _Missing as exc:
        raise WorkflowError(f"{part.source}: {exc}") from None


def evaluate(expression: Expression, context: Mapping[str, Any]) -> Any:
    """The value of ``expression`` over ``context`` (see the module doc).

    Raises:
        WorkflowError: a reference that the context does not have.
    """
    if isinstance(expression, Literal):
        return expression.value
    if isinstance(expression, Reference):
        return _resolve(expression, context)
    if isinstance(expression, Not):
        return not evaluate(expression.operand, context)
    left = evaluate(expression.left, context)
    if expression.op == "and":
        return evaluate(expression.right, context) if left else left
    if expression.op == "or":
        return left if left else evaluate(expression.right, context)
    equal = json_equal(left, evaluate(expression.right, context))
    return equal if expression.op == "==" else not equal


def json_equal(left: Any, right: Any) -> bool:
    """Whether two JSON values are equal: numbers by value, but a boolean is no number."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, (list, dict)) or isinstance(right, (list, dict)):
        return False
    return bool(left == right)


class _Missing(Exception):
    """A reference the context does not resolve (made a `WorkflowError` naming its part)."""


def _resolve(reference: Reference, context: Mapping[str, Any]) -> Any:
    if reference.root == "item":
        if "item" not in context:
            raise _Missing("there is no item: the step has no for_each")
        value, what = context["item"], "the item"
    elif reference.root == "params":
        params = context.get("params", {})
        if reference.name not in params:
            raise _Missing(f"no param {reference.name!r} (there are: {_keys(params)})")
        value, what = params[reference.name], f"the param {reference.name!r}"
    else:
        step = context.get("steps", {}).get(reference.name)
        if step is None:
            raise _Missing(f"step {reference.name!r} is not upstream or has not ended")
        if reference.attribute == "phase":
            return step.get("phase")
        value, what = step.get("result"), f"the result of step {reference.name!r}"
        if value is None and reference.path:
            raise _Missing(f"{what} is null (the step is {step.get('phase', 'not ended')})")
    for index, part in enumerate(reference.path):
        value = _index(value, part, what)
        what = unparse(attrs.evolve(reference, path=reference.path[: index + 1]))
    return value


def _index(value: Any, part: str | int, what: str) -> Any:
    if isinstance(part, int):
        if not isinstance(value, list):
            raise _Missing(f"{what} is {kind_of(value)}, not a list: no index [{part}]")
        if not -len(value) <= part < len(value):
            raise _Missing(f"{what} has no index [{part}] (it has {len(value)} item(s))")
        return value[part]
    if not isinstance(value, dict):
        raise _Missing(f"{what} is {kind_of(value)}, not a table: no key {part!r}")
    if part not in value:
        raise _Missing(f"{what} has no key {part!r} (it has: {_keys(value)})")
    return value[part]


def kind_of(value: Any) -> str:
    """A JSON value's kind, as errors name it (never the value: it may be a secret)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a table"


def _keys(table: Mapping[str, Any], most: int = 10) -> str:
    keys = [repr(key) for key in list(table)[:most]]
    more = len(table) - most
    return (", ".join(keys) or "none") + (f" and {more} more" if more > 0 else "")
