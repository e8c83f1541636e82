"""The BouncingSim environment: score a response by running its ``predict_position`` in the sandbox."""

from __future__ import annotations

from typing import Any

from resd.data import read_rows
from resd.envs.base import DataError, Environment, Example, Feedback, Message
from resd.envs.bouncingsim.checks import ParsedAssert, decode_ground_truth, parse_assert
from resd.envs.bouncingsim.dataset import DEFAULT_SIZES, SPLITS, generate_rows
from resd.envs.bouncingsim.feedback import format_feedback
from resd.envs.bouncingsim.runner import (
    ERROR_PREFIX,
    INCORRECT_FORMAT,
    MEMORY_MB,
    TIME_LIMIT_S,
    CaseResult,
    RunTests,
    extract_code,
    run_tests,
)
from resd.envs.bouncingsim.scene import DIFFICULTIES


class BouncingSimEnv(Environment):
    """BouncingSim-Easy / Medium (as in horizon-llm/RESD, ``selfevolve/resd/feedback/bouncingsim.py``).

    ``score`` is 1.0 only if every test passes (sparse), ``acc`` the fraction passed. Each test
    calls the extracted program's ``predict_position`` in the sandbox with a ``time_limit_s`` budget
    (see :mod:`resd.envs.bouncingsim.runner`).

    Args:
        difficulty: "easy" or "medium": the data ``load_split`` generates when given no path.
        time_limit_s: wall-clock limit per test.
        memory_mb: memory of the whole sandbox.
        run_sandbox: stands in for ``resd.sandbox.run_tests`` (tests of the judging logic).
    """

    name = "bouncingsim"
    task_description = "predicting the motion of bouncing balls with code"

    def __init__(
        self,
        difficulty: str = "easy",
        *,
        time_limit_s: float = TIME_LIMIT_S,
        memory_mb: int = MEMORY_MB,
        run_sandbox: RunTests | None = None,
    ) -> None:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {sorted(DIFFICULTIES)}")
        self.difficulty = difficulty
        self.time_limit_s = time_limit_s
        self.memory_mb = memory_mb
        self.run_sandbox = run_sandbox

    def prompt_messages(self, example: Example) -> list[Message]:
        messages = example.get("messages", example.get("prompt"))
        if not (
            isinstance(messages, list)
            and messages
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
        ):
            raise DataError("a BouncingSim row needs 'messages' (or veRL 'prompt'): a list of {role, content}")
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]

    def tests(self, example: Example) -> tuple[list[str], list[ParsedAssert]]:
        """The assert lines of a row (upstream or veRL layout) and their parsed form."""
        if "ground_truth" in example:
            raw = example["ground_truth"]
        elif isinstance(example.get("reward_model"), dict) and "ground_truth" in example["reward_model"]:
            raw = example["reward_model"]["ground_truth"]
        else:
            raise DataError("a BouncingSim row needs 'ground_truth' (or veRL 'reward_model.ground_truth')")
        lines = decode_ground_truth(raw)
        parsed = []
        for k, line in enumerate(lines, 1):
            test = parse_assert(line)
            if test is None:
                raise DataError(
                    f"test {k} is not of the form "
                    f"'assert check_distance(predict_position(T), [[x, y], ...]) <= D': {line[:120]!r}"
                )
            parsed.append(test)
        return lines, parsed

    def score(self, response: str, example: Example, *, truncated: bool = False) -> Feedback:
        lines, tests = self.tests(example)
        code = extract_code(response) if isinstance(response, str) else None
        if code is None:
            # upstream reports the format failure as one failed record: "Passed 0/1 test cases."
            record = CaseResult(0, "", "", 0.0, False, INCORRECT_FORMAT)
            details: dict[str, Any] = {
                "incorrect_format": True,
                "truncated": truncated,
                "passed": 0,
                "total": len(tests),
            }
            return Feedback(0.0, 0.0, format_feedback([record], truncated=truncated), details)
        records = run_tests(
            code, tests, lines, time_limit_s=self.time_limit_s, memory_mb=self.memory_mb, run_sandbox=self.run_sandbox
        )
        passed = sum(r.passed for r in records)
        acc = passed / len(records)
        details = {
            "incorrect_format": False,
            "truncated": truncated,
            "passed": passed,
            "total": len(records),
            "timed_out": any(r.actual.startswith(ERROR_PREFIX + "Time limit exceeded") for r in records),
            "records": [
                {"test": r.index + 1, "t": r.time_text, "passed": r.passed, "actual": r.actual, "avg": r.avg_distance}
                for r in records
            ],
        }
        score = 1.0 if passed == len(records) else 0.0
        return Feedback(score, acc, format_feedback(records, truncated=truncated), details)

    def load_split(self, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        """Rows from ``path`` (JSONL/JSON/parquet, upstream or veRL layout), or generated in memory.

        Generated splits have the paper's sizes (easy 640 train / 100 test, medium 320 / 100)
        and fixed seeds; ``limit`` generates only the first rows.
        """
        if path is not None:
            rows = read_rows(path)
            return rows[:limit] if limit is not None else rows
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; BouncingSim has {', '.join(SPLITS)}")
        n = DEFAULT_SIZES[self.difficulty][split]
        return generate_rows(self.difficulty, split, n if limit is None else min(n, max(limit, 0)))
