"""The ``${...}`` language: templates, the parser's errors, evaluation, and properties.

The properties (Hypothesis): an expression tree written out (`unparse`) parses back to the
same tree, a template likewise; evaluation agrees with a reference evaluation of the tree
written here in plain Python; and the parser raises nothing but its own error, whatever the
text.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corra
from corra._errors import ExpressionSyntaxError, WorkflowError
from corra.workflows._expressions import has_template, json_equal, parse_template
from corra.workflows._syntax import (
    NAME,
    BinaryOp,
    Expression,
    Literal,
    Not,
    Reference,
    parse_expression,
    unparse,
)

CONTEXT = {
    "params": {"samples": 3, "name": "run 1", "flag": False, "tags": ["a", "b"]},
    "steps": {
        "prepare": {
            "result": {"items": [1, 2, 3], "rows": [{"id": 7}], "n": 0},
            "phase": "finished",
        },
        "skipped-one": {"result": None, "phase": "skipped"},
    },
    "item": {"x": [10, 20], "label": "a b"},
}


# Examples ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,value",
    [
        ("${steps.prepare.result.items}", [1, 2, 3]),
        ("${params.samples}", 3),
        ("${params.flag}", False),
        ("${steps.prepare.result.rows[0].id}", 7),
        ("${steps.prepare.result['rows'][-1]['id']}", 7),
        ("${steps.prepare.phase}", "finished"),
        ("${item.x[1]}", 20),
        ("${item}", {"x": [10, 20], "label": "a b"}),
        ("${ null }", None),
        ("${1.5}", 1.5),
        ("${-2}", -2),
    ],
)
def test_a_template_of_one_expression_gives_the_value_with_its_type(text, value):
    rendered = parse_template(text).render(CONTEXT)
    assert rendered == value and type(rendered) is type(value)


@pytest.mark.parametrize(
    "text,value",
    [
        ("--samples=${params.samples}", "--samples=3"),
        ("${params.name}!", "run 1!"),
        ("${params.tags} ${params.flag} ${steps.skipped-one.result}", '["a","b"] false null'),
        ("item=${item}", 'item={"x":[10,20],"label":"a b"}'),
        ("a $${literal} b", "a ${literal} b"),
        ("cost: $$${params.samples}", "cost: $${params.samples}"),
        ('${"$"}${params.samples}', "$3"),
        ("no parts at all", "no parts at all"),
        ("", ""),
        ("${'}'} and ${\"{\"}", "} and {"),
        ("${'\\u00e9\\n\\t\\\\'}x", "é\n\t\\x"),
    ],
)
def test_a_template_with_text_gives_a_string_each_value_as_itself_or_compact_json(text, value):
    assert parse_template(text).render(CONTEXT) == value


@pytest.mark.parametrize(
    "expression,value",
    [
        ("params.samples == 3", True),
        ("params.samples == 3.0", True),
        ("params.samples != 3", False),
        ("true == 1", False),
        ("false == 0", False),
        ("null == false", False),
        ("steps.prepare.result.items == steps.prepare.result.items", True),
        ("params.tags == item.x", False),
        ("not params.flag", True),
        ("not steps.prepare.result.n", True),
        ("not params.tags", False),
        ("not ''", True),
        ("params.flag or params.name", "run 1"),
        ("params.samples and params.tags", ["a", "b"]),
        ("params.flag and steps.nowhere.result", False),  # (and stops at a false left)
        ("params.name or steps.nowhere.result", "run 1"),
        ("not params.samples == 3", False),
        ("(not params.samples) == false", True),
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("steps.prepare.phase == 'finished' and steps.skipped-one.phase == \"skipped\"", True),
    ],
)
def test_operators_truthiness_and_json_equality(expression, value):
    assert parse_template("${" + expression + "}").render(CONTEXT) == value


def test_references_name_the_params_steps_and_item_a_template_uses():
    template = parse_template(
        "${params.a} ${steps.b.result.x[0] == steps.c.phase} ${item.k or not params.a}"
    )
    assert template.references() == {
        ("params", "a"),
        ("steps", "b"),
        ("steps", "c"),
        ("item", None),
    }
    assert parse_template("plain $${x}").references() == frozenset()
    assert [source for source, _ in template.part_references()] == [
        "${params.a}",
        "${steps.b.result.x[0] == steps.c.phase}",
        "${item.k or not params.a}",
    ]


def test_templates_are_equal_by_their_text_and_know_whether_they_are_one_value():
    assert parse_template("${params.a}") == parse_template("${params.a}")
    assert parse_template("${params.a}") != parse_template("${ params.a }")
    assert parse_template("${params.a}").single
    assert not parse_template(" ${params.a}").single
    assert not parse_template("${params.a}${params.a}").single
    assert has_template("x ${y")  # (even one that does not parse)
    assert not has_template("x $${y}") and not has_template("$ {y}")


# Errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,column,message",
    [
        ("${a +}", 5, "unexpected character '+'"),
        ("${params.a = 1}", 12, "unexpected character '='; did you mean '=='?"),
        (
            "${}",
            3,
            "empty expression; expected a value (a literal, params.NAME, "
            "steps.NAME.result, steps.NAME.phase, item, not, '(')",
        ),
        (
            "${ not }",
            8,
            "unexpected '}'; expected a value (a literal, params.NAME, "
            "steps.NAME.result, steps.NAME.phase, item, not, '(')",
        ),
        (
            "${foo}",
            3,
            "unknown name 'foo'; expected a literal, params.NAME, "
            "steps.NAME.result, steps.NAME.phase, item, not, '('",
        ),
        ("${params}", 9, "unexpected '}'; expected '.' after 'params' (params.NAME)"),
        ("${params.}", 10, "unexpected '}'; expected a param name after 'params.'"),
        ("${steps}", 8, "unexpected '}'; expected '.' after 'steps' (steps.NAME.result)"),
        ("${steps.3}", 9, "unexpected 3; expected a step name after 'steps.'"),
        ("${steps.a}", 10, "unexpected '}'; expected '.result' or '.phase' after 'steps.a'"),
        (
            "${steps.a.status}",
            11,
            "unexpected 'status'; expected 'result' or 'phase' after 'steps.a.'",
        ),
        (
            "${steps.a.phase.x}",
            16,
            "unexpected '.'; expected an operator (and, or, ==, !=) or '}'",
        ),
        ("${item.}", 8, "unexpected '}'; expected a key after '.'"),
        ("${item[}", 8, "unexpected '}'; expected an integer index or a quoted key after '['"),
        ("${item[1.5]}", 8, "unexpected 1.5; expected an integer index or a quoted key after '['"),
        ("${item[0}", 9, "unexpected '}'; expected ']'"),
        ("${(item}", 8, "unexpected '}'; expected ')' or an operator (and, or, ==, !=)"),
        ("${item)}", 7, "unexpected ')'; expected an operator (and, or, ==, !=) or '}'"),
        ("${item item}", 8, "unexpected 'item'; expected an operator (and, or, ==, !=) or '}'"),
        ("${1 == 1 == 1}", 10, "unexpected '==': comparisons do not chain"),
        (
            "${item ==}",
            10,
            "unexpected '}'; expected a value (a literal, params.NAME, "
            "steps.NAME.result, steps.NAME.phase, item, not, '(')",
        ),
        ("${'abc}", 3, "unterminated string"),
        ("${'a\\qb'}", 5, "unknown escape '\\\\q'"),
        ("${'\\u12'}", 4, "unknown escape '\\\\u'"),
        ("x ${item", 3, "unterminated '${': no '}' closes it"),
        ("${1e999}", 3, "the number 1e999 is too large"),
        ("ok ${item} then ${!}", 19, "unexpected character '!'"),
    ],
)
def test_every_parse_error_names_its_column_and_what_was_expected(text, column, message):
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_template(text)
    assert str(info.value) == f"{text!r}, column {column}: {message}"
    assert info.value.column == column and info.value.text == text
    assert isinstance(info.value, WorkflowError) and isinstance(info.value, corra.ConfigError)


def test_parse_expression_counts_columns_in_the_expression_alone():
    with pytest.raises(ExpressionSyntaxError, match=r"^'a \+', column 3: unexpected"):
        parse_expression("a +")
    with pytest.raises(ExpressionSyntaxError, match="unexpected the end; expected ']'"):
        parse_expression("item[0")


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "${steps.prepare.result.items2}",
            "${steps.prepare.result.items2}: the result of step 'prepare' has no key 'items2' "
            "(it has: 'items', 'rows', 'n')",
        ),
        (
            "${steps.prepare.result.rows[0].name}",
            "${steps.prepare.result.rows[0].name}: steps.prepare.result.rows[0] has no key "
            "'name' (it has: 'id')",
        ),
        (
            "x=${steps.prepare.result.items[3]}",
            "${steps.prepare.result.items[3]}: steps.prepare.result.items has no index [3] "
            "(it has 3 item(s))",
        ),
        (
            "${steps.prepare.result.n[0]}",
            "${steps.prepare.result.n[0]}: steps.prepare.result.n is a number, not a list: "
            "no index [0]",
        ),
        (
            "${steps.prepare.result.items.first}",
            "${steps.prepare.result.items.first}: steps.prepare.result.items is a list, not a "
            "table: no key 'first'",
        ),
        (
            "${item.label[0]}",
            "${item.label[0]}: item.label is a string, not a list: no index [0]",
        ),
        ("${item[0]}", "${item[0]}: the item is a table, not a list: no index [0]"),
        (
            "${params.nope}",
            "${params.nope}: no param 'nope' (there are: 'samples', 'name', 'flag', 'tags')",
        ),
        (
            "${params.flag.x}",
            "${params.flag.x}: the param 'flag' is a boolean, not a table: no key 'x'",
        ),
        (
            "${steps.later.result}",
            "${steps.later.result}: step 'later' is not upstream or has not ended",
        ),
        (
            "${steps.skipped-one.result.x}",
            "${steps.skipped-one.result.x}: the result of step 'skipped-one' is null (the "
            "step is skipped)",
        ),
    ],
)
def test_an_evaluation_error_names_the_expression_and_what_it_did_not_find(text, message):
    with pytest.raises(WorkflowError) as info:
        parse_template(text).render(CONTEXT)
    assert str(info.value) == message


def test_there_is_no_item_outside_a_fan_out():
    with pytest.raises(WorkflowError, match=r"^\$\{item\}: there is no item: the step has no"):
        parse_template("${item}").render({"params": {}, "steps": {}})


def test_an_error_never_shows_a_value():
    secret = {"token": "hunter2-secret"}
    with pytest.raises(WorkflowError) as info:
        parse_template("${params.token[0]}").render({"params": secret})
    assert "hunter2" not in str(info.value)
    with pytest.raises(WorkflowError) as info:
        parse_template("${params.token.x}").render({"params": secret})
    assert "hunter2" not in str(info.value)


# Properties ----------------------------------------------------------------------------

names = st.from_regex(NAME, fullmatch=True).filter(lambda n: len(n) <= 12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
literals = st.builds(
    Literal,
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
)
paths = st.lists(st.integers(-4, 4) | st.sampled_from(["a", "b", "x y", "0"]) | names, max_size=3)
references = st.one_of(
    st.builds(lambda name, path: Reference("params", name, path=tuple(path)), names, paths),
    st.builds(lambda name, path: Reference("steps", name, "result", tuple(path)), names, paths),
    st.builds(lambda name: Reference("steps", name, "phase"), names),
    st.builds(lambda path: Reference("item", path=tuple(path)), paths),
)
expressions = st.recursive(
    literals | references,
    lambda inner: (
        st.builds(Not, inner)
        | st.builds(BinaryOp, st.sampled_from(["and", "or", "==", "!="]), inner, inner)
    ),
    max_leaves=10,
)


def shape(node: Expression) -> Any:
    """The tree with the type of each literal (``Literal(1) == Literal(True)`` to attrs)."""
    if isinstance(node, Literal):
        value = node.value
        return (
            "literal",
            type(value),
            math.copysign(1, value) if type(value) is float else 0,
            value,
        )
    if isinstance(node, Not):
        return ("not", shape(node.operand))
    if isinstance(node, BinaryOp):
        return (node.op, shape(node.left), shape(node.right))
    return (node.root, node.name, node.attribute, tuple((type(p), p) for p in node.path))


@given(expressions)
def test_an_expression_written_out_parses_back_to_the_same_tree(expression):
    text = unparse(expression)
    assert shape(parse_expression(text)) == shape(expression)
    assert shape(parse_template("${" + text + "}").expressions()[0]) == shape(expression)


texts = st.text(alphabet="ab ${}\\'\"$", max_size=8)


@given(st.lists(texts | expressions, max_size=5))
def test_a_template_written_out_parses_back_to_its_parts(parts):
    # Text is written with each ${ as $${; an expression after text that ends in $ is left
    # out (that $ and the ${ would read as $${: such a $ is written ${"$"}).
    merged: list[Any] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif isinstance(part, str) or not (merged and str(merged[-1]).endswith("$")):
            merged.append(part)
    text = "".join(
        part.replace("${", "$${") if isinstance(part, str) else "${" + unparse(part) + "}"
        for part in merged
    )
    template = parse_template(text)
    got = [p if isinstance(p, str) else shape(p.expression) for p in template.parts]
    assert got == [p if isinstance(p, str) else shape(p) for p in merged if p != ""]
    assert template.text == text


class Missing(Exception):
    pass


def reference_get(value: Any, part: str | int) -> Any:
    if isinstance(part, int):
        if type(value) is not list:
            raise Missing
        try:
            return value[part]
        except IndexError:
            raise Missing from None
    if type(value) is not dict or part not in value:
        raise Missing
    return value[part]


def canonical(value: Any) -> Any:
    """A JSON value as Python compares JSON: numbers by value, but true is not 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, list):
        return ("list", tuple(canonical(item) for item in value))
    if isinstance(value, dict):
        return ("table", frozenset((key, canonical(item)) for key, item in value.items()))
    return (type(value).__name__, value)


