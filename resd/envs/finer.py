"""FiNER: tag four numbers in financial sentences with US GAAP XBRL tags.

The model answers ``<answer>Tag1,Tag2,Tag3,Tag4</answer>``. Tags are compared position by
position (case-insensitive, numbers compared as numbers); the reward is the fraction of correct
tags, ``acc`` is 1 only if all are correct, and the feedback names the correct tags (as in
horizon-llm/RESD, ``selfevolve/resd/feedback/finer.py::compute_score_count``).

Data: the 500-row FiNER validation file ships with the package (``load_split("test")`` or
``"val"``); it comes from FiNER-139 (Loukas et al., 2022, CC BY-SA 4.0) as batched by the ACE and
RESD repositories, see ``data/finer/SOURCES.md``. The 1,000-row training file is not shipped:
``load_split("train", path=".../finer_train_batched_1000_samples.jsonl")``.
Rows: raw ``{context, target}`` rows and veRL parquet rows (``prompt`` messages, ``question``,
``reward_model.ground_truth``, ``extra_info.index``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from resd.envs import register
from resd.envs.base import DataError, Environment, Example, Feedback, Message
from resd.textscan import last_pair, search_end

DATA_DIR = Path(__file__).parent / "data" / "finer"
VAL_FILE = DATA_DIR / "finer_val_batched_500_samples.jsonl"

INSTRUCTION = "Answer the question below, using the context that comes with it."
ANSWER_INSTRUCTION = (
    "Think it through, then write your final answer between <answer> and </answer> tags. "
    "For example, <answer>TagOne,TagTwo,TagThree,TagFour</answer>."
)

WRONG_FORMAT = (
    "Your answer had the wrong format. The solution must be given in the format: <answer>your_answer</answer>."
)
TRUNCATED = "Your response was truncated because it exceeded the maximum length."
PARTIAL = "Your answer is partially correct. The correct answer is {ground_truth}."
WRONG = "Your answer is completely incorrect. The correct answer is {ground_truth}."

_OPEN, _CLOSE = "<answer>", "</answer>"
_THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def format_prompt(context: str, question: str) -> str:
    """The user message: instruction, ``### Context:``, ``### Question:``, the answer-tag instruction."""
    return f"{INSTRUCTION}\n\n### Context:\n{context}\n\n### Question:\n{question}\n\n{ANSWER_INSTRUCTION}"


def strip_thinking(text: str) -> str:
    """Remove complete ``<think>...</think>`` blocks (and the whitespace after each), then everything up
    to a remaining ``</think>``."""
    cut = search_end(text, _THINK_CLOSE, then_spaces=True)  # linear: no block ends after this
    text = _THINK_BLOCK.sub("", text[:cut]) + text[cut:]
    end = text.find(_THINK_CLOSE)
    if end >= 0:  # the thinking began in the prompt
        text = text[end + len(_THINK_CLOSE) :].lstrip()
    return text


def extract_answer(response: str) -> str | None:
    """The stripped content of the last ``<answer>...</answer>`` after removing the thinking, or None."""
    if not isinstance(response, str):
        return None
    text = strip_thinking(response)
    span = last_pair(text, _OPEN, _CLOSE)
    return None if span is None else text[span[0] : span[1]].strip()


def parse_number(text: str) -> int | float | None:
    """A Python numeric literal with optional signs (``12``, ``-3.5``, ``1e3``, ``1_000``), else None."""
    text = text.strip()
    if not text or len(text) > 100:
        return None
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    sign = 1
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        sign = -sign if isinstance(node.op, ast.USub) else sign
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sign * node.value
    return None


def same_tag(prediction: str, label: str) -> bool:
    """Equal as text, or, when the label is a number, equal as numbers (``$`` and ``,`` ignored)."""
    gold = parse_number(label)
    if gold is None:
        return prediction == label
    value = parse_number(prediction.replace(",", "").replace("$", ""))
    return value is not None and value == gold


def tag_matches(prediction: str, label: str) -> list[bool]:
    """Per label position: is the predicted tag there correct? (prediction cut or padded to the label)."""
    pred = [p.lower().strip() for p in prediction.split(",")]
    gold = [g.lower().strip() for g in label.split(",")]
    pred = (pred + [""] * len(gold))[: len(gold)]
    return [same_tag(p, g) for p, g in zip(pred, gold, strict=True)]


