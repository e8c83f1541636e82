"""BouncingSim test lines, stored formats, code extraction and the feedback text (no processes)."""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resd.envs.base import DataError
from resd.sandbox import TestOutcome
from resd.envs.bouncingsim.checks import (
    check_distance,
    decode_ground_truth,
    encode_ground_truth,
    make_assert,
    parse_assert,
)
from resd.envs.bouncingsim.feedback import (
    INCORRECT_FORMAT_MESSAGE,
    NEARLY_CORRECT_HINT,
    TRUNCATED_MESSAGE,
    format_feedback,
)
from resd.envs.bouncingsim.runner import (
    BLOCKED_PATTERNS,
    INCORRECT_FORMAT,
    SAFETY_MESSAGE,
    CaseResult,
    blocked_pattern,
    extract_code,
    run_tests,
    timeout_message,
)

# ---------------------------------------------------------------- check_distance


def test_check_distance_is_the_mean_rounded_to_3_decimals():
    assert check_distance([[0, 0], [0, 0]], [[3, 4], [0, 1]]) == 3.0
    assert check_distance([[0.0, 0.0]], [[1.0, 1.0]]) == 1.414
    assert check_distance([(1, 2)], ((1, 2),)) == 0.0


def test_check_distance_raises_on_length_mismatch():
    with pytest.raises(ValueError, match="Lists must have same length: 1 vs 2"):
        check_distance([[0, 0]], [[0, 0], [1, 1]])


@pytest.mark.parametrize(
    ("actual", "error"),
    [([], TypeError), (None, TypeError), ("ab", TypeError), ([[0]], ValueError), ([["1", 2]], ValueError), ([[True, 2]], ValueError)],
)
def test_check_distance_rejects_malformed_points(actual, error):
    with pytest.raises(error):
        check_distance(actual, [[0.0, 0.0]])


def test_check_distance_passes_nan_through():
    assert math.isnan(check_distance([[math.nan, 0.0]], [[0.0, 0.0]]))


# ---------------------------------------------------------------- assert lines


def test_make_assert_format():
    line = make_assert(0.3, [[812.345, -0.001], [3.0, 1e-3]])
    assert line == "assert check_distance(predict_position(0.30), [[812.35, 0.0], [3.0, 0.0]]) <= 50.0"
    parsed = parse_assert(line)
    assert parsed is not None
    assert (parsed.time_text, parsed.time, parsed.threshold) == ("0.30", 0.3, 50.0)
    assert parsed.expected == [[812.35, 0.0], [3.0, 0.0]]


def test_the_assert_line_is_valid_python():
    line = make_assert(1.5, [[1.0, 2.0]])
    namespace = {"check_distance": check_distance, "predict_position": lambda t: [[1.0, 2.0]]}
    exec(line, namespace)
    namespace["predict_position"] = lambda t: [[100.0, 2.0]]
    with pytest.raises(AssertionError):
        exec(line, namespace)


@pytest.mark.parametrize(
    "line",
    [
        "assert predict_position(0.1) == [[1, 2]]",
        "assert check_distance(predict_position(x), [[1, 2]]) <= 50.0",
        "assert check_distance(predict_position(0.1), [[1, 'a']]) <= 50.0",
        "assert check_distance(predict_position(0.1), [[1, 2]]) <= fifty",
        "assert check_distance(predict_position(nan), [[1, 2]]) <= 50.0",
    ],
)
def test_non_standard_assert_lines_are_not_parsed(line):
    assert parse_assert(line) is None


# ---------------------------------------------------------------- stored ground truth

TESTS = [make_assert(0.1, [[1.0, 2.0]]), make_assert(0.2, [[3.0, 4.0]])]


def test_decode_accepts_every_stored_form():
    blob = encode_ground_truth(TESTS)
    assert decode_ground_truth(TESTS) == TESTS
    assert decode_ground_truth(json.dumps(TESTS)) == TESTS
    assert decode_ground_truth(json.dumps(json.dumps(TESTS))) == TESTS  # veRL wraps the field once more
    assert decode_ground_truth(blob) == TESTS
    assert decode_ground_truth(json.dumps(blob)) == TESTS


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/bsim_pwned",))


def test_decode_refuses_pickled_code(tmp_path):
    blob = base64.b64encode(zlib.compress(pickle.dumps([_Evil()]))).decode()
    with pytest.raises(DataError, match="refusing"):
        decode_ground_truth(blob)
    assert not os.path.exists("/tmp/bsim_pwned")


