"""The built-in arithmetic environment: problems, scoring, feedback, and a fuzz of its parser."""

from __future__ import annotations

import random
import string

import pytest

from resd.envs import load
from resd.envs.arithmetic import extract_answer, parse_int, worked_solution


def test_splits_are_deterministic_disjoint_and_sized():
    env = load("arithmetic", op="mul", digits=[2, 2], n_train=50, n_test=10, seed=3)
    train, test = env.load_split("train"), env.load_split("test")
    assert len(train) == 50 and len(test) == 10
    assert {(r["a"], r["b"]) for r in train}.isdisjoint({(r["a"], r["b"]) for r in test})
    assert train == load("arithmetic", op="mul", digits=[2, 2], n_train=50, n_test=10, seed=3).load_split("train")
    assert all(10 <= r["a"] <= 99 and int(r["answer"]) == r["a"] * r["b"] for r in train)
    assert env.load_split("train", limit=3) == train[:3]
    assert env.example_id(train[0]) == "train-0"


def test_scoring_and_feedback():
    env = load("arithmetic", feedback="answer")
    ex = {"question": "What is 12 * 34?", "answer": "408", "a": 12, "b": 34, "op": "mul"}
    assert env.score("<answer>408</answer>", ex).score == 1.0
    assert env.score("so the result is 408", ex).score == 1.0  # the last number counts without tags
    assert env.score("<answer>4,08</answer>", ex).score == 1.0
    fb = env.score("<answer>400</answer>", ex)
    assert (fb.score, fb.acc) == (0.0, 0.0)
    assert fb.feedback == "Your answer 400 is incorrect. The correct answer is 408."
    assert env.score("no idea", ex).feedback == (
        "Your answer had the wrong format: put the final number inside <answer></answer> tags. The correct answer is 408."
    )
    assert env.score("I think", ex, truncated=True).feedback.startswith("Your response was truncated")
    worked = load("arithmetic", feedback="worked").score("<answer>1</answer>", ex).feedback
    assert "12 * 4 = 48; 12 * 30 = 360; sum = 408" in worked
    assert load("arithmetic", feedback="none").score("<answer>1</answer>", ex).feedback == ""
    assert worked_solution(7, 8, "add") == "7 + 8 = 15."


def test_bad_arguments():
    with pytest.raises(ValueError):
        load("arithmetic", op="div")
    with pytest.raises(ValueError):
        load("arithmetic", digits=[1, 1], n_train=200, n_test=10).load_split("train")


def test_parser_fuzz_never_raises():
    rng = random.Random(0)
    env = load("arithmetic")
    ex = {"question": "q", "answer": "5"}
    alphabet = string.printable + "<>/answer０１２３٣\u200b"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        if rng.random() < 0.3:
            text = f"<answer>{text}</answer>" if rng.random() < 0.5 else text + "<answer>"
        raw = extract_answer(text)
        assert raw is None or isinstance(raw, str)
        value = parse_int(raw)
        assert value is None or isinstance(value, int)
        fb = env.score(text, ex)
        assert 0.0 <= fb.score <= 1.0
    assert extract_answer(None) is None and parse_int("9" * 50) is None
