"""Assert-style tests parsed into calls on the judging side (resd.envs.assert_tests)."""

from __future__ import annotations

import json

import pytest

import resd.envs
from resd.envs.assert_tests import assert_holds, parse_assert_tests
from resd.envs.base import DataError
from resd.envs.code import parse_tests


def test_supported_forms_become_calls():
    calls = parse_assert_tests(
        "assert f(1, [2, 3]) == (4, 5)\n"
        "assert {'a': 1} == Solution().g(x=2)\n"
        "assert h('s') is None\n"
        "assert h(0) is not True\n"
        "assert k(2)\n"
        "assert not k(0), 'zero is falsy'\n"
    )
    assert [(c.fn_name, c.args, c.kwargs, c.check, c.expected) for c in calls] == [
        ("f", [1, [2, 3]], {}, "eq", [4, 5]),
        ("g", [], {"x": 2}, "eq", {"a": 1}),
        ("h", ["s"], {}, "is", None),
        ("h", [0], {}, "is_not", True),
        ("k", [2], {}, "truthy", True),
        ("k", [0], {}, "truthy", False),
    ]


@pytest.mark.parametrize(
    "source",
    [
        "assert f(1) < 2",
        "assert f(1) == 2 or True",
        "assert f(x) == 2",  # a name, not a literal
        "assert f(1) == g(2)",
        "assert f(*[1]) == 1",
        "assert f(1) == {1, 2}",  # a set cannot cross as plain data
        "x = f(1)\nassert x == 2",
        "print(f(1))",
        "assert obj.f(1) == 2",
        "",
        "assert f(1) ==",
    ],
)
def test_anything_else_is_refused_at_load(source):
    with pytest.raises(DataError):
        parse_assert_tests(source)
    with pytest.raises(DataError, match="input 0"):
        parse_tests({"inputs": [source], "outputs": [""], "testtype": "code"})


@pytest.mark.parametrize(
    ("check_source", "value", "holds"),
    [
        ("assert f() == [1, 2]", [1, 2], True),
        ("assert f() == (1, 2)", [1, 2], True),  # tuples arrive as lists
        ("assert f() == 1", 1.0, True),  # Python equality on plain data
        ("assert f() == 1", True, True),
        ("assert f() == '1'", 1, False),
        ("assert f() == {'a': [1]}", {"a": [1]}, True),
        ("assert f() == {1: 'x'}", {"1": "x"}, True),  # dict keys cross as JSON keys
        ("assert f() == 2", 3, False),
        ("assert f() is None", None, True),
        ("assert f() is None", 0, False),
        ("assert f() is True", 1, False),
        ("assert f() is not False", 0, True),
        ("assert f()", [0], True),
        ("assert f()", "", False),
        ("assert not f()", 0.0, True),
    ],
)
def test_results_are_checked_with_python_semantics_on_plain_data(check_source, value, holds):
    (call,) = parse_assert_tests(check_source)
    assert assert_holds(call, json.dumps(value)) is holds


def test_a_result_that_is_not_json_never_holds():
    (call,) = parse_assert_tests("assert f() == 1")
    assert not assert_holds(call, "not json")
    assert not assert_holds(call, "")


def _row(source: str) -> dict:
    tests = {"inputs": [source], "outputs": [""], "testtype": "code", "fn_name": ""}
    return {"prompt": "p", "tests": json.dumps(tests)}


@pytest.mark.parametrize(
    ("source", "program", "score"),
    [
        ("assert is_even(2)\nassert not is_even(3)", "def is_even(n):\n    return n % 2 == 0\n", 1.0),
        ("assert is_even(2)\nassert not is_even(3)", "def is_even(n):\n    return True\n", 0.0),
        ("assert find([1, 2], 5) is None", "def find(xs, x):\n    return xs.index(x) if x in xs else None\n", 1.0),
        ("assert find([1, 2], 5) is None", "def find(xs, x):\n    return -1\n", 0.0),
        ("assert ok('a') is True", "def ok(s):\n    return 1\n", 0.0),  # 1 is not True
        ("assert ok('a') is True", "def ok(s):\n    return bool(s)\n", 1.0),
    ],
)
def test_honest_and_wrong_programs_of_each_form(source, program, score):
    env = resd.envs.load("code")
    feedback = env.score(f"```python\n{program}```", _row(source))
    assert feedback.score == score, feedback.feedback
