"""Assert-style tests (``testtype: "code"``) turned into calls that the judging side checks.

An assert run next to the program it judges can be forged (a result whose ``__eq__`` is always
true, or a program that ends the process after faking a pass), so no assert is ever executed in the
sandbox. Each ``assert`` statement of a test is parsed here, on the trusted side, into a call with
literal arguments and a check of its plain-data result:

* ``assert f(ARGS) == LITERAL`` (or ``LITERAL == f(ARGS)``): the result equals the literal
  (Python equality on plain data: tuples as lists, ``1 == 1.0``, ``True == 1``);
* ``assert f(ARGS) is None`` / ``is True`` / ``is False`` (and ``is not``): identity with that constant;
* ``assert f(ARGS)`` / ``assert not f(ARGS)``: the result's truth value.

``f`` is a function name or ``Solution().method``. Anything else is refused with a
:class:`~resd.envs.base.DataError` when the data is loaded.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from typing import Any

from resd.envs.base import DataError

__all__ = ["AssertCall", "assert_holds", "parse_assert_tests", "plain_value"]

_MAX_SOURCE = 1 << 20


@dataclasses.dataclass(frozen=True)
class AssertCall:
    """One assert as a call: ``fn_name(*args, **kwargs)`` and how its result is checked."""

    fn_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    check: str  # "eq", "is", "is_not" or "truthy"
    expected: Any  # the literal (eq), the constant (is, is_not) or the required truth value (truthy)
    source: str  # the assert statement, for feedback


def plain_value(value: Any) -> Any:
    """``value`` as the plain data a program's result is turned into (tuples as lists, dict keys as
    JSON keys); raises :class:`DataError` for values that cannot cross as plain data (sets, bytes...)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) in (list, tuple):
        return [plain_value(v) for v in value]
    if type(value) is dict:
        out = {}
        for k, v in value.items():
            if k is not None and type(k) not in (str, int, float, bool):
                raise DataError(f"a dict key of type {type(k).__name__} cannot be compared as plain data")
            out[k if type(k) is str else json.dumps(k)] = plain_value(v)
        return out
    raise DataError(f"a {type(value).__name__} literal cannot be compared as plain data (use a list or dict)")


def _literal(node: ast.AST, what: str) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise DataError(f"{what} is not a literal: {ast.unparse(node)[:200]!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        return value
    plain_value(value)  # raises for sets, bytes, complex
    return value


def _call(node: ast.AST) -> tuple[str, list[Any], dict[str, Any]] | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Name):
        name = func.id
    elif (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "Solution"
        and not func.value.args
        and not func.value.keywords
    ):
        name = func.attr
    else:
        return None
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise DataError(f"starred arguments are not supported: {ast.unparse(node)[:200]!r}")
    args = [plain_value(_literal(a, "an argument")) for a in node.args]
    kwargs = {str(k.arg): plain_value(_literal(k.value, "an argument")) for k in node.keywords}
    return name, args, kwargs


def _one(stmt: ast.Assert) -> AssertCall:
    text = ast.unparse(stmt)[:1000]
    test = stmt.test
    if stmt.msg is not None:
        _literal(stmt.msg, "an assert message")
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, ast.Eq):
            for call_node, literal_node in ((left, right), (right, left)):
                call = _call(call_node)
                if call is not None:
                    return AssertCall(*call, "eq", plain_value(_literal(literal_node, "the expected value")), text)
        if isinstance(op, (ast.Is, ast.IsNot)) and isinstance(right, ast.Constant) and right.value in (None, True, False):
            call = _call(left)
            if call is not None:
                return AssertCall(*call, "is" if isinstance(op, ast.Is) else "is_not", right.value, text)
    call = _call(test)
    if call is not None:
        return AssertCall(*call, "truthy", True, text)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        call = _call(test.operand)
        if call is not None:
            return AssertCall(*call, "truthy", False, text)
    raise DataError(
        f"unsupported assert {text[:200]!r}: use 'assert f(...) == literal', 'assert f(...) is None/True/False' "
        "or 'assert [not] f(...)' with literal arguments"
    )


def parse_assert_tests(source: Any) -> list[AssertCall]:
    """The asserts of one assert-style test as calls; :class:`DataError` if any cannot be judged safely."""
    if not isinstance(source, str):
        raise DataError(f"an assert-style test must be Python source text, got {type(source).__name__}")
    if len(source) > _MAX_SOURCE:
        raise DataError(f"an assert-style test is over {_MAX_SOURCE} characters")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise DataError(f"an assert-style test does not parse: {e}") from None
    calls = []
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assert):
            raise DataError(
                f"assert-style tests may contain only assert statements, found {ast.unparse(stmt)[:200]!r}"
            )
        calls.append(_one(stmt))
    if not calls:
        raise DataError("an assert-style test has no assert statement")
    return calls


def assert_holds(call: AssertCall, value_json: str) -> bool:
    """Whether the program's result (its canonical JSON, as the sandbox returned it) passes ``call``."""
    try:
        value = json.loads(value_json)
    except (ValueError, RecursionError):
        return False
    if call.check == "eq":
        try:
            return bool(value == call.expected)
        except RecursionError:
            return False
    if call.check == "is":
        return value is call.expected
    if call.check == "is_not":
        return value is not call.expected
    return bool(value) is call.expected