def reference_evaluate(node: Expression, context: dict[str, Any]) -> Any:
    """The expression evaluated as Python would, the tree translated to Python source."""
    namespace = {"get": reference_get, "ctx": context, "canon": canonical, "Missing": Missing}

    def source(node: Expression) -> str:
        if isinstance(node, Literal):
            return repr(node.value)
        if isinstance(node, Not):
            return f"(not {source(node.operand)})"
        if isinstance(node, BinaryOp):
            left, right = source(node.left), source(node.right)
            if node.op in ("and", "or"):
                return f"({left} {node.op} {right})"
            return f"(canon({left}) {node.op} canon({right}))"
        if node.root == "item":
            text = "ctx['item']"
        elif node.root == "params":
            text = f"get(ctx['params'], {node.name!r})"
        else:
            text = f"get(get(ctx['steps'], {node.name!r}), {node.attribute!r})"
        for part in node.path:
            text = f"get({text}, {part!r})"
        return text

    return eval(source(node), namespace)  # (the test's reference; corra never evals)


contexts = st.fixed_dictionaries(
    {
        "params": st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3),
        "steps": st.dictionaries(
            st.sampled_from(["a", "b", "c"]),
            st.fixed_dictionaries(
                {"result": json_values, "phase": st.sampled_from(["finished", "failed"])}
            ),
            max_size=3,
        ),
        "item": json_values,
    }
)
small_names = st.sampled_from(["a", "b", "c", "d"])
small_paths = st.lists(st.integers(-2, 2) | st.sampled_from(["", "a", "b"]), max_size=2)
known_references = st.one_of(
    st.builds(lambda n, p: Reference("params", n, path=tuple(p)), small_names, small_paths),
    st.builds(lambda n, p: Reference("steps", n, "result", tuple(p)), small_names, small_paths),
    st.builds(lambda n: Reference("steps", n, "phase"), small_names),
    st.builds(lambda p: Reference("item", path=tuple(p)), small_paths),
)
evaluated = st.recursive(
    literals | known_references,
    lambda inner: (
        st.builds(Not, inner)
        | st.builds(BinaryOp, st.sampled_from(["and", "or", "==", "!="]), inner, inner)
    ),
    max_leaves=8,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(evaluated, contexts)
def test_evaluation_agrees_with_a_reference_evaluation_in_python(expression, context):
    template = parse_template("${" + unparse(expression) + "}")
    try:
        expected = reference_evaluate(expression, context)
    except Missing:
        with pytest.raises(WorkflowError):
            template.render(context)
        return
    assert canonical(template.render(context)) == canonical(expected)


@given(st.lists(json_values, max_size=2), st.lists(json_values, max_size=2))
def test_json_equality_is_structural(left, right):
    assert json_equal(left, right) == (canonical(left) == canonical(right))
    assert json_equal(left, left)


language = st.text(alphabet="${}()[].'\"\\=! andortuefalsnlpmsi0123456789-_eE+u", max_size=30)


@given(st.text(max_size=40) | language | language.map(lambda t: "${" + t))
def test_the_parser_raises_nothing_but_its_own_error_whatever_the_text(text):
    for parse in (parse_template, parse_expression):
        try:
            parse(text)
        except ExpressionSyntaxError as exc:
            assert 1 <= exc.column <= len(text) + 1
