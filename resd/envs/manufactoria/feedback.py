"""The feedback text shown to the self-teacher (as ``format_test_feedback`` in horizon-llm/RESD,
``selfevolve/resd/feedback/manufactoria.py``).

Only failing tests are rendered. If any failing record is an error (a false rejection or a parse
failure), only the first such record is shown, as a ``Runtime Error``; otherwise the two failures
with the shortest ``len(input) + len(actual)`` are shown as ``Wrong Answer``. Strings longer than
their cap are cut and marked with ``...``.
"""

from __future__ import annotations

from collections.abc import Sequence

from resd.envs.manufactoria.checking import ERROR_PREFIX, INCORRECT_FORMAT, TestRecord

MAX_FEEDBACK_CHARS = 2000
MAX_WRONG_ANSWERS = 2
MAX_VALUE_CHARS = 250  # input, output and expected values
MAX_DEBUG_LINES = 10
MAX_DEBUG_LINE_CHARS = 300
INCORRECT_FORMAT_TEXT = "Incorrect Format: Put your code inside a ```manufactoria ... ``` block."
TRUNCATED_TEXT = "Truncated Attempt: Your previous response was too long and truncated."
NO_TESTS_TEXT = "No test execution information available."


def cut(value: object, limit: int) -> str:
    """``str(value)``, cut to ``limit`` characters and marked with ``...`` when longer."""
    text = value if isinstance(value, str) else str(value)
    return text[:limit] + "..." if len(text) > limit else text


def _is_error(record: TestRecord) -> bool:
    return isinstance(record.actual, str) and record.actual.startswith(ERROR_PREFIX)


def select_failures(records: Sequence[TestRecord]) -> list[TestRecord]:
    """The failing records to render, by the selection rule in the module docstring."""
    failing = [r for r in records if not r.passed]
    for record in failing:
        if _is_error(record):
            return [record]
    failing.sort(key=lambda r: len(str(r.input)) + len(str(r.actual)))  # stable: ties keep test order
    return failing[:MAX_WRONG_ANSWERS]


def _debug_block(debug: str) -> list[str]:
    text = debug.strip()
    if not text:
        return []
    lines = text.split("\n")
    block = ["", "Debug Output"]
    block.extend(cut(line, MAX_DEBUG_LINE_CHARS) for line in lines[:MAX_DEBUG_LINES])
    if len(lines) > MAX_DEBUG_LINES:
        block.append(f"... ({len(lines) - MAX_DEBUG_LINES} more lines)")
    return block


def render_record(record: TestRecord, *, truncated: bool = False) -> list[str]:
    """The lines of one record, without the blank line that follows it."""
    if _is_error(record):
        return [
            "Runtime Error",
            record.actual[len(ERROR_PREFIX) :],
            "",
            "Last Executed Input",
            cut(record.input, MAX_VALUE_CHARS),
            *_debug_block(record.debug),
        ]
    if record.actual == INCORRECT_FORMAT:
        return [TRUNCATED_TEXT if truncated else INCORRECT_FORMAT_TEXT]
    lines = [
        f"Test Case {record.index + 1}: Wrong Answer",
        "",
        "Input",
        cut(record.input, MAX_VALUE_CHARS),
        "",
        "Output",
        cut(record.actual, MAX_VALUE_CHARS),
    ]
    if record.expected:
        lines += ["", "Expected", cut(record.expected, MAX_VALUE_CHARS)]
    return lines + _debug_block(record.debug)


def format_feedback(records: Sequence[TestRecord], *, truncated: bool = False) -> str:
    """The feedback text for a list of test records ("" when every test passed)."""
    if not records:
        return NO_TESTS_TEXT
    parts: list[str] = []
    for record in select_failures(records):
        parts.extend(render_record(record, truncated=truncated))
        parts.append("")
    return "\n".join(parts).rstrip()[:MAX_FEEDBACK_CHARS]


def incorrect_format_feedback(truncated: bool = False) -> str:
    """Feedback for a response without a code block (another text if the response was truncated)."""
    return format_feedback([TestRecord(0, None, None, INCORRECT_FORMAT, False)], truncated=truncated)
