"""Running a program against the tests of a scene: code extraction, safety filter, sandbox.

Each test calls ``predict_position(t)`` through :func:`resd.sandbox.run_tests` with a 1.0 s limit
on the judging side's clock; the program is executed afresh for every test. Only the returned
positions (plain data) come back; the expected positions and the distance check stay here, so the
program cannot see or forge them. The outcome of each test is a :class:`CaseResult`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from resd.envs.bouncingsim import distance
from resd.envs.bouncingsim.checks import ParsedAssert, ball_distances, check_distance

TIME_LIMIT_S = 1.0
MEMORY_MB = 512
ERROR_PREFIX = "Error: "
WRONG_ANSWER_PREFIX = "WrongAnswer: "
INCORRECT_FORMAT = "Incorrect format"
SAFETY_MESSAGE = "Execution blocked by safety filter (restricted patterns in code)."
#: substrings that make the whole program fail unexecuted (upstream's list, matched literally)
BLOCKED_PATTERNS = (
    "threading",
    "multiprocess",
    "multiprocessing",
    "import os",
    "from os",
    "shutil",
    "import torch",
    "from torch",
    "import sklearn",
    "from sklearn",
)
_CODE_BLOCK = re.compile(r"```(?:python)?(.*?)```", re.DOTALL)


def timeout_message(limit_s: float = TIME_LIMIT_S) -> str:
    return (
        f"Time limit exceeded (killed after {limit_s}s). "
        "Your code likely has an infinite loop in collision handling."
    )


@dataclasses.dataclass
class CaseResult:
    """The outcome of one test.

    ``actual`` is "passed", ``INCORRECT_FORMAT``, a message starting with ``ERROR_PREFIX``
    (safety filter, syntax error, timeout, exception) or with ``WRONG_ANSWER_PREFIX``.
    """

    index: int
    assert_text: str
    time_text: str
    time: float
    passed: bool
    actual: str
    debug: str = ""
    avg_distance: float | None = None
    distances: list[float] | None = None
    seconds: float | None = None

    @property
    def is_error(self) -> bool:
        return self.actual.startswith(ERROR_PREFIX)

    @property
    def is_wrong_answer(self) -> bool:
        return self.actual.startswith(WRONG_ANSWER_PREFIX)


def extract_code(response: str) -> str | None:
    """The last fenced block (```python ... ``` or ``` ... ```), stripped; None if there is none
    or it is empty."""
    # Every block ends with ```, so searching only up to the last one finds the same blocks, and
    # then each tried opening finds its closing instead of scanning to the end (linear time).
    blocks = _CODE_BLOCK.findall(response, 0, response.rfind("```") + 3)
    if not blocks:
        return None
    code = blocks[-1].strip()
    return code or None


def blocked_pattern(code: str) -> str | None:
    """The first restricted pattern found in ``code``, or None."""
    return next((p for p in BLOCKED_PATTERNS if p in code), None)


SOLUTION_FILE = "<solution>"


@lru_cache(maxsize=1)
def prelude_source() -> str:
    """The helpers a program may call (``check_distance``), as source for the sandbox."""
    return Path(distance.__file__).read_text(encoding="utf-8")


RunTests = Callable[..., list[Any]]


def _default_run_tests() -> RunTests:
    from resd.sandbox import run_tests as sandbox_run_tests

    return sandbox_run_tests


def run_tests(
    code: str,
    tests: Sequence[ParsedAssert],
    assert_texts: Sequence[str],
    *,
    time_limit_s: float = TIME_LIMIT_S,
    memory_mb: int = MEMORY_MB,
    run_sandbox: RunTests | None = None,
) -> list[CaseResult]:
    """Run ``code`` (already extracted) against every test and return one record per test.

    ``run_sandbox`` stands in for :func:`resd.sandbox.run_tests` (same signature and outcomes).
    """

    def record(i: int, passed: bool, actual: str, **extra: Any) -> CaseResult:
        return CaseResult(i, assert_texts[i], tests[i].time_text, tests[i].time, passed, actual, **extra)

    if blocked_pattern(code) is not None:
        return [record(i, False, ERROR_PREFIX + SAFETY_MESSAGE) for i in range(len(tests))]
    try:
        with warnings.catch_warnings():  # the model's SyntaxWarnings are not ours to log
            warnings.simplefilter("ignore")
            compile(code, SOLUTION_FILE, "exec")
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        # ValueError: null bytes in the source; the others: pathological nesting or literals
        return [
            record(i, False, f"{ERROR_PREFIX}Syntax Error: {e}", debug="Compilation failed.") for i in range(len(tests))
        ]
    run = run_sandbox or _default_run_tests()
    calls = [{"kind": "call", "fn_name": "predict_position", "args": [t.time], "fallback": False} for t in tests]
    outcomes = run(
        code,
        calls,
        time_limit_s=time_limit_s,
        memory_mb=memory_mb,
        filename=SOLUTION_FILE,
        prelude=prelude_source(),
        prelude_names=["check_distance"],
    )
    return [_judge(record, i, test, outcome, time_limit_s, memory_mb) for i, (test, outcome) in enumerate(zip(tests, outcomes))]


def _error_message(outcome: Any, memory_mb: int) -> str:
    """The feedback line of a test that ended in an error, in upstream's words where it has them."""
    error = str(getattr(outcome, "error", "") or "Unknown error.")
    phase = getattr(outcome, "phase", "")
    if phase == "define":
        return f"DefinitionError: {error}"
    if phase == "call" and error.startswith("Non-serializable result type: "):
        kind = error[len("Non-serializable result type: ") :][:80]
        return f"TypeError: predict_position must return a list of [x, y] number pairs, got a value of type {kind}"
    if phase == "call":
        trace = str(getattr(outcome, "traceback", "") or "").rstrip()
        return f"{error}\n{trace}" if trace else error
    if phase == "resolve":
        return error
    if error.startswith("MemoryError"):
        return f"MemoryError: the program exceeded the memory limit of {memory_mb} MB"
    if error.startswith("OutputLimitExceeded"):
        return "Killed: the program was stopped before it returned a result (output over the limit)"
    if "killed by signal" in error:
        return f"Killed: the program was stopped before it returned a result ({error[error.find('killed by'):][:100]}"
    code = re.search(r"exit code (-?\d+)", error)
    return f"ProcessExit: the program ended (exit code {code.group(1) if code else '?'}) before predict_position returned"


