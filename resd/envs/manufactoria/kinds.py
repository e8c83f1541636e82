"""What kind of factory an answer is: a check for answers that score without solving anything.

Manufactoria's ``acc`` is the fraction of a problem's test tapes handled right, so a program that
ignores the task still scores the share of tapes it happens to get right: one that rejects every
tape scores the share that should be rejected (about 0.6 on the contains_count family). A small
model that cannot solve the problems can raise its ``acc`` by copying the prompt's example factory
(which accepts only the tape ``R``) into a well-formed answer; :func:`program_kind` tells such
answers from task-specific ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from resd.envs.manufactoria.checking import TapeTest, run_tests
from resd.envs.manufactoria.dsl import parse_program
from resd.envs.manufactoria.env import extract_code
from resd.envs.manufactoria.interpreter import MAX_STEPS, run_program
from resd.envs.manufactoria.prompt import EXAMPLE_SECTION

KINDS = ("no program", "prompt example", "rejects all", "accepts all", "task-specific")
EXAMPLE_CODE = extract_code(EXAMPLE_SECTION) or ""
REJECT_ALL = "START start:\n    NEXT NONE\n\nEND end"
ACCEPT_ALL = "START start:\n    NEXT end\n\nEND end"


def normalized(code: str) -> str:
    """The code without comments, blank lines and spacing differences."""
    lines = (re.sub(r"\s+", " ", line.split("#", 1)[0]).strip() for line in code.splitlines())
    return "\n".join(line for line in lines if line)


def program_kind(response: object, tests: Sequence[TapeTest], max_steps: int = MAX_STEPS) -> str:
    """The kind (one of :data:`KINDS`) of the factory in ``response`` on these test tapes.

    ``no program``: no code block or a parse error (scored 0); ``prompt example``: the prompt's
    example factory, comments and spacing aside; ``rejects all`` / ``accepts all``: any other
    program that rejects (accepts) every test tape; ``task-specific``: decisions that depend on
    the tape.
    """
    code = extract_code(response if isinstance(response, str) else "")
    if code is None:
        return "no program"
    try:
        program = parse_program(code)
    except Exception:  # noqa: BLE001 - scoring counts any parse failure as a failed answer too
        return "no program"
    if normalized(code) == normalized(EXAMPLE_CODE):
        return "prompt example"
    accepted = {run_program(program, test.input, max_steps).finished for test in tests}
    if accepted == {False}:
        return "rejects all"
    if accepted == {True}:
        return "accepts all"
    return "task-specific"


def program_acc(code: str, tests: Sequence[TapeTest]) -> float:
    """The fraction of ``tests`` the program ``code`` handles right (0 when it does not parse)."""
    records = run_tests(code, tests)
    return sum(r.passed for r in records) / max(len(tests), 1)
