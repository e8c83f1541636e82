"""Running a program against the tests of a scene: code extraction, safety filter, sandbox.

Every test runs in a fresh sandboxed process (``resd.sandbox.run_python``) with a 1.0 s limit,
as upstream does. The outcome of each test is a :class:`CaseResult`.
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

from resd.envs.bouncingsim import distance, driver
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
    blocks = _CODE_BLOCK.findall(response)
    if not blocks:
        return None
    code = blocks[-1].strip()
    return code or None


def blocked_pattern(code: str) -> str | None:
    """The first restricted pattern found in ``code``, or None."""
    return next((p for p in BLOCKED_PATTERNS if p in code), None)


@lru_cache(maxsize=1)
def driver_source() -> str:
    """The sandboxed test program: ``check_distance`` followed by the driver."""
    parts = [Path(module.__file__).read_text(encoding="utf-8") for module in (distance, driver)]
    return "\n\n".join(parts)


RunPython = Callable[..., Any]


def _default_run_python() -> RunPython:
    from resd.sandbox import run_python

    return run_python


def run_tests(
    code: str,
    tests: Sequence[ParsedAssert],
    assert_texts: Sequence[str],
    *,
    time_limit_s: float = TIME_LIMIT_S,
    memory_mb: int = MEMORY_MB,
    run_python: RunPython | None = None,
) -> list[CaseResult]:
    """Run ``code`` (already extracted) against every test and return one record per test."""

    def record(i: int, passed: bool, actual: str, **extra: Any) -> CaseResult:
        return CaseResult(i, assert_texts[i], tests[i].time_text, tests[i].time, passed, actual, **extra)

    if blocked_pattern(code) is not None:
        return [record(i, False, ERROR_PREFIX + SAFETY_MESSAGE) for i in range(len(tests))]
    try:
        with warnings.catch_warnings():  # the model's SyntaxWarnings are not ours to log
            warnings.simplefilter("ignore")
            compile(code, "<solution>", "exec")
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        # ValueError: null bytes in the source; the others: pathological nesting or literals
        return [
            record(i, False, f"{ERROR_PREFIX}Syntax Error: {e}", debug="Compilation failed.") for i in range(len(tests))
        ]
    run = run_python or _default_run_python()
    source = driver_source()
    records = []
    for i, test in enumerate(tests):
        request = json.dumps({"code": code, "t": test.time})
        result = run(source, stdin=request, timeout_s=time_limit_s, memory_mb=memory_mb)
        records.append(_judge(record, i, test, result, time_limit_s, memory_mb))
    return records


def _payload(stdout: Any) -> dict[str, Any] | None:
    if isinstance(stdout, bytes):
        stdout = stdout.decode("utf-8", errors="replace")
    if not isinstance(stdout, str):
        return None
    at = stdout.rfind(driver.RESULT_MARK)
    if at < 0:
        return None
    line = stdout[at + len(driver.RESULT_MARK) :].split("\n", 1)[0]
    try:
        payload = json.loads(line)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _judge(
    record: Callable[..., CaseResult],
    i: int,
    test: ParsedAssert,
    result: Any,
    time_limit_s: float,
    memory_mb: int,
) -> CaseResult:
    status = getattr(result, "status", "error")
    # a result printed before the process was stopped counts, as upstream's shared-memory result did
    payload = _payload(getattr(result, "stdout", ""))
    if payload is None:
        if status == "timeout":
            return record(i, False, ERROR_PREFIX + timeout_message(time_limit_s))
        if status == "memory":
            message = f"MemoryError: the program exceeded the memory limit of {memory_mb} MB"
        elif status == "killed":
            reason = str(getattr(result, "reason", "") or "stopped by the sandbox")
            message = f"Killed: the program was stopped before it returned a result ({reason})"
        else:
            code = getattr(result, "returncode", None)
            message = f"ProcessExit: the program ended (exit code {code}) before predict_position returned"
        return record(i, False, ERROR_PREFIX + message)
    kind = payload.get("kind")
    if kind in ("definition_error", "exception"):
        return record(i, False, ERROR_PREFIX + str(payload.get("error", "Unknown error.")))
    text = payload.get("json")
    seconds = payload.get("seconds") if isinstance(payload.get("seconds"), (int, float)) else None
    if not isinstance(text, str):
        return record(
            i,
            False,
            ERROR_PREFIX + "TypeError: predict_position must return a list of [x, y] number pairs, "
            f"got a value of type {str(payload.get('type', '?'))[:80]}",
            seconds=seconds,
        )
    debug = f"actual_output={text}"
    try:
        actual = json.loads(text)
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