def test_decode_refuses_a_decompression_bomb():
    blob = base64.b64encode(zlib.compress(pickle.dumps(["a" * (20 * 1024 * 1024)]))).decode()
    with pytest.raises(DataError, match="more than"):
        decode_ground_truth(blob)


@pytest.mark.parametrize("value", [None, 3, "", "not base64 !", "[1, 2]", "[]", [], [1], {"a": 1}, "aGVsbG8="])
def test_decode_rejects_garbage(value):
    with pytest.raises(DataError):
        decode_ground_truth(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: base64.b64encode(b).decode()), st.lists(st.integers())))
def test_decode_only_ever_raises_data_error(value):
    try:
        decode_ground_truth(value)
    except DataError:
        pass


# ---------------------------------------------------------------- code extraction and filters


def test_extract_code_takes_the_last_block():
    text = "```python\nfirst()\n```\nthen\n```\nsecond()\n```"
    assert extract_code(text) == "second()"
    assert extract_code("```python\n  x = 1  \n```") == "x = 1"


@pytest.mark.parametrize("text", ["no code", "```python\n\n   \n```", "```python\nunterminated", ""])
def test_extract_code_none_when_missing_or_empty(text):
    assert extract_code(text) is None


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("`python\n x=1()")), max_size=80))
def test_extract_code_never_raises(text):
    code = extract_code(text)
    assert code is None or (code.strip() == code and code)


@pytest.mark.parametrize("pattern", BLOCKED_PATTERNS)
def test_each_blocked_pattern_fails_every_test_without_running(pattern):
    tests = [parse_assert(line) for line in TESTS]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the sandbox must not be called")

    code = f"def predict_position(t):\n    # {pattern}\n    return [[1.0, 2.0]]"
    assert blocked_pattern(code) is not None
    records = run_tests(code, tests, TESTS, run_sandbox=must_not_run)
    assert [r.actual for r in records] == ["Error: " + SAFETY_MESSAGE] * 2
    assert not any(r.passed for r in records)


def test_compile_failure_fails_every_test_with_the_message():
    tests = [parse_assert(line) for line in TESTS]
    code = "def predict_position(t):\nreturn 1"
    try:
        compile(code, "<solution>", "exec")
    except SyntaxError as e:
        message = f"Error: Syntax Error: {e}"
    records = run_tests(code, tests, TESTS, run_sandbox=lambda *a, **k: pytest.fail("must not run"))
    assert [r.actual for r in records] == [message, message]
    assert records[0].debug == "Compilation failed."


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from(["ok", "error", "timeout", "skipped", "weird"]),
    phase=st.sampled_from(["", "define", "resolve", "call", "run", "other"]),
    value=st.one_of(
        st.text(max_size=80),
        st.sampled_from(
            ["[[1, 2]]", "[[1e999, 2]]", "[[1, 2], [3, 4]]", "5", '{"a": 1}', "[1, 2]", "null", "[[true, 2]]", "[[" * 50]
        ),
    ),
    error=st.text(max_size=60),
)
def test_any_sandbox_outcome_gives_a_record(status, phase, value, error):
    """Whatever the sandbox reports back (it is the program's output, so hostile), judging never raises."""
    tests = [parse_assert(TESTS[0])]
    outcome = TestOutcome(status, value=value, error=error, phase=phase)
    (record,) = run_tests(
        "def predict_position(t):\n    return 0", tests, TESTS[:1], run_sandbox=lambda *a, **k: [outcome]
    )
    assert record.passed == (record.actual == "passed")
    assert record.passed or record.actual.startswith(("Error: ", "WrongAnswer: "))


# ---------------------------------------------------------------- feedback text


def wa(index, t, dists, got=None, expected=None):
    """A wrong-answer record with the given per-ball distances (balls offset along x)."""
    expected = expected or [[100.0 * (k + 1), 50.0] for k in range(len(dists))]
    got = got or [[e[0] + d, e[1]] for e, d in zip(expected, dists)]
    avg = round(sum(dists) / len(dists), 3)
    lines = [f"WrongAnswer: avg_distance={avg:.3f}, threshold=50.0"] + [
        f"Ball {k}: off by {d:.1f}m (got [{g[0]}, {g[1]}], expected [{e[0]}, {e[1]}])"
        for k, (g, e, d) in enumerate(zip(got, expected, dists), 1)
    ]
    line = make_assert(t, expected)
    return CaseResult(index, line, f"{t:.2f}", t, False, "\n".join(lines), f"actual_output={json.dumps(got)}", avg, dists)


