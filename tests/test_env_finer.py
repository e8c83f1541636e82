"""The FiNER environment: prompt, answer extraction, positional tag scoring and the feedback rules."""

from __future__ import annotations

import json
import random

import pytest

from resd.envs import load
from resd.envs.base import DataError
from resd.envs.finer import (
    ANSWER_INSTRUCTION,
    DATA_DIR,
    INSTRUCTION,
    PARTIAL,
    TRUNCATED,
    WRONG,
    WRONG_FORMAT,
    FinerEnv,
    extract_answer,
    parse_number,
    same_tag,
    strip_thinking,
    tag_matches,
)

LABEL = "InterestExpense,DebtInstrumentFaceAmount,LesseeOperatingLeaseTermOfContract,Revenues"
ROW = {"context": "You are XBRL expert. ... Output US GAAP tags:", "target": LABEL}


@pytest.fixture(scope="module")
def env() -> FinerEnv:
    return load("finer")


def answer(tags: str) -> str:
    return f"Let me think about each entity.\n<answer>{tags}</answer>"


def test_registered_name():
    assert isinstance(load("finer"), FinerEnv)


# ---------------------------------------------------------------- prompt


def test_prompt_of_a_raw_row_puts_everything_in_the_question(env):
    (message,) = env.prompt_messages(ROW)
    assert message["role"] == "user"
    assert message["content"] == (
        f"{INSTRUCTION}\n\n### Context:\n\n\n### Question:\n{ROW['context']}\n\n{ANSWER_INSTRUCTION}"
    )
    assert ANSWER_INSTRUCTION.endswith("For example, <answer>TagOne,TagTwo,TagThree,TagFour</answer>.")
    assert "<answer> and </answer> tags" in ANSWER_INSTRUCTION