def _judge(
    record: Callable[..., CaseResult],
    i: int,
    test: ParsedAssert,
    outcome: Any,
    time_limit_s: float,
    memory_mb: int,
) -> CaseResult:
    status = getattr(outcome, "status", "error")
    seconds = getattr(outcome, "time_s", None)
    seconds = float(seconds) if isinstance(seconds, (int, float)) else None
    if status in ("timeout", "skipped"):
        return record(i, False, ERROR_PREFIX + timeout_message(time_limit_s))
    if status != "ok":
        return record(i, False, ERROR_PREFIX + _error_message(outcome, memory_mb)[:4000], seconds=seconds)
    text = getattr(outcome, "value", "")
    debug = f"actual_output={text}" if isinstance(text, str) else ""
    try:
        actual = json.loads(text)
        debug = f"actual_output={json.dumps(actual)}"  # as upstream prints it (with spaces)
        avg = check_distance(actual, test.expected)
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        return record(i, False, f"{ERROR_PREFIX}{type(e).__name__}: {e}", debug=debug, seconds=seconds)
    dists = ball_distances(actual, test.expected)
    if avg <= test.threshold:
        return record(i, True, "passed", avg_distance=avg, distances=dists, seconds=seconds)
    lines = [f"{WRONG_ANSWER_PREFIX}avg_distance={avg:.3f}, threshold={test.threshold}"]
    for k, (got, want, d) in enumerate(zip(actual, test.expected, dists), 1):
        lines.append(f"Ball {k}: off by {d:.1f}m (got [{got[0]}, {got[1]}], expected [{want[0]}, {want[1]}])")
    return record(i, False, "\n".join(lines), debug=debug, avg_distance=avg, distances=dists, seconds=seconds)
