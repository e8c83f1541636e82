"""Arithmetic: a small built-in task whose feedback reveals the correct answer (as FiNER's does).

Problems are generated deterministically from a seed, so no data has to be downloaded. Difficulty
is set by the operation and the number of digits; ``mul`` with 2x2 digits is in the rare-success
regime for the 0.5B default model (see ``benchmarks/efficacy/configs/arithmetic.yaml``).
"""

from __future__ import annotations

import random
import re
from typing import Any

from resd.envs import register
from resd.envs.base import DataError, Environment, Example, Feedback
from resd.textscan import last_pair

_DIGIT = re.compile(r"\d")
_DIGITS_AND_COMMAS = re.compile(r"[\d,]*")
_OPS = {"add": ("+", lambda a, b: a + b), "sub": ("-", lambda a, b: a - b), "mul": ("*", lambda a, b: a * b)}


# "answer" asks for the number alone; "work" lets the model write its steps first (longer and, for
# the 0.5B model, not more accurate). No instruction shows an example number: with "for example
# <answer>123</answer>" the 0.5B model answered "123" in a fifth of its samples before training,
# and self-distillation made that the dominant answer (BENCHMARKS.md, efficacy benchmark).
INSTRUCTIONS = {
    "answer": "Put only the final number inside <answer></answer> tags.",
    "work": "Work it out step by step in a few short lines, then put the final number inside <answer></answer> tags.",
}


def extract_answer(text: str) -> str | None:
    """The stripped content of the last ``<answer>...</answer>`` pair (each ``<answer>`` closed by the
    first ``</answer>`` after it), else the last integer in the text, else None."""
    if not isinstance(text, str):
        return None
    span = last_pair(text, "<answer>", "</answer>")
    if span is not None:
        return text[span[0]:span[1]].strip()
    return last_number(text)


def last_number(text: str) -> str | None:
    """The last match of ``re.findall(r"-?\\d[\\d,]*", text)``, or None, without a regex try at every
    position (tens of milliseconds per megabyte).

    Matches take whole runs of digits and commas, from the run's first digit (and a ``-`` just
    before it), so the last one is in the run around the last digit.
    """
    backwards = text[::-1]
    digit = _DIGIT.search(backwards)
    if digit is None:
        return None
    run_start = len(text) - _DIGITS_AND_COMMAS.match(backwards, digit.start()).end()
    run_end = _DIGITS_AND_COMMAS.match(text, len(text) - digit.start()).end()
    start = _DIGIT.search(text, run_start).start()
    if start > 0 and text[start - 1] == "-":
        start -= 1
    return text[start:run_end]


def parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace(" ", "").rstrip(".")
    if re.fullmatch(r"-?\d{1,40}", cleaned):
        return int(cleaned)
    return None


def worked_solution(a: int, b: int, op: str) -> str:
    """A step-by-step solution in plain text (used by the ``worked`` feedback mode)."""
    symbol, fn = _OPS[op]
    if op == "mul" and b >= 10:
        parts = []
        total = 0
        for power, digit in enumerate(reversed(str(b))):
            partial = a * int(digit) * 10**power
            total += partial
            parts.append(f"{a} * {int(digit) * 10**power} = {partial}")
        return "; ".join(parts) + f"; sum = {total}. So {a} * {b} = {total}."
    return f"{a} {symbol} {b} = {fn(a, b)}."


@register("arithmetic")
class ArithmeticEnv(Environment):
    """Integer arithmetic with answer-revealing feedback.

    Args:
        op: ``add``, ``sub`` or ``mul``.
        digits: (digits of a, digits of b).
        n_train / n_test: problems per split.
        seed: generator seed (the test split uses a disjoint set of problems).
        feedback: ``answer`` (state the correct answer), ``worked`` (a worked solution) or ``none``.
        instruction: ``answer`` (give only the final number, the default) or ``work`` (work it out
            briefly first); see :data:`INSTRUCTIONS`.
    """

    task_description = "solving arithmetic problems"

    def __init__(
        self,
        op: str = "mul",
        digits: tuple[int, int] | list[int] = (2, 2),
        n_train: int = 256,
        n_test: int = 64,
        seed: int = 0,
        feedback: str = "answer",
        instruction: str = "answer",
    ) -> None:
        if op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
        if feedback not in ("answer", "worked", "none"):
            raise ValueError(f"feedback must be answer, worked or none, got {feedback!r}")
        if instruction not in INSTRUCTIONS:
            raise ValueError(f"instruction must be one of {sorted(INSTRUCTIONS)}, got {instruction!r}")
        self.op, self.digits, self.seed, self.feedback_mode = op, tuple(digits), seed, feedback
        self.instruction = INSTRUCTIONS[instruction]
        self.sizes = {"train": n_train, "test": n_test}

    def _problems(self) -> list[tuple[int, int]]:
        rng = random.Random(self.seed)
        lo = [10 ** (d - 1) if d > 1 else 0 for d in self.digits]
        hi = [10**d - 1 for d in self.digits]
        total = self.sizes["train"] + self.sizes["test"]
        capacity = (hi[0] - lo[0] + 1) * (hi[1] - lo[1] + 1)
        if total > capacity:
            raise ValueError(f"cannot draw {total} distinct problems with digits {self.digits}")
        seen: set[tuple[int, int]] = set()
        problems = []
        while len(problems) < total:
            pair = (rng.randint(lo[0], hi[0]), rng.randint(lo[1], hi[1]))
            if pair not in seen:
                seen.add(pair)
                problems.append(pair)
        return problems

    def load_split(self, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        if path is not None:
            return super().load_split(split, path, limit)
        if split not in self.sizes:
            raise DataError(f"arithmetic has splits 'train' and 'test', not {split!r}")
        problems = self._problems()
        start = 0 if split == "train" else self.sizes["train"]
        rows = []
        symbol, fn = _OPS[self.op]
        for k, (a, b) in enumerate(problems[start : start + self.sizes[split]]):
            rows.append(
                {
                    "id": f"{split}-{k}",
                    "question": f"What is {a} {symbol} {b}?",
                    "answer": str(fn(a, b)),
                    "a": a,
                    "b": b,
                    "op": self.op,
                }
            )
        return rows[:limit] if limit is not None else rows

    def prompt_messages(self, example: Example) -> list[dict[str, str]]:
        question = example.get("question")
        if not isinstance(question, str):
            raise DataError("arithmetic example: missing field 'question'")
        return [
            {
                "role": "user",
                "content": f"{question} {self.instruction}",
            }
        ]

    def score(self, response: str, example: Example, *, truncated: bool = False) -> Feedback:
        gold = str(example.get("answer", "")).strip()
        raw = extract_answer(response)
        predicted = parse_int(raw)
        correct = predicted is not None and str(predicted) == gold
        details: dict[str, Any] = {"pred": raw, "gold": gold}
        if correct:
            return Feedback(1.0, 1.0, "", details)
        if self.feedback_mode == "none":
            text = ""
        elif truncated and raw is None:
            text = "Your response was truncated before it gave an answer."
        elif predicted is None:
            text = "Your answer had the wrong format: put the final number inside <answer></answer> tags."
        else:
            text = f"Your answer {predicted} is incorrect."
        if self.feedback_mode == "answer":
            text += f" The correct answer is {gold}."
        elif self.feedback_mode == "worked" and {"a", "b", "op"} <= example.keys():
            text += " A correct solution: " + worked_solution(int(example["a"]), int(example["b"]), str(example["op"]))
        return Feedback(0.0, 0.0, text.strip(), details)
