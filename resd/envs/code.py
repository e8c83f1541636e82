"""Code (LiveCodeBench-style): run the model's program against unit tests, LeetCode-style feedback.

Follows SDPO's code environment (lasgroup/SDPO, ``verl/utils/reward_score/feedback/code.py``): the
longest fenced block is the program; ``functional`` tests call a function with JSON arguments and
compare canonical JSON, ``stdin`` tests compare printed output; the reward is 1 only if every test
passes, ``acc`` is the fraction passed; the feedback shows the first runtime error, else a time-out,
else a format problem, else up to two wrong answers (shortest first), capped at 2,000 characters.
Every program runs in :mod:`resd.sandbox`.

Rows: SDPO JSON rows (``prompt`` text, ``system``, ``tests`` as a JSON string), veRL parquet rows
(``prompt`` messages, ``reward_model.ground_truth`` = the tests JSON) and raw LiveCodeBench rows
(``question_content``, ``starter_code``) are accepted. ``load_split("train"|"test")`` reads a small
problem set written for this project (``data/code_problems.jsonl``); the train split keeps a seeded
random half of each problem's tests, as SDPO's LiveCodeBench split does.

Deliberate differences from the upstream harness (each only changes cases it got wrong):
the OS sandbox replaces its builtin/import whitelist, and the program never shares a process with
the comparison (upstream runs asserts and compares inside the program's process, where a result with
an always-true ``__eq__`` or a faked pass line forges the reward): assert-style tests are parsed into
calls by :mod:`resd.envs.assert_tests` and refused at load time when they cannot be, and output caps
are constants (a cap derived from the expected output tells the program its size); functional inputs are read as a sequence of
JSON values (so ``[1, 2]`` and strings with spaces work); a ``Solution`` class method is found when
``fn_name`` is not a top-level function; ``sys.exit(0)`` ends a stdin program normally; line numbers
of stdin programs are not shifted by one; a program that dies is reported as a runtime error.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path
from typing import Any

from resd import sandbox
from resd.envs import register
from resd.envs.assert_tests import AssertCall, assert_holds, parse_assert_tests
from resd.envs.base import DataError, Environment, Example, Feedback, Message

INCORRECT_FORMAT = "Incorrect format"
TIMEOUT = "Time out"
ERROR_PREFIX = "Error: "
FILENAME = "Solution.py"
TRUNCATED_MESSAGE = (
    "Truncated Attempt: Your previous response was too long and truncated because it reached the maximum "
    "response length. Try again with a shorter response."
)
FORMAT_MESSAGE = "Incorrect Format: Put your code inside a ```python ... ``` block."
PARSE_FAILURE = "Failed to parse ground truth test cases."
DEFAULT_TIME_LIMIT_S = 1.0
TEST_TYPES = ("functional", "stdin", "code")

DATA_FILE = Path(__file__).parent / "data" / "code_problems.jsonl"

_FENCED = re.compile(r"```\w*\n(.*?)```", re.DOTALL)  # one group: findall gives the bodies

PROMPT_TEMPLATE = (
    "You are an expert Python programmer. Solve the programming problem below with a program that passes "
    "all of its tests. The time limit is 1 second. Briefly explain your reasoning first, then end your "
    "answer with the complete solution in a single ```python code block.\n\n{problem}"
)
SIGNATURE_LINE = "Your solution should have the following signature: ```python\n{starter_code}\n```"


def format_prompt(problem: str, starter_code: str = "") -> str:
    """The user prompt for a problem statement (and the starter code, when there is one)."""
    text = PROMPT_TEMPLATE.format(problem=problem.strip())
    if starter_code and starter_code.strip():
        text += "\n\n" + SIGNATURE_LINE.format(starter_code=starter_code.strip())
    return text


def extract_code(response: str) -> str | None:
    """The longest fenced code block (```` ```lang\\n...``` ````) of ``response``, or None."""
    if not isinstance(response, str):
        return None
    # Every block ends with ```, so searching only up to the last one finds the same blocks, and
    # then each tried opening finds its closing instead of scanning to the end (linear time).
    blocks = _FENCED.findall(response, 0, response.rfind("```") + 3)
    return max(blocks, key=len) if blocks else None


def parse_tests(raw: Any) -> dict[str, Any]:
    """Validate a tests object (a dict or its JSON string) ``{inputs, outputs, testtype, fn_name, time_limit}``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"tests: invalid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise DataError(f"tests: expected an object, got {type(raw).__name__}")
    for field in ("inputs", "outputs", "testtype"):
        if field not in raw:
            raise DataError(f"tests: missing field {field!r}")
    inputs, outputs = raw["inputs"], raw["outputs"]
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise DataError("tests: 'inputs' and 'outputs' must be lists")
    if len(inputs) != len(outputs):
        raise DataError(f"tests: {len(inputs)} inputs but {len(outputs)} outputs")
    if raw["testtype"] not in TEST_TYPES:
        raise DataError(f"tests: field 'testtype' must be one of {', '.join(TEST_TYPES)}, got {raw['testtype']!r}")
    fn_name = raw.get("fn_name") or ""
    if not isinstance(fn_name, str):
        raise DataError("tests: field 'fn_name' must be a string")
    time_limit = raw.get("time_limit")
    try:
        time_limit = float(time_limit) if time_limit is not None else None
    except (TypeError, ValueError):
        raise DataError(f"tests: field 'time_limit' must be a number, got {time_limit!r}") from None
    if time_limit is not None and not time_limit > 0:
        raise DataError(f"tests: field 'time_limit' must be positive, got {time_limit!r}")
    if raw["testtype"] == "code":
        for i, source in enumerate(inputs):
            try:
                parse_assert_tests(source)
            except DataError as e:
                raise DataError(f"tests: input {i}: {e}") from None
    return {**raw, "fn_name": fn_name, "time_limit": time_limit}