def ok(index, t):
    return CaseResult(index, make_assert(t, [[1.0, 1.0]]), f"{t:.2f}", t, True, "passed", "", 0.0, [0.0])


def err(index, t, message, debug=""):
    return CaseResult(index, make_assert(t, [[1.0, 1.0]]), f"{t:.2f}", t, False, "Error: " + message, debug)


def test_all_passed_gives_no_feedback():
    assert format_feedback([ok(0, 0.1), ok(1, 0.2)]) == ""


def test_wrong_answer_feedback_line_by_line():
    records = [ok(0, 0.1), ok(1, 0.2), wa(2, 0.3, [60.0, 60.0]), wa(3, 0.4, [70.0, 80.0]), wa(4, 0.5, [200.0, 300.0]), wa(5, 0.6, [300.0, 300.0])]
    text = format_feedback(records)
    assert text.split("\n") == [
        "Passed 2/6 test cases.",
        "Tests pass for t <= 0.20, first failure at t = 0.30 (Test Case 3).",
        "Position error grows with time (avg_distance 60.0 at t=0.30 -> 300.0 at t=0.60), suggesting "
        "collision/bounce handling may be incorrect.",
        "",
        "Test Case 3: Wrong Answer",
        "avg_distance=60.000, threshold=50.0",
        "",
        "Input",
        "t = 0.30",
        "",
        "Per-Ball Distances",
        "Ball 1: off by 60.0m (got [160.0, 50.0], expected [100.0, 50.0])",
        "Ball 2: off by 60.0m (got [260.0, 50.0], expected [200.0, 50.0])",
        "",
        "",  # the block's own closing blank line, then the separator
        "Test Case 4: Wrong Answer",
        "avg_distance=75.000, threshold=50.0",
        "",
        "Input",
        "t = 0.40",
        "",
        "Per-Ball Distances",
        "Ball 1: off by 70.0m (got [170.0, 50.0], expected [100.0, 50.0])",
        "Ball 2: off by 80.0m (got [280.0, 50.0], expected [200.0, 50.0])",
        "",
        "",
        "Test Case 5: Wrong Answer",
        "avg_distance=250.000, threshold=50.0",
        "",
        "Input",
        "t = 0.50",
        "",
        "Per-Ball Distances",
        "Ball 1: off by 200.0m (got [300.0, 50.0], expected [100.0, 50.0])",
        "Ball 2: off by 300.0m (got [500.0, 50.0], expected [200.0, 50.0])",
    ]


def test_no_boundary_line_when_nothing_passes_and_no_growth_line_when_flat():
    text = format_feedback([wa(0, 0.1, [60.0]), wa(1, 0.2, [119.0])])
    assert text.split("\n")[:2] == ["Passed 0/2 test cases.", ""]  # 119 is not more than twice 60


def test_growth_is_measured_by_time_not_by_index():
    # the later time has the smaller error: no growth line even though index order says otherwise
    text = format_feedback([wa(0, 0.5, [60.0]), wa(1, 0.2, [300.0])])
    assert "grows" not in text
    text = format_feedback([wa(0, 0.5, [300.0]), wa(1, 0.2, [60.0])])
    assert "(avg_distance 60.0 at t=0.20 -> 300.0 at t=0.50)" in text


def test_growth_needs_two_wrong_answers():
    assert "grows" not in format_feedback([wa(0, 0.1, [60.0]), err(1, 0.2, "ValueError: x")])


def test_boundary_uses_the_last_pass_and_the_earliest_failure():
    # a pass after a failure: the boundary still reports the largest passing time
    records = [wa(0, 0.1, [60.0]), ok(1, 0.2), wa(2, 0.3, [60.0])]
    assert format_feedback(records).split("\n")[1] == "Tests pass for t <= 0.20, first failure at t = 0.10 (Test Case 1)."


def test_nearly_correct_hint():
    with_hint = format_feedback([wa(0, 0.1, [150.0, 2.0, 1.0])]).split("\n")
    assert with_hint[-1] == NEARLY_CORRECT_HINT
    assert with_hint[-2] == ""  # after the per-ball block's blank line
    for dists in ([150.0, 12.0], [99.0, 2.0, 100.0]):  # min not < 10, max not > 100
        assert NEARLY_CORRECT_HINT not in format_feedback([wa(0, 0.1, dists)])