def test_prompt_of_verl_rows(env):
    messages = [{"role": "user", "content": "already formatted"}]
    verl = {"prompt": messages, "context": "", "question": "q", "target": LABEL, "extra_info": {"index": "17"}}
    assert env.prompt_messages(verl) == messages
    assert env.example_id(verl) == "17"
    no_prompt = {"context": "ctx", "question": "the question", "reward_model": {"ground_truth": LABEL}}
    assert "### Context:\nctx\n\n### Question:\nthe question\n\n" in env.prompt_messages(no_prompt)[0]["content"]
    with pytest.raises(DataError):
        env.prompt_messages({"target": LABEL})


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>secret</think>\n  visible", "visible"),
        ("a<think>1</think>b<think>2</think>  c", "abc"),
        ("thinking that started in the prompt</think>\nvisible", "visible"),
        ("<think>never closed <answer>X</answer>", "<think>never closed <answer>X</answer>"),
        ("no thinking", "no thinking"),
        ("<think>a</think>b</think>c", "c"),
    ],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer> A,B,C,D </answer>", "A,B,C,D"),
        ("<answer>first</answer> and <answer>second</answer>", "second"),
        ("<think><answer>hidden</answer></think><answer>shown</answer>", "shown"),
        ("<think><answer>only in thinking</answer></think> nothing after", None),
        ("<answer>unclosed", None),
        ("<answer>x</answer><answer>unclosed", "x"),
        ("<answer>a <answer> b</answer>", "a <answer> b"),
        ("<answer></answer>", ""),
        ("plain text", None),
        (None, None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


# ---------------------------------------------------------------- comparison


def test_parse_number_is_safe_and_numeric_only():
    assert parse_number("100") == 100 and parse_number("-3.5") == -3.5 and parse_number("1e3") == 1000.0
    assert parse_number("1_000") == 1000 and parse_number("+-2") == -2
    for text in (
        "",
        "abc",
        "revenues",
        "1+1",
        "(lambda: 1)()",
        "__import__('os').getpid()",
        "'5'",
        "True",
        "1j",
        "9" * 200,
    ):
        assert parse_number(text) is None, text


def test_same_tag():
    assert same_tag("revenues", "revenues")
    assert not same_tag("revenue", "revenues")
    assert same_tag("$100", "100") and same_tag("1e2", "100") and same_tag("100.0", "100")
    assert not same_tag("abc", "100") and not same_tag("1+0", "1")
    assert not same_tag("$tag", "tag")  # "$" is dropped only when the label is a number


def test_tag_matches_positional_case_insensitive_cut_and_pad():
    assert tag_matches("interestexpense , DEBTINSTRUMENTFACEAMOUNT,x,Revenues", LABEL) == [True, True, False, True]
    assert tag_matches(LABEL + ",Extra,More", LABEL) == [True] * 4
    assert tag_matches("InterestExpense,DebtInstrumentFaceAmount", LABEL) == [True, True, False, False]
    assert (
        tag_matches("Revenues,InterestExpense,DebtInstrumentFaceAmount,LesseeOperatingLeaseTermOfContract", LABEL)
        == [False] * 4
    )
    assert tag_matches("", LABEL) == [False] * 4


# ---------------------------------------------------------------- scoring and feedback


def test_fully_correct(env):
    fb = env.score(answer(LABEL.lower()), ROW)
    assert (fb.score, fb.acc, fb.feedback) == (1.0, 1.0, "")
    assert fb.details["incorrect_format"] == 0 and fb.details["pred"] == LABEL.lower()


def test_partially_correct(env):
    fb = env.score(answer("InterestExpense,Wrong,Wrong,Revenues"), ROW)
    assert (fb.score, fb.acc) == (0.5, 0.0)
    assert fb.feedback == f"Your answer is partially correct. The correct answer is {LABEL}."
    assert fb.feedback == PARTIAL.format(ground_truth=LABEL)
    assert env.score(answer("InterestExpense,a,b,c"), ROW).score == 0.25
    assert (
        env.score(answer("InterestExpense,DebtInstrumentFaceAmount,LesseeOperatingLeaseTermOfContract"), ROW).score
        == 0.75
    )


def test_completely_incorrect(env):
    fb = env.score(answer("A,B,C,D"), ROW)
    assert (fb.score, fb.acc) == (0.0, 0.0)
    assert fb.feedback == f"Your answer is completely incorrect. The correct answer is {LABEL}."
    assert fb.feedback == WRONG.format(ground_truth=LABEL)
    assert env.score("<answer></answer>", ROW).feedback == WRONG.format(ground_truth=LABEL)


def test_wrong_format(env):
    fb = env.score("The tags are InterestExpense and so on.", ROW)
    assert (fb.score, fb.acc) == (0.0, 0.0)
    assert fb.feedback == WRONG_FORMAT
    assert (
        WRONG_FORMAT
        == "Your answer had the wrong format. The solution must be given in the format: <answer>your_answer</answer>."
    )
    assert fb.details["incorrect_format"] == 1


def test_truncation_rule_comes_second_and_wins_over_correctness(env):
    assert env.score("<think>long thinking", ROW, truncated=True).feedback == TRUNCATED
    assert TRUNCATED == "Your response was truncated because it exceeded the maximum length."
    fb = env.score(answer(LABEL), ROW, truncated=True)
    assert (fb.score, fb.acc, fb.feedback) == (1.0, 1.0, TRUNCATED)
    assert env.score(answer("InterestExpense,x,y,z"), ROW, truncated=True).feedback == TRUNCATED


def test_feedback_switches():
    quiet = FinerEnv(format_feedback=False, correctness_feedback=False)
    for response, truncated in (
        ("no answer", False),
        ("no answer", True),
        (answer("A,B,C,D"), False),
        (answer(LABEL), False),
    ):
        assert quiet.score(response, ROW, truncated=truncated).feedback == ""
    format_only = FinerEnv(correctness_feedback=False)
    assert format_only.score("none", ROW).feedback == WRONG_FORMAT
    assert format_only.score(answer("A,B,C,D"), ROW).feedback == ""
    correctness_only = FinerEnv(format_feedback=False)
    assert correctness_only.score(answer("A,B,C,D"), ROW, truncated=True).feedback == WRONG.format(ground_truth=LABEL)


def test_score_generalizes_to_other_label_lengths(env):
    two = {"context": "c", "target": "Alpha,Beta"}
    assert env.score(answer("alpha,gamma"), two).score == 0.5
    numeric = {"context": "c", "target": "100,Beta"}
    assert env.score(answer("$100,beta"), numeric).score == 1.0


def test_real_rows_score_their_own_targets(env):
    rows = env.load_split("test")
    for r in rows[:20]:
        assert env.score(answer(r["target"]), r).score == 1.0
        tags = r["target"].split(",")
        rotated = ",".join(tags[1:] + tags[:1])
        expected = sum(a.lower() == b.lower() for a, b in zip(tags[1:] + tags[:1], tags, strict=True)) / 4
        assert env.score(answer(rotated), r).score == expected


def test_fuzz_never_raises(env):
    rng = random.Random(4)
    pieces = [
        "<answer>",
        "</answer>",
        "<think>",
        "</think>",
        ",",
        "InterestExpense",
        "Revenues",
        "$",
        "1e9",
        " ",
        "\n",
        "x",
    ]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        fb = env.score(text, ROW, truncated=rng.random() < 0.2)
        assert 0.0 <= fb.score <= 1.0 and fb.acc in (0.0, 1.0)
        assert fb.feedback in (
            "",
            WRONG_FORMAT,
            TRUNCATED,
            PARTIAL.format(ground_truth=LABEL),
            WRONG.format(ground_truth=LABEL),
        )
    # long hostile inputs stay fast (no quadratic scanning)
    env.score("<answer>" * 50000 + "<think>" * 50000, ROW)


# ---------------------------------------------------------------- data


def test_shipped_validation_file(env):
    rows = env.load_split("test")
    assert len(rows) == 500
    assert [env.example_id(r) for r in rows[:3]] == ["0", "1", "2"] and env.example_id(rows[-1]) == "499"
    assert all(len(r["target"].split(",")) == 4 for r in rows)
    assert len({t for r in rows for t in r["target"].split(",")}) == 132
    val = env.load_split("val", limit=2)
    assert [(r["context"], r["target"], env.example_id(r)) for r in val] == [
        (r["context"], r["target"], env.example_id(r)) for r in rows[:2]
    ]
    sources = (DATA_DIR / "SOURCES.md").read_text()
    assert "CC BY-SA 4.0" in sources and "Loukas" in sources and "horizon-llm/RESD" in sources


def test_train_split_needs_a_path_and_reads_it(env, tmp_path):
    with pytest.raises(DataError, match="not shipped"):
        env.load_split("train")
    path = tmp_path / "finer_train_batched_1000_samples.jsonl"
    rows = [ROW, {**ROW, "target": "A,B,C,D"}, {**ROW, "extra_info": {"index": "keep-me"}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = env.load_split("train", path=str(path))
    assert [env.example_id(r) for r in loaded] == ["0", "1", "keep-me"]
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({"context": "no label"}) + "\n")
    with pytest.raises(DataError, match=r"row 2: .*label"):
        env.load_split("train", path=str(path))
    with pytest.raises(DataError):
        env.load_split("dev")


def test_task_and_test_case_metrics_follow_the_paper(env):
    """Issue 21, bug 3: per task = the whole task solved, per test case = fraction of tags (RESD arXiv 2605.12741,
    section 5): 3 of 4 tags right is task 0 and test-case 0.75, and eval.best_metric task/mean ranks on it."""
    from resd.evaluation.evaluate import summarize

    def group(response):
        fb = env.score(response, ROW)
        return [{"score": fb.score, "acc": fb.acc, "length": 1, "truncated": False}]

    three = answer("InterestExpense,DebtInstrumentFaceAmount,LesseeOperatingLeaseTermOfContract,Wrong")
    summary = summarize(env, [group(three)], 1, 1.0)
    assert (summary["task/mean@1"], summary["test_case/mean@1"]) == (0.0, 0.75), summary
    # the best checkpoint by task/mean is the one that solves a whole task, not the one with more right tags
    solved_one = summarize(env, [group(answer(LABEL)), group(answer("A,B,C,D"))], 1, 1.0)
    three_each = summarize(env, [group(three), group(three)], 1, 1.0)
    assert solved_one["task/mean@1"] > three_each["task/mean@1"]
    assert solved_one["test_case/mean@1"] < three_each["test_case/mean@1"]