def parse_json_args(text: str) -> list[Any]:
    """The whitespace-separated JSON values of a functional test input (one argument each)."""
    decoder = json.JSONDecoder()
    values, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return values
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)


def canonical_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) of a JSON-like value; raises TypeError on other types."""

    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        raise TypeError(f"Non-serializable result type: {type(v).__name__}")

    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"))


def normalize_stdout(text: str) -> str:
    """Strip, then newlines to spaces and carriage returns dropped (the stdin comparison)."""
    return text.strip().replace("\n", " ").replace("\r", "")


def trim_expected_stdout(expected: str) -> str:
    """Strip the expected output and drop a trailing ``-`` marker (as the upstream harness does)."""
    expected = expected.strip()
    if expected.endswith("-"):
        expected = expected[: expected.rfind("-")].rstrip()
    return expected


@dataclasses.dataclass
class TestRecord:
    """The verdict on one test, in the upstream harness's shape (``actual`` carries the failure kind)."""

    __test__ = False  # not a pytest class

    test_idx: int
    input: Any
    expected: Any
    actual: Any
    passed: bool
    debug: str = ""
    skipped: bool = False  # not run (counted as a time-out) after an earlier test timed out


def _truncate(value: Any, max_chars: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:max_chars] + "..." if len(text) > max_chars else text