def test_only_the_first_error_is_shown():
    records = [wa(0, 0.1, [60.0]), err(1, 0.2, "ZeroDivisionError: division by zero\nTraceback ..."), err(2, 0.3, "KeyError: 2")]
    lines = format_feedback(records).split("\n")
    assert lines == [
        "Passed 0/3 test cases.",
        "",
        "Runtime Error",
        "ZeroDivisionError: division by zero",
        "Traceback ...",
        "",
        "Input",
        "t = 0.20",
        "",
        "Assert",
        make_assert(0.2, [[1.0, 1.0]]),
    ]


def test_error_block_with_debug_output():
    lines = format_feedback([err(0, 0.1, "ValueError: Lists must have same length: 1 vs 3", "actual_output=[[1, 2]]")]).split("\n")
    assert lines[2:] == [
        "Runtime Error",
        "ValueError: Lists must have same length: 1 vs 3",
        "",
        "Input",
        "t = 0.10",
        "",
        "Assert",
        make_assert(0.1, [[1.0, 1.0]]),
        "",
        "Debug Output",
        "actual_output=[[1, 2]]",
    ]


def test_timeout_block():
    lines = format_feedback([ok(0, 0.1), err(1, 0.2, timeout_message())]).split("\n")
    assert lines[:5] == [
        "Passed 1/2 test cases.",
        "Tests pass for t <= 0.10, first failure at t = 0.20 (Test Case 2).",
        "",
        "Time Limit Exceeded",
        "Time limit exceeded (killed after 1.0s). Your code likely has an infinite loop in collision handling.",
    ]


def test_safety_filter_block_is_a_runtime_error():
    lines = format_feedback([err(0, 0.1, SAFETY_MESSAGE), err(1, 0.2, SAFETY_MESSAGE)]).split("\n")
    assert lines[:4] == ["Passed 0/2 test cases.", "", "Runtime Error", "Execution blocked by safety filter (restricted patterns in code)."]


def test_long_assert_is_cut_to_400_characters():
    line = make_assert(0.1, [[123.45, 678.9]] * 40)
    record = CaseResult(0, line, "0.10", 0.1, False, "Error: KeyError: 1")
    assert_line = format_feedback([record]).split("\n")[-1]
    assert assert_line == line[:400] + "..."


def test_feedback_is_capped_at_2000_characters():
    text = format_feedback([err(0, 0.1, "ValueError: " + "x" * 5000)])
    assert len(text) == 2000


def test_incorrect_format_texts():
    record = CaseResult(0, "", "", 0.0, False, INCORRECT_FORMAT)
    assert format_feedback([record]) == "Passed 0/1 test cases.\n\n" + INCORRECT_FORMAT_MESSAGE
    assert format_feedback([record], truncated=True) == "Passed 0/1 test cases.\n\n" + TRUNCATED_MESSAGE
    assert INCORRECT_FORMAT_MESSAGE == "Incorrect Format: Put your code inside a ```python ... ``` block."


def test_random_record_mixes_never_break_the_formatter():
    rng = random.Random(0)
    for _ in range(500):
        records = []
        for i in range(rng.randint(1, 15)):
            t = round(0.1 * (i + 1), 2)
            kind = rng.choice("owe")
            if kind == "o":
                records.append(ok(i, t))
            elif kind == "w":
                records.append(wa(i, t, [rng.uniform(0, 500) for _ in range(rng.randint(1, 5))]))
            else:
                records.append(err(i, t, rng.choice(["KeyError: 1", timeout_message(), "x" * rng.randint(0, 3000)])))
        text = format_feedback(records)
        assert len(text) <= 2000
        if all(r.passed for r in records):
            assert text == ""
        else:
            assert text.startswith(f"Passed {sum(r.passed for r in records)}/{len(records)} test cases.")


def test_the_sandbox_is_asked_for_calls_only_and_judging_stays_here():
    """The expected positions never go into the sandbox; a timed-out test is a timeout."""
    tests = [parse_assert(line) for line in TESTS]
    seen = {}

    def fake(code, calls, **kwargs):
        seen.update(calls=calls, **kwargs)
        return [TestOutcome("ok", value="[[1.0, 2.0]]"), TestOutcome("timeout")]

    first, second = run_tests("def predict_position(t):\n    return 0", tests, TESTS, run_sandbox=fake)
    assert seen["calls"] == [
        {"kind": "call", "fn_name": "predict_position", "args": [t.time], "fallback": False} for t in tests
    ]
    assert str(tests[0].expected[0][0]) not in json.dumps(seen["calls"]) + seen["prelude"]
    assert seen["prelude_names"] == ["check_distance"]
    assert first.passed == (check_distance([[1.0, 2.0]], tests[0].expected) <= tests[0].threshold)
    assert second.actual == "Error: " + timeout_message()