def feedback_text(
    answer: str | None,
    tag_score: float,
    ground_truth: str,
    truncated: bool,
    *,
    format_feedback: bool = True,
    correctness_feedback: bool = True,
) -> str:
    """The feedback rules of RESD's FiNER environment, first matching rule wins."""
    if answer is None and not truncated and format_feedback:
        return WRONG_FORMAT
    if truncated and format_feedback:
        return TRUNCATED
    if answer is not None and 0.0 < tag_score < 1.0 and correctness_feedback:
        return PARTIAL.format(ground_truth=ground_truth)
    if answer is not None and tag_score == 0.0 and correctness_feedback:
        return WRONG.format(ground_truth=ground_truth)
    return ""


def label_of(example: Example) -> str:
    """The comma-separated gold tags: ``reward_model.ground_truth`` or ``target``."""
    reward_model = example.get("reward_model")
    if isinstance(reward_model, dict) and isinstance(reward_model.get("ground_truth"), str):
        label = reward_model["ground_truth"]
    else:
        label = example.get("target")
    if not isinstance(label, str) or not label.strip():
        raise DataError("finer row has no label (field 'target' or 'reward_model.ground_truth')")
    return label


@register("finer")
class FinerEnv(Environment):
    """FiNER XBRL tagging with dense partial credit and answer-revealing feedback.

    Args:
        format_feedback: give the wrong-format and truncation messages.
        correctness_feedback: give the partially/completely incorrect messages (with the answer).
    """

    task_description = "tagging numbers in financial text with US GAAP XBRL tags"

    def __init__(self, format_feedback: bool = True, correctness_feedback: bool = True) -> None:
        self.format_feedback = format_feedback
        self.correctness_feedback = correctness_feedback

    def prompt_messages(self, example: Example) -> list[Message]:
        prompt = example.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        if isinstance(example.get("question"), str):
            context = example.get("context") if isinstance(example.get("context"), str) else ""
            return [{"role": "user", "content": format_prompt(context, example["question"])}]
        if isinstance(example.get("context"), str):
            # raw rows have no "Instruction:"/"Input:" markers: the context stays empty and the whole
            # raw text is the question
            return [{"role": "user", "content": format_prompt("", example["context"])}]
        raise DataError("finer row has no 'prompt' messages, 'question' or 'context'")

    def score(self, response: str, example: Example, *, truncated: bool = False) -> Feedback:
        label = label_of(example)
        answer = extract_answer(response)
        matches = tag_matches(answer, label) if answer is not None else []
        tag_score = sum(matches) / len(matches) if matches else 0.0
        feedback = feedback_text(
            answer,
            tag_score,
            label,
            truncated,
            format_feedback=self.format_feedback,
            correctness_feedback=self.correctness_feedback,
        )
        details: dict[str, Any] = {
            "pred": answer if answer is not None else "",
            "incorrect_format": int(answer is None),
            "truncated": int(truncated),
            "tag_matches": matches,
        }
        return Feedback(tag_score, 1.0 if tag_score == 1.0 else 0.0, feedback, details)

    def task_and_test_case(self, score: float, acc: float) -> tuple[float, float]:
        """Per task = all four tags right (``acc``), per test case = the fraction of right tags (``score``),
        as in RESD arXiv 2605.12741, section 5 (the reverse of the default)."""
        return float(acc), float(score)

    def load_split(self, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        from resd.data import read_rows

        if path is None:
            if split in ("test", "val", "validation"):
                path = str(VAL_FILE)
            elif split == "train":
                raise DataError(
                    "the FiNER training file is not shipped; pass path= to your copy of "
                    "finer_train_batched_1000_samples.jsonl (RESD repository, selfevolve/resd/datasets/finer/)"
                )
            else:
                raise DataError(f"FiNER has splits 'train' (pass a path) and 'test'/'val', not {split!r}")
        rows = read_rows(path)
        for i, row in enumerate(rows):
            try:
                label_of(row)
                self.prompt_messages(row)
            except DataError as e:
                raise DataError(f"{path}: row {i + 1}: {e}") from None
            if not self._has_id(row):
                extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
                row["extra_info"] = {**extra, "index": str(i), "split": split}
        return rows[:limit] if limit is not None else rows

    def _has_id(self, row: Example) -> bool:
        try:
            self.example_id(row)
            return True
        except DataError:
            return False