def format_feedback(
    records: list[TestRecord],
    truncated: bool = False,
    *,
    max_tests_to_show: int = 2,
    max_length: int = 2000,
    max_input_chars: int = 250,
    max_input_lines: int = 8,
    max_output_chars: int = 250,
    max_debug_lines: int = 10,
    max_debug_line_chars: int = 300,
) -> str:
    """LeetCode-style feedback on failed tests ("" when all pass), as SDPO's code environment writes it."""
    if not records:
        return "No test execution information available."

    def first(pred: Any) -> TestRecord | None:
        return next((r for r in records if pred(r)), None)

    selected = (
        first(lambda r: isinstance(r.actual, str) and r.actual.startswith(ERROR_PREFIX))
        or first(lambda r: r.actual == TIMEOUT and not r.skipped)
        or first(lambda r: r.actual == TIMEOUT)
        or first(lambda r: r.actual == INCORRECT_FORMAT)
    )
    if selected is not None:
        failing = [selected]
    else:
        wrong = [r for r in records if not r.passed]
        failing = sorted(wrong, key=lambda r: len(str(r.input)) + len(str(r.actual)))[:max_tests_to_show]
    if not failing:
        return ""

    parts: list[str] = []

    def input_block(title: str, value: Any) -> None:
        parts.append(title)
        if value is None:
            return
        if isinstance(value, dict):
            parts.extend(f"{k} = {_truncate(v, max_input_chars)}" for k, v in value.items())
            return
        lines = str(value).splitlines()
        parts.extend(_truncate(line, max_input_chars) for line in lines[:max_input_lines])
        if len(lines) > max_input_lines:
            parts.append(f"... ({len(lines) - max_input_lines} more lines)")

    def debug_block(text: str) -> None:
        text = (text or "").strip()
        if not text:
            return
        parts.extend(["", "Debug Output"])
        lines = text.split("\n")
        parts.extend(_truncate(line, max_debug_line_chars) for line in lines[:max_debug_lines])
        if len(lines) > max_debug_lines:
            parts.append(f"... ({len(lines) - max_debug_lines} more lines)")

    for r in failing:
        actual = r.actual
        if isinstance(actual, str) and actual.startswith(ERROR_PREFIX):
            parts.extend(["Runtime Error", actual[len(ERROR_PREFIX) :], ""])
            input_block("Last Executed Input", r.input)
            debug_block(r.debug)
        elif actual == TIMEOUT:
            parts.extend(["Time Limit Exceeded", ""])
            input_block("Last Executed Input", r.input)
            debug_block(r.debug)
        elif actual == INCORRECT_FORMAT:
            parts.append(TRUNCATED_MESSAGE if truncated else FORMAT_MESSAGE)
        else:
            parts.extend([f"Test Case {r.test_idx + 1}: Wrong Answer", ""])
            input_block("Input", r.input)
            parts.extend(["", "Output", _truncate(actual, max_output_chars)])
            if r.expected is not None:
                parts.extend(["", "Expected", _truncate(r.expected, max_output_chars)])
            debug_block(r.debug)
        parts.append("")
    return "\n".join(parts).rstrip()[:max_length]


def error_text(outcome: sandbox.TestOutcome) -> str:
    """``"Error: "`` + the exception line + up to 3 frames of Solution.py (code line, then location)."""
    lines = [outcome.error]
    for frame in outcome.frames[-3:]:
        if frame.get("line"):
            lines.append(f"  {frame['line']}")
        lines.append(f"Line {frame.get('lineno')} in {frame.get('name')} ({FILENAME})")
    return ERROR_PREFIX + "\n".join(lines)


def run_test_cases(
    code: str,
    tests: dict[str, Any],
    *,
    max_test_cases: int | None = None,
    timeout_scale: float = 1.0,
    timeout_slack_s: float = 1.0,
    memory_mb: int = 1024,
    workers: int = 1,
    total_timeout_s: float | None = None,
    stop_after_timeouts: int | None = 1,
    sandbox_mode: str | None = None,
) -> list[TestRecord]:
    """Run ``code`` against validated ``tests`` (see :func:`parse_tests`) and judge each test."""
    n = len(tests["inputs"])
    if max_test_cases:
        n = min(n, max_test_cases)
    testtype, fn_name = tests["testtype"], tests["fn_name"]
    limit = tests["time_limit"] if tests["time_limit"] is not None else DEFAULT_TIME_LIMIT_S
    records: list[TestRecord | None] = [None] * n
    specs: list[dict[str, Any]] = []  # one per call: a case of an assert-style test may make several
    owners: list[tuple[int, Any]] = []  # (case index, what that call's result is compared with)
    for i in range(n):
        test_input, test_output = tests["inputs"][i], tests["outputs"][i]
        try:
            pairs = _specs(testtype, fn_name, test_input, test_output)
        except (ValueError, TypeError, RecursionError, DataError) as e:
            actual = f"{ERROR_PREFIX}{type(e).__name__}: could not read this test case ({e})"
            records[i] = TestRecord(i, test_input, test_output, actual, False)
            continue
        for spec, expected in pairs:
            specs.append(spec)
            owners.append((i, expected))
    outcomes = sandbox.run_tests(
        code,
        specs,
        time_limit_s=limit * timeout_scale + timeout_slack_s,
        memory_mb=memory_mb,
        filename=FILENAME,
        workers=workers,
        total_timeout_s=total_timeout_s,
        stop_after_timeouts=stop_after_timeouts,
        mode=sandbox_mode,
    )
    for (i, expected), outcome in zip(owners, outcomes, strict=True):
        record = _judge(i, testtype, tests["inputs"][i], expected, outcome)
        if records[i] is None or (records[i].passed and not record.passed):  # a case fails on its first failing call
            records[i] = record
    return [r for r in records if r is not None]


