"""The Manufactoria environment: code extraction, scoring and feedback (as in horizon-llm/RESD,
``selfevolve/resd/feedback/manufactoria.py``).

Rows may come in the upstream Hugging Face layout (``messages``, ``ground_truth`` as a list of
test dicts or its JSON string, ``id``, ...) or the veRL layout (``prompt``,
``reward_model.ground_truth`` as a JSON string, ``extra_info.index``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from resd.data import require
from resd.envs.base import DataError, Environment, Example, Feedback, Message
from resd.envs.manufactoria import generator
from resd.envs.manufactoria.checking import ERROR_PREFIX, TapeTest, run_tests
from resd.envs.manufactoria.feedback import format_feedback, incorrect_format_feedback
from resd.envs.manufactoria.interpreter import MAX_STEPS
from resd.textscan import search_end

_CODE_BLOCK = re.compile(r"```(?:manufactoria)?(.*?)```", re.DOTALL)


def extract_code(response: str) -> str | None:
    """The stripped content of the last ```` ``` ```` block (optionally tagged ``manufactoria``), or None."""
    matches = _CODE_BLOCK.findall(response, 0, search_end(response, "```"))  # linear: see search_end
    return matches[-1].strip() if matches else None


def _is_bool(value: Any) -> bool:
    # parquet readers may hand out numpy booleans
    kind = type(value)
    return isinstance(value, bool) or (kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"))


def parse_test(value: Any, index: int) -> TapeTest:
    """One test dict -> :class:`TapeTest`; ``expected_output`` defaults to "" and ``check_output`` to True."""
    where = f"ground_truth[{index}]"
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object, got {type(value).__name__}")
    tape = require(value, "input", str, where=where)
    if "expected_accepted" not in value:
        raise DataError(f"{where}: missing field 'expected_accepted'")
    if not _is_bool(value["expected_accepted"]):
        raise DataError(f"{where}: field 'expected_accepted' should be bool")
    expected_output = value.get("expected_output", "")
    if expected_output is None:
        expected_output = ""
    if not isinstance(expected_output, str):
        raise DataError(f"{where}: field 'expected_output' should be str")
    check_output = value.get("check_output", True)
    if not _is_bool(check_output):
        raise DataError(f"{where}: field 'check_output' should be bool")
    description = value.get("description", "")
    return TapeTest(
        tape, bool(value["expected_accepted"]), expected_output, bool(check_output), str(description or "")
    )


def parse_ground_truth(value: Any) -> list[TapeTest]:
    """A ground truth (a list of test dicts or its JSON string) -> tests; DataError if malformed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"field 'ground_truth' is not valid JSON ({e.msg})") from None
    if isinstance(value, dict):  # upstream wraps a single test in a list
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"field 'ground_truth' should be a list of tests, got {type(value).__name__}")
    if not value:
        raise DataError("field 'ground_truth' has no tests")
    return [parse_test(v, i) for i, v in enumerate(value)]


def _ground_truth_field(example: Example) -> Any:
    if "ground_truth" in example:
        return example["ground_truth"]
    reward_model = example.get("reward_model")
    if isinstance(reward_model, dict) and "ground_truth" in reward_model:
        return reward_model["ground_truth"]
    raise DataError("missing field 'ground_truth' (or 'reward_model.ground_truth')")


def _messages(example: Example) -> list[Message]:
    key = "messages" if "messages" in example else "prompt" if "prompt" in example else None
    if key is None:
        raise DataError("missing field 'messages' (or 'prompt')")
    messages = example[key]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"field {key!r} should be a non-empty list of messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"field {key!r}[{i}] should be a message object")
        role = require(message, "role", str, where=f"{key}[{i}]")
        content = require(message, "content", str, where=f"{key}[{i}]")
        out.append({"role": role, "content": content})
    return out


class ManufactoriaEnv(Environment):
    """Manufactoria-Has: write a factory in the DSL that accepts exactly the right tapes.

    Args:
        sparse: score = 1.0 only if every test passes (RESD's setting); False gives score = acc.
        max_steps: the interpreter's iteration cap (1000 upstream).
        families: keep only these problem families of the generated splits (``contains_count``,
            ``contains_ordered``, ``contains_substring``); None keeps all.
    """

    name = "manufactoria"
    task_description = "generating Manufactoria DSL codes"

    def __init__(self, sparse: bool = True, max_steps: int = MAX_STEPS, families: list[str] | None = None) -> None:
        self.sparse = sparse
        self.max_steps = max_steps
        known = {"contains_count", "contains_ordered", "contains_substring"}
        if families is not None and not set(families) <= known:
            raise ValueError(f"unknown Manufactoria-Has families {sorted(set(families) - known)}; known: {sorted(known)}")
        self.families = None if families is None else set(families)

    def prompt_messages(self, example: Example) -> list[Message]:
        """The row's chat messages (``messages``, or ``prompt`` in veRL rows)."""
        return _messages(example)

    def tests(self, example: Example) -> list[TapeTest]:
        """The row's test tapes."""
        return parse_ground_truth(_ground_truth_field(example))

    def example_id(self, example: Example) -> str:
        """``extra_info.index`` (veRL rows) or ``id`` (upstream rows)."""
        extra = example.get("extra_info")
        if isinstance(extra, dict) and extra.get("index") is not None:
            return str(extra["index"])
        if example.get("id") is not None:
            return str(example["id"])
        raise DataError("missing field 'id' (or 'extra_info.index')")

    def score(self, response: str, example: Example, *, truncated: bool = False) -> Feedback:
        """Run the last code block of ``response`` on every test of ``example``."""
        tests = self.tests(example)
        if not isinstance(response, str):
            response = "" if response is None else str(response)
        code = extract_code(response)
        if code is None:
            return Feedback(
                0.0,
                0.0,
                incorrect_format_feedback(truncated),
                {"incorrect_format": True, "truncated": truncated, "code": None, "num_tests": len(tests)},
            )
        records = run_tests(code, tests, self.max_steps)
        num_passed = sum(r.passed for r in records)
        acc = num_passed / len(records)
        score = 1.0 if num_passed == len(records) else (0.0 if self.sparse else acc)
        details = {
            "incorrect_format": False,
            "truncated": truncated,
            "code": code,
            "parse_error": records[0].input is None and not records[0].passed,
            "error_in_test_cases": any(not r.passed and r.actual.startswith(ERROR_PREFIX) for r in records),
            "num_tests": len(tests),
            "num_passed": num_passed,
            "records": [r.to_dict() for r in records],
        }
        return Feedback(score, acc, format_feedback(records, truncated=truncated), details)

    def load_split(self, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        """Generated Manufactoria-Has rows (742 train / 132 test), or the rows of a user's file."""
        if self.families is None:
            return generator.load_split(split, path, limit)
        rows = [r for r in generator.load_split(split, path) if r.get("problem_family") in self.families]
        return rows[:limit] if limit is not None else rows
