"""The feedback text a BouncingSim response receives (as in horizon-llm/RESD,
``selfevolve/resd/feedback/bouncingsim.py``).

Layout::

    Passed p/n test cases.
    Tests pass for t <= T1, first failure at t = T2 (Test Case k).     (if some pass and some fail)
    Position error grows with time (...)                               (if wrong answers drift apart)

    <records>

Records: the first error (safety filter, syntax, timeout, exception) alone if there is one,
otherwise the first three failures by test index. The text is cut to 2000 characters. A response
that passes every test gets "" (there is nothing to correct).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from resd.envs.bouncingsim.runner import ERROR_PREFIX, INCORRECT_FORMAT, WRONG_ANSWER_PREFIX, CaseResult

MAX_FEEDBACK_CHARS = 2000
MAX_ASSERT_CHARS = 400
MAX_DEBUG_LINES = 10
MAX_DEBUG_LINE_CHARS = 300
MAX_WRONG_ANSWERS_SHOWN = 3
INCORRECT_FORMAT_MESSAGE = "Incorrect Format: Put your code inside a ```python ... ``` block."
TRUNCATED_MESSAGE = "Truncated Attempt: Your previous response was too long and truncated."
NEARLY_CORRECT_HINT = (
    "Some balls are nearly correct while others are far off. The far-off balls probably missed a wall "
    "collision: check that collision detection tests the ball against every container edge and that the "
    "collision point lies on the finite edge segment, not on the infinite line through it."
)
_TIME_IN_ASSERT = re.compile(r"predict_position\(([^)]+)\)")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def summary_lines(records: Sequence[CaseResult]) -> list[str]:
    """The header: pass count, the pass/fail boundary and the growing-error line."""
    passed = [r for r in records if r.passed]
    failed = [r for r in records if not r.passed]
    lines = [f"Passed {len(passed)}/{len(records)} test cases."]
    if passed and failed:
        last_pass = max(passed, key=lambda r: r.time)
        first_fail = min(failed, key=lambda r: (r.time, r.index))
        lines.append(
            f"Tests pass for t <= {last_pass.time_text}, first failure at t = {first_fail.time_text} "
            f"(Test Case {first_fail.index + 1})."
        )
    wrong = sorted((r for r in failed if r.is_wrong_answer and r.avg_distance is not None), key=lambda r: r.time)
    if len(wrong) >= 2 and wrong[-1].avg_distance > 2 * wrong[0].avg_distance:  # type: ignore[operator]
        first, last = wrong[0], wrong[-1]
        lines.append(
            f"Position error grows with time (avg_distance {first.avg_distance:.1f} at t={first.time_text} -> "
            f"{last.avg_distance:.1f} at t={last.time_text}), suggesting collision/bounce handling may be incorrect."
        )
    return lines


def _debug_block(debug: str) -> list[str]:
    text = debug.strip()
    if not text:
        return []
    lines = text.split("\n")
    out = ["", "Debug Output"] + [_cut(line, MAX_DEBUG_LINE_CHARS) for line in lines[:MAX_DEBUG_LINES]]
    if len(lines) > MAX_DEBUG_LINES:
        out.append(f"... ({len(lines) - MAX_DEBUG_LINES} more lines)")
    return out


def _input_block(record: CaseResult) -> list[str]:
    m = _TIME_IN_ASSERT.search(record.assert_text)
    return ["Input", f"t = {m.group(1) if m else record.time_text}", ""]


def _error_block(record: CaseResult) -> list[str]:
    message = record.actual[len(ERROR_PREFIX) :]
    title = "Time Limit Exceeded" if message.startswith("Time limit exceeded") else "Runtime Error"
    lines = [title, message, ""] + _input_block(record)
    lines += ["Assert", _cut(record.assert_text, MAX_ASSERT_CHARS)]
    return lines + _debug_block(record.debug)


def _wrong_answer_block(record: CaseResult) -> list[str]:
    first, *balls = record.actual.split("\n")
    lines = [f"Test Case {record.index + 1}: Wrong Answer", first[len(WRONG_ANSWER_PREFIX) :], ""]
    lines += _input_block(record)
    balls = [b for b in balls if b.strip()]
    if balls:
        lines += ["Per-Ball Distances", *balls, ""]
    d = record.distances or []
    if d and max(d) > 100 and min(d) < 10:
        lines += [NEARLY_CORRECT_HINT]
    return lines


def _record_block(record: CaseResult, truncated: bool) -> list[str]:
    if record.actual == INCORRECT_FORMAT:
        return [TRUNCATED_MESSAGE if truncated else INCORRECT_FORMAT_MESSAGE]
    if record.is_error:
        return _error_block(record)
    if record.is_wrong_answer:
        return _wrong_answer_block(record)
    return [f"Test Case {record.index + 1}: Wrong Answer", "", "Assert", _cut(record.assert_text, MAX_ASSERT_CHARS)]


def select_records(records: Sequence[CaseResult]) -> list[CaseResult]:
    """The first error alone if any test errored, else the first three failures by index."""
    failed = sorted((r for r in records if not r.passed), key=lambda r: r.index)
    errors = [r for r in failed if r.is_error]
    return errors[:1] if errors else failed[:MAX_WRONG_ANSWERS_SHOWN]


def format_feedback(records: Sequence[CaseResult], *, truncated: bool = False) -> str:
    """The full feedback text ("" if every test passed)."""
    if not records or all(r.passed for r in records):
        return ""
    parts = summary_lines(records) + [""]
    for record in select_records(records):
        parts += _record_block(record, truncated) + [""]
    return "\n".join(parts).rstrip()[:MAX_FEEDBACK_CHARS]