def _specs(testtype: str, fn_name: str, test_input: Any, test_output: Any) -> list[tuple[dict[str, Any], Any]]:
    """The sandbox calls for one case, each with what its result is compared with.

    Output caps are constants (:data:`resd.sandbox.OUTPUT_CAP`): a cap derived from the expected
    output would tell the program the answer's size.
    """
    if testtype == "functional":
        if isinstance(test_input, dict):
            args, kwargs = [], test_input
        elif isinstance(test_input, list):
            args, kwargs = test_input, {}
        else:
            args, kwargs = parse_json_args(str(test_input)), {}
        expected_value = json.loads(test_output) if isinstance(test_output, str) else test_output
        spec = {"kind": "call", "fn_name": fn_name, "args": args, "kwargs": kwargs}
        return [(spec, (canonical_json(expected_value), test_output))]
    if testtype == "stdin":
        return [({"kind": "stdin", "stdin": str(test_input)}, trim_expected_stdout(str(test_output)))]
    calls = parse_assert_tests(test_input)
    return [({"kind": "call", "fn_name": c.fn_name, "args": c.args, "kwargs": c.kwargs}, c) for c in calls]


def _judge(i: int, testtype: str, test_input: Any, expected: Any, outcome: sandbox.TestOutcome) -> TestRecord:
    if testtype == "functional":
        shown_expected = expected[1]
    elif testtype == "code":
        shown_expected = repr(expected.expected) if expected.check != "truthy" else None
    else:
        shown_expected = expected
    if outcome.status in ("timeout", "skipped"):
        return TestRecord(
            i, test_input, shown_expected, TIMEOUT, False, outcome.debug, skipped=outcome.status == "skipped"
        )
    if outcome.status == "error":
        return TestRecord(i, test_input, shown_expected, error_text(outcome), False, outcome.debug)
    if testtype == "functional":
        passed = not outcome.overflow and outcome.value == expected[0]
        return TestRecord(i, test_input, shown_expected, outcome.display, passed, outcome.debug)
    if testtype == "stdin":
        passed = not outcome.overflow and normalize_stdout(outcome.value) == normalize_stdout(expected)
        return TestRecord(i, test_input, shown_expected, outcome.value.strip(), passed, outcome.debug)
    call: AssertCall = expected
    passed = not outcome.overflow and assert_holds(call, outcome.value)
    return TestRecord(i, call.source, shown_expected, outcome.display, passed, outcome.debug)


def tests_of(example: Example) -> Any:
    """The raw tests object of a row: ``tests``, else ``reward_model.ground_truth``, else ``ground_truth``."""
    tests = example.get("tests")
    if tests not in (None, "", "-"):
        return tests
    reward_model = example.get("reward_model")
    if isinstance(reward_model, dict) and reward_model.get("ground_truth") not in (None, ""):
        return reward_model["ground_truth"]
    if example.get("ground_truth") not in (None, ""):
        return example["ground_truth"]
    raise DataError("row has no tests (fields 'tests', 'reward_model.ground_truth' or 'ground_truth')")


