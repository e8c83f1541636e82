"""Sorting Manufactoria answers into kinds of factory (resd.envs.manufactoria.kinds)."""

from __future__ import annotations

import pytest

from resd.envs.manufactoria import kinds
from resd.envs.manufactoria.checking import TapeTest

# "at least one red": accepted tapes R, BR, RR; rejected tapes "", B, BB
TESTS = [TapeTest(t, "R" in t, check_output=False) for t in ["R", "BR", "RR", "", "B", "BB"]]

AT_LEAST_ONE_RED = """\
START start:
    NEXT scan

PULLER_RB scan:
    [R] end
    [B] scan
"""


def answer(code: str) -> str:
    return f"Here is my factory:\n```manufactoria\n{code}\n```\n"


def test_each_kind_of_answer():
    assert kinds.program_kind("I cannot write this.", TESTS) == "no program"
    assert kinds.program_kind(answer("START start:\n    NEXT nowhere"), TESTS) == "no program"  # parse error
    assert kinds.program_kind(answer(AT_LEAST_ONE_RED + "\nEND end"), TESTS) == "task-specific"
    assert kinds.program_kind(answer(kinds.REJECT_ALL), TESTS) == "rejects all"
    assert kinds.program_kind(answer(kinds.ACCEPT_ALL), TESTS) == "accepts all"
    # a factory that never reaches the end (it paints forever) is cut off, so it rejects every tape
    looping = "START start:\n    NEXT paint\n\nPAINTER_RED paint:\n    NEXT paint\n\nEND end"
    assert kinds.program_kind(answer(looping), TESTS) == "rejects all"
    assert kinds.program_acc(kinds.REJECT_ALL, TESTS) == kinds.program_acc(kinds.ACCEPT_ALL, TESTS) == 0.5
    # a hostile response type is no program, not a crash
    assert kinds.program_kind(None, TESTS) == "no program"


def test_the_prompt_example_is_recognised_with_other_comments_and_spacing():
    code = kinds.EXAMPLE_CODE
    assert "PULLER_RB first:" in code and code.rstrip().endswith("END end")
    respaced = "\n\n".join(line.split("#")[0].rstrip().replace(" ", "   ") + "  # my note" for line in code.splitlines())
    assert kinds.program_kind(answer(respaced), TESTS) == "prompt example"
    # the example accepts the tape R only: right on the 3 rejected tapes and on R
    assert kinds.program_acc(code, TESTS) == pytest.approx(4 / 6)
    # one node changed is no longer the example
    assert kinds.program_kind(answer(code.replace("[R] rest_rb", "[B] rest_rb")), TESTS) != "prompt example"
