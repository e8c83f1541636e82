"""Multiple-choice questions (SciKnowEval-style): an exact letter in ``<answer>`` tags, no rich feedback.

Follows SDPO's MCQ reward (lasgroup/SDPO, ``verl/utils/reward_score/feedback/mcq.py``): the
prediction is the text after the last ``<answer>`` and before the next ``</answer>``, stripped; the
reward is 1 iff it equals the gold letter exactly; the feedback is always "".
``details["incorrect_format"]`` is 1 when the response does NOT end its answer in the expected form
(upstream logs this flag inverted; we log it the right way round).

Rows: SDPO JSON rows (``prompt`` text, ``system``, ``answer``), veRL parquet rows (``prompt``
messages, ``reward_model.ground_truth``) and raw SciKnowEval rows (``question``,
``choices.text``/``choices.label``, ``answerKey``).
"""

from __future__ import annotations

import re
from typing import Any

from resd.envs import register
from resd.envs.base import DataError, Environment, Example, Feedback, Message

SYSTEM_PROMPT = (
    "You will be given a question and its answer options. Pick the correct option. Reply in this format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
    "Inside the answer block write only the letter of the option you choose (for example A, B, C or D), "
    "with nothing else: not the text of the option and no punctuation. For example, if you choose B, "
    "the answer block is:\n<answer>\nB\n</answer>"
)
USER_SUFFIX = "Please reason step by step."

_WELL_FORMED = re.compile(r"<answer>\s*[A-Z]\s*</answer>\s*$")


def extract_answer(response: str) -> str:
    """The text after the last ``<answer>`` up to the next ``</answer>``, stripped.

    Without any ``<answer>`` the whole response (up to a ``</answer>``) is the prediction, as
    upstream does; it then matches only if the response is the bare letter.
    """
    if not isinstance(response, str):
        return ""
    # as response.split("<answer>")[-1].split("</answer>")[0], without the lists of pieces
    start = response.rfind("<answer>")
    start = start + len("<answer>") if start >= 0 else 0
    end = response.find("</answer>", start)
    return response[start:end if end >= 0 else len(response)].strip()


def well_formed(response: str) -> bool:
    """True if the response ends with ``<answer>`` one capital letter ``</answer>``."""
    return isinstance(response, str) and _WELL_FORMED.search(response) is not None


def format_question(question: str, labels: list[str], texts: list[str]) -> str:
    """The user prompt: the question, a blank line, one ``"X: option"`` line each, then the request to reason."""
    options = "\n".join(f"{label}: {text}" for label, text in zip(labels, texts, strict=True))
    return f"{question}\n\n{options}\n{USER_SUFFIX}"


def gold_answer(example: Example) -> str:
    """The gold letter: ``reward_model.ground_truth``, ``answer`` or ``answerKey``."""
    reward_model = example.get("reward_model")
    if isinstance(reward_model, dict) and isinstance(reward_model.get("ground_truth"), str):
        return reward_model["ground_truth"].strip()
    for field in ("answer", "answerKey"):
        if isinstance(example.get(field), str) and example[field].strip():
            return example[field].strip()
    raise DataError("mcq row has no gold letter (fields 'reward_model.ground_truth', 'answer' or 'answerKey')")


@register("mcq")
class MCQEnv(Environment):
    """Multiple-choice questions scored by the letter in the last ``<answer>`` block."""

    task_description = "answering multiple-choice science questions"

    def prompt_messages(self, example: Example) -> list[Message]:
        prompt = example.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        if isinstance(prompt, str) and prompt:
            system = example.get("system")
            head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
            return [*head, {"role": "user", "content": prompt}]
        question, choices = example.get("question"), example.get("choices")
        if isinstance(question, str) and isinstance(choices, dict):
            labels, texts = choices.get("label"), choices.get("text")
            if isinstance(labels, list) and isinstance(texts, list) and len(labels) == len(texts):
                user = format_question(question, [str(x) for x in labels], [str(x) for x in texts])
                return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        raise DataError("mcq row has no 'prompt' (text or messages) and no 'question' with 'choices'")

    def score(self, response: str, example: Example, *, truncated: bool = False) -> Feedback:
        pred = extract_answer(response)
        gold = gold_answer(example)
        reward = 1.0 if pred == gold else 0.0
        details: dict[str, Any] = {
            "pred": pred,
            "gold": gold,
            "incorrect_format": 0 if well_formed(response) else 1,
            "truncated": int(truncated),
        }
        return Feedback(reward, reward, "", details)

    def load_split(self, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        if path is None:
            raise DataError(
                "the mcq environment ships no data; pass the path of a SciKnowEval file (SDPO JSON rows, "
                "veRL parquet rows or raw rows with question/choices/answerKey)"
            )
        from resd.data import read_rows

        rows = read_rows(path)
        for lineno, row in enumerate(rows, 1):
            try:
                gold_answer(row)
                self.prompt_messages(row)
            except DataError as e:
                raise DataError(f"{path}: row {lineno}: {e}") from None
        return rows[:limit] if limit is not None else rows