@register("code")
class CodeEnv(Environment):
    """LiveCodeBench-style code environment with unit tests and LeetCode-style feedback.

    Args:
        max_test_cases: run at most this many tests per problem (None: all).
        timeout_scale, timeout_slack_s: a test may run ``time_limit * scale + slack`` seconds
            (upstream: 1.0 and 1 s; ``time_limit`` defaults to 1 s).
        memory_mb: address-space limit of the program (upstream: 1 GiB).
        test_workers: sandboxed driver processes per response running tests at once.
        total_timeout_s: stop a response's tests after this long; unfinished tests time out.
        stop_after_timeouts: once this many tests of a response timed out, the rest are not run and
            count as time-outs (None: run every test, as upstream does, at up to ``limit`` seconds
            each; the reward and feedback are the same either way, only ``acc`` can be lower).
        sandbox_mode: force a :mod:`resd.sandbox` mode.
        train_test_fraction, seed: the shipped train split keeps this fraction of each problem's tests.
    """

    task_description = "writing programs that pass unit tests"

    def __init__(
        self,
        max_test_cases: int | None = None,
        timeout_scale: float = 1.0,
        timeout_slack_s: float = 1.0,
        memory_mb: int = 1024,
        test_workers: int = 1,
        total_timeout_s: float | None = None,
        stop_after_timeouts: int | None = 1,
        sandbox_mode: str | None = None,
        train_test_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.max_test_cases = max_test_cases
        self.timeout_scale = timeout_scale
        self.timeout_slack_s = timeout_slack_s
        self.memory_mb = memory_mb
        self.test_workers = test_workers
        self.total_timeout_s = total_timeout_s
        if stop_after_timeouts is not None and stop_after_timeouts < 1:
            raise ValueError(f"stop_after_timeouts must be None or >= 1, got {stop_after_timeouts}")
        self.stop_after_timeouts = stop_after_timeouts
        self.sandbox_mode = sandbox_mode
        self.train_test_fraction = train_test_fraction
        self.seed = seed

    def prompt_messages(self, example: Example) -> list[Message]:
        prompt = example.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        messages: list[Message] = []
        if isinstance(example.get("system"), str) and example["system"]:
            messages.append({"role": "system", "content": example["system"]})
        if isinstance(prompt, str) and prompt:
            return [*messages, {"role": "user", "content": prompt}]
        if isinstance(example.get("question_content"), str):
            text = format_prompt(example["question_content"], example.get("starter_code") or "")
            return [*messages, {"role": "user", "content": text}]
        raise DataError("code row has no 'prompt' (text or messages) and no 'question_content'")

    def score(self, response: str, example: Example, *, truncated: bool = False) -> Feedback:
        try:
            tests = parse_tests(tests_of(example))
        except DataError as e:
            details = {"error_in_ground_truth": str(e), "incorrect_format": 0, "truncated": int(truncated)}
            return Feedback(0.0, 0.0, PARSE_FAILURE, details)
        code = extract_code(response)
        if code is None:
            records = [TestRecord(0, None, None, INCORRECT_FORMAT, False)]
        else:
            records = run_test_cases(
                code,
                tests,
                max_test_cases=self.max_test_cases,
                timeout_scale=self.timeout_scale,
                timeout_slack_s=self.timeout_slack_s,
                memory_mb=self.memory_mb,
                workers=self.test_workers,
                total_timeout_s=self.total_timeout_s,
                stop_after_timeouts=self.stop_after_timeouts,
                sandbox_mode=self.sandbox_mode,
            )
        passed = [r.passed for r in records]
        acc = sum(passed) / len(passed) if passed else 0.0
        details = {
            "pred": code or "",
            "incorrect_format": int(code is None),
            "truncated": int(truncated),
            "passed": passed,
            "error_in_test_cases": int(
                any(isinstance(r.actual, str) and r.actual.startswith(ERROR_PREFIX) for r in records)
            ),
            "timed_out": int(any(r.actual == TIMEOUT for r in records)),
            "tests_not_run": sum(r.skipped for r in records),
        }
        return Feedback(1.0 if passed and all(passed) else 0.0, acc, format_feedback(records, truncated), details)

    def load_split(self, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        if path is not None:
            from resd.data import read_rows

            rows = read_rows(path)
            where = str(path)
        elif split in ("train", "test"):
            from resd.data import read_rows

            rows = read_rows(DATA_FILE)
            where = str(DATA_FILE)
        else:
            raise DataError(f"code environment ships splits 'train' and 'test', not {split!r}; pass a path")
        for lineno, row in enumerate(rows, 1):
            try:
                parse_tests(tests_of(row))
                self.prompt_messages(row)
            except DataError as e:
                raise DataError(f"{where}: row {lineno}: {e}") from None
        if path is None and split == "train":
            rows = self._reduce_tests(rows)
        return rows[:limit] if limit is not None else rows

    def _reduce_tests(self, rows: list[Example]) -> list[Example]:
        """Each problem with a seeded random subset of its tests (at least one), in the original order."""
        rng = random.Random(self.seed)
        reduced = []
        for row in rows:
            tests = parse_tests(tests_of(row))
            n = len(tests["inputs"])
            keep = sorted(rng.sample(range(n), max(1, int(n * self.train_test_fraction))))
            small = {
                **tests,
                "inputs": [tests["inputs"][i] for i in keep],
                "outputs": [tests["outputs"][i] for i in keep],
            }
            reduced.append({**row, "tests": json.dumps(small)})
        return reduced
