"""The MCQ (SciKnowEval) environment: the <answer> letter rule, the format flag and the row formats."""

from __future__ import annotations

import json
import random

import pytest

from resd.envs import load
from resd.envs.base import DataError
from resd.envs.mcq import SYSTEM_PROMPT, MCQEnv, extract_answer, format_question, well_formed

SDPO_ROW = {
    "idx": 12,
    "kind": "mcq",
    "dataset": "sciknoweval",
    "answer": "C",
    "prompt": "Which gas is a noble gas?\n\nA: N2\nB: O2\nC: Ar\nD: CO2\nPlease reason step by step.",
    "system": "Answer with a letter.",
    "tests": "-",
}
PARQUET_ROW = {
    "data_source": "sciknoweval",
    "prompt": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Q?\n\nA: x\nB: y\nPlease reason step by step."},
    ],
    "ability": "mcq",
    "reward_model": {"style": "mcq", "ground_truth": "B"},
    "extra_info": {"split": "train", "index": 5},
}
RAW_ROW = {"question": "Pick one.", "choices": {"text": ["red", "green"], "label": ["A", "B"]}, "answerKey": "A"}


@pytest.fixture(scope="module")
def env() -> MCQEnv:
    return load("mcq")


def test_registered_name():
    assert isinstance(load("mcq"), MCQEnv)


@pytest.mark.parametrize(
    ("response", "pred"),
    [
        ("<reasoning>argon</reasoning>\n<answer>\nC\n</answer>", "C"),
        ("<answer>A</answer> then <answer> C </answer>", "C"),  # the last <answer> counts
        ("<answer>C", "C"),  # no closing tag: up to the end
        ("<answer>C</answer> trailing </answer>", "C"),
        ("C", "C"),  # no tag at all: the whole (stripped) text
        ("The answer is C.", "The answer is C."),
        ("<answer>c</answer>", "c"),
        ("<answer>C.</answer>", "C."),
        ("<answer></answer>", ""),
        ("</answer>C", ""),
    ],
)
def test_extract_answer(response, pred):
    assert extract_answer(response) == pred


def test_exact_letter_match_only(env):
    assert env.score("<answer>C</answer>", SDPO_ROW).score == 1.0
    for wrong in (
        "<answer>c</answer>",
        "<answer>C.</answer>",
        "<answer>Ar</answer>",
        "<answer>B</answer>",
        "",
        "C is right",
    ):
        fb = env.score(wrong, SDPO_ROW)
        assert (fb.score, fb.acc) == (0.0, 0.0), wrong
    fb = env.score("<answer>C</answer>", SDPO_ROW)
    assert (fb.acc, fb.feedback, fb.details["pred"], fb.details["gold"]) == (1.0, "", "C", "C")


def test_feedback_is_always_empty(env):
    for response in ("<answer>C</answer>", "<answer>D</answer>", "garbage", ""):
        assert env.score(response, SDPO_ROW).feedback == ""


def test_format_flag_is_not_inverted(env):
    assert env.score("<reasoning>r</reasoning>\n<answer>\nD\n</answer>\n", SDPO_ROW).details["incorrect_format"] == 0
    assert env.score("I pick D", SDPO_ROW).details["incorrect_format"] == 1
    assert env.score("<answer>D</answer> because ...", SDPO_ROW).details["incorrect_format"] == 1
    assert env.score("<answer>Argon</answer>", SDPO_ROW).details["incorrect_format"] == 1
    assert env.score("<answer>C</answer>", SDPO_ROW, truncated=True).details["truncated"] == 1
    assert well_formed("<answer> B </answer>  ") and not well_formed(None)  # type: ignore[arg-type]


def test_row_formats(env):
    assert env.prompt_messages(SDPO_ROW) == [
        {"role": "system", "content": "Answer with a letter."},
        {"role": "user", "content": SDPO_ROW["prompt"]},
    ]
    assert env.prompt_messages({**SDPO_ROW, "system": None})[0]["role"] == "user"  # v1.0.0 rows had no system prompt
    assert env.prompt_messages(PARQUET_ROW) == PARQUET_ROW["prompt"]
    assert env.score("<answer>B</answer>", PARQUET_ROW).score == 1.0
    assert env.example_id(PARQUET_ROW) == "5" and env.example_id(SDPO_ROW) == "12"
    system, user = env.prompt_messages(RAW_ROW)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["content"] == "Pick one.\n\nA: red\nB: green\nPlease reason step by step."
    assert format_question("Q", ["A"], ["x"]) == "Q\n\nA: x\nPlease reason step by step."
    assert env.score("<answer>A</answer>", RAW_ROW).score == 1.0
    with pytest.raises(DataError):
        env.prompt_messages({"answer": "A"})
    with pytest.raises(DataError):
        env.score("<answer>A</answer>", {"prompt": "q"})


def test_load_split(env, tmp_path):
    path = tmp_path / "chem.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (SDPO_ROW, RAW_ROW)) + "\n")
    assert env.load_split("train", path=str(path)) == [SDPO_ROW, RAW_ROW]
    assert env.load_split("train", path=str(path), limit=1) == [SDPO_ROW]
    path.write_text(json.dumps(SDPO_ROW) + "\n" + json.dumps({"prompt": "no gold"}) + "\n")
    with pytest.raises(DataError, match=r"chem.jsonl: row 2: .*gold letter"):
        env.load_split("train", path=str(path))
    with pytest.raises(DataError, match="ships no data"):
        env.load_split("train")


def test_fuzz_never_raises(env):
    rng = random.Random(3)
    pieces = ["<answer>", "</answer>", "A", "B", "C", " ", "\n", "<", ">", "answer", "/", "x"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        fb = env.score(text, SDPO_ROW)
        assert fb.score in (0.0, 1.0) and fb.feedback == ""
        assert fb.score == (extract_answer(text) == "C")
