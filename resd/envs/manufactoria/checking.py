"""Test tapes, the pass rule, and one record per test (as in horizon-llm/RESD,
``selfevolve/resd/feedback/manufactoria.py``).

A record's ``actual`` is the final tape, or ``"Error: <reason>"`` when a failing test was
rejected (and for a program that does not parse), which is what the feedback renderer keys on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from resd.envs.manufactoria.dsl import ParseError, Program, parse_program
from resd.envs.manufactoria.interpreter import (
    MAX_ITERATIONS,
    MAX_STEPS,
    ROUTED_TO_NONE,
    ExecutionResult,
    run_program,
)

ERROR_PREFIX = "Error: "
#: ``actual`` of the record standing for a response without a code block
INCORRECT_FORMAT = "Incorrect format"
#: an expected output with any of these characters is a regular expression
REGEX_CHARS = ".+*?|()"
#: trace length shown in debug text
TRACE_STEPS = 15


@dataclasses.dataclass(frozen=True)
class TapeTest:
    """One test: run ``input`` and compare acceptance (and, if ``check_output``, the final tape)."""

    input: str
    expected_accepted: bool
    expected_output: str = ""
    check_output: bool = True
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TestRecord:
    """The result of one test (or the single record of a parse failure, with ``input`` None)."""

    __test__ = False  # not a pytest class

    index: int
    input: str | None
    expected: str | None
    actual: str
    passed: bool
    debug: str = ""

    def to_dict(self) -> dict[str, Any]:
        # written out: dataclasses.asdict deep-copies and is several times slower
        return {
            "index": self.index,
            "input": self.input,
            "expected": self.expected,
            "actual": self.actual,
            "passed": self.passed,
            "debug": self.debug,
        }


def output_matches(expected_output: str, final_tape: str) -> bool:
    """Regex full match when ``expected_output`` has any of ``.+*?|()``, else equality.

    An invalid regular expression falls back to equality.
    """
    if any(c in expected_output for c in REGEX_CHARS):
        try:
            return re.fullmatch(expected_output, final_tape) is not None
        except re.error:
            return final_tape == expected_output
    return final_tape == expected_output


def passes(test: TapeTest, result: ExecutionResult) -> bool:
    """The pass rule: acceptance must match; with ``check_output`` the output must match too."""
    if not test.check_output:
        return result.finished == test.expected_accepted
    return (output_matches(test.expected_output, result.final_tape) and result.finished) == test.expected_accepted



def format_trace(path: Sequence[str], max_steps: int = TRACE_STEPS) -> list[str]:
    """``  Step k: <node>`` for the last ``max_steps`` entries, after an omission line if longer."""
    lines = []
    offset = max(0, len(path) - max_steps)
    if offset:
        lines.append(f"  ... ({offset} earlier steps omitted)")
    for k, node_id in enumerate(path[offset:], offset + 1):
        lines.append(f"  Step {k}: {node_id}")
    return lines


def _node_type(program: Program, node_id: str) -> str:
    node = program.nodes.get(node_id)
    return node.node_type if node is not None else ""


def debug_lines(program: Program, test: TapeTest, result: ExecutionResult) -> list[str]:
    """Debug text of a failing test, one list item per line."""
    reason = result.rejection_reason
    tape = result.final_tape
    front = tape[0] if tape else "EMPTY"
    lines: list[str] = []
    if reason == MAX_ITERATIONS:
        stuck = result.path[-1]
        lines.append(f"Stuck at node: {stuck} ({_node_type(program, stuck)})")
        lines.append(f"Front tape character: {front}")
        lines.append(f"Remaining tape: '{tape}'")
    elif reason == ROUTED_TO_NONE:
        routing = result.path[-2]  # path[-1] is NONE and path[0] is start, so this exists
        lines.append("Execution Trace:")
        lines.extend(format_trace(result.path))
        lines.append(f"Rejection: {reason}")
        lines.append(f"Routing node: {routing} ({_node_type(program, routing)})")
        lines.append(f"Front tape character at rejection: {front}")
    else:
        if result.path:
            lines.append("Execution Trace:")
            lines.extend(format_trace(result.path))
        if reason:
            lines.append(f"Rejection: {reason}")
    lines.append(f"Finished: {result.finished}")
    lines.append(f"Actual output: '{tape}'")
    if test.check_output:
        lines.append(f"Expected output: '{test.expected_output}'")
    lines.append(f"Expected accepted: {test.expected_accepted}")
    return lines


def _check_one(program: Program, test: TapeTest, index: int, max_steps: int) -> TestRecord:
    result = run_program(program, test.input, max_steps)
    passed = passes(test, result)
    if passed:
        return TestRecord(index, test.input, test.expected_output, result.final_tape, True)
    actual = f"{ERROR_PREFIX}{result.rejection_reason}" if result.rejection_reason else result.final_tape
    debug = "\n".join(debug_lines(program, test, result))
    return TestRecord(index, test.input, test.expected_output, actual, False, debug)


def run_tests(code: str, tests: Sequence[TapeTest], max_steps: int = MAX_STEPS) -> list[TestRecord]:
    """Parse ``code`` and run every test; a parse failure is one failing record with input None."""
    try:
        program = parse_program(code)
    except ParseError as e:
        return [TestRecord(0, None, None, f"{ERROR_PREFIX}DSL Parse Error: {e}", False)]
    except Exception as e:  # noqa: BLE001 - never let a parser bug escape into training
        return [TestRecord(0, None, None, f"{ERROR_PREFIX}Unexpected parse error: {e}", False)]
    records = []
    for index, test in enumerate(tests):
        try:
            records.append(_check_one(program, test, index, max_steps))
        except Exception as e:  # noqa: BLE001 - a malformed test fails instead of crashing
            records.append(TestRecord(index, test.input, test.expected_output, f"{ERROR_PREFIX}{e}", False))
    return records
