"""The Manufactoria environment: extraction, scores, row formats, and a fuzz test."""

from __future__ import annotations

import json
import random

import pytest

import resd.envs
from resd.envs.base import DataError, Feedback
from resd.envs.manufactoria import ManufactoriaEnv, ParseError, extract_code, parse_program
from resd.envs.manufactoria.generator import to_verl_row

ONLY_R = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\nEND end"
# accepts exactly the tapes that start with R (reads R first, anything after is ignored)
TESTS = [
    {"input": "R", "expected_output": "", "expected_accepted": True, "check_output": False, "description": "a"},
    {"input": "RB", "expected_output": "", "expected_accepted": True, "check_output": False, "description": "b"},
    {"input": "B", "expected_output": "", "expected_accepted": False, "check_output": False, "description": "c"},
    {"input": "", "expected_output": "", "expected_accepted": False, "check_output": False, "description": "d"},
]


def hf_row(tests=None, **extra):
    row = {
        "messages": [{"role": "user", "content": "Build a factory."}],
        "ground_truth": TESTS if tests is None else tests,
        "dataset": "manufactoria",
        "difficulty": "easy",
        "id": "abc-123",
        "problem_family": "contains_ordered",
        "name": "has_subseq_R",
    }
    row.update(extra)
    return row


def fenced(code: str, tag: str = "manufactoria") -> str:
    return f"Here is my factory.\n```{tag}\n{code}\n```\nDone."


@pytest.fixture
def env() -> ManufactoriaEnv:
    return ManufactoriaEnv()


# --- extraction -------------------------------------------------------------------------------


def test_extraction_takes_the_last_block_stripped():
    response = "```manufactoria\nfirst\n```\ntext\n```manufactoria\n\n  second  \n\n```"
    assert extract_code(response) == "second"


def test_extraction_tag_is_optional_and_other_tags_stay_in_the_code():
    assert extract_code("```\nSTART start:\n```") == "START start:"
    assert extract_code("```python\nx\n```") == "python\nx"


def test_extraction_reads_thinking_too_and_needs_a_closed_block():
    assert extract_code("<think>```manufactoria\nA\n```</think> answer without code") == "A"
    assert extract_code("```manufactoria\nunclosed") is None
    assert extract_code("no code at all") is None
    assert extract_code("``````") == ""


# --- scores -----------------------------------------------------------------------------------


def test_registry_loads_the_environment():
    env = resd.envs.load("manufactoria")
    assert isinstance(env, ManufactoriaEnv) and env.name == "manufactoria"
    assert env.task_description == "generating Manufactoria DSL codes"


def test_all_tests_pass(env):
    fb = env.score(fenced(ONLY_R), hf_row())
    assert isinstance(fb, Feedback)
    assert (fb.score, fb.acc, fb.feedback) == (1.0, 1.0, "")
    assert fb.details["num_passed"] == 4 and fb.details["code"] == ONLY_R and not fb.details["parse_error"]


def test_partial_pass_is_sparse_by_default_and_dense_on_request(env):
    accept_all = "START start:\n    NEXT end\nEND end"
    fb = env.score(fenced(accept_all), hf_row())
    assert (fb.score, fb.acc) == (0.0, 0.5)
    dense = ManufactoriaEnv(sparse=False).score(fenced(accept_all), hf_row())
    assert (dense.score, dense.acc) == (0.5, 0.5)
    assert fb.feedback.startswith("Test Case 4: Wrong Answer\n\nInput\n\n\nOutput\n\n\nDebug Output\n")
    assert "Test Case 3: Wrong Answer" in fb.feedback


def test_false_rejection_feedback_through_score(env):
    fb = env.score(fenced("START start:\n    NEXT NONE\nEND end"), hf_row())
    assert (fb.score, fb.acc) == (0.0, 0.5)
    assert fb.feedback.split("\n")[:10] == [
        "Runtime Error",
        "Routed to NONE",
        "",
        "Last Executed Input",
        "R",
        "",
        "Debug Output",
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: NONE",
    ]
    assert fb.details["error_in_test_cases"]


def test_parse_failure_scores_zero_with_one_record(env):
    fb = env.score(fenced("START start:\n    NEXT end\nEND end:"), hf_row())
    assert (fb.score, fb.acc) == (0.0, 0.0)
    assert fb.feedback == (
        "Runtime Error\nDSL Parse Error: Line 3: END nodes should not have a colon\n\nLast Executed Input\nNone"
    )
    assert fb.details["parse_error"] and len(fb.details["records"]) == 1


def test_missing_code_block_is_incorrect_format(env):
    fb = env.score("I think the answer is to pull red.", hf_row())
    assert (fb.score, fb.acc) == (0.0, 0.0)
    assert fb.feedback == "Incorrect Format: Put your code inside a ```manufactoria ... ``` block."
    assert fb.details["incorrect_format"]
    cut = env.score("I think the answer", hf_row(), truncated=True)
    assert cut.feedback == "Truncated Attempt: Your previous response was too long and truncated."


def test_a_non_string_response_is_an_incorrect_format(env):
    assert env.score(None, hf_row()).details["incorrect_format"]  # type: ignore[arg-type]


def test_capital_end_target_is_a_runtime_rejection(env):
    fb = env.score(fenced("START start:\n    NEXT p\nPULLER_RB p:\n    [R] END\nEND end"), hf_row())
    assert fb.acc == 0.5 and fb.feedback.startswith("Runtime Error\nUnknown node: END\n")


def test_output_check_tests_use_the_regex_rule(env):
    paint = "START start:\n    NEXT a\nPAINTER_BLUE a:\n    NEXT end\nEND end"
    tests = [
        {"input": "R", "expected_output": "RB", "expected_accepted": True, "check_output": True},
        {"input": "RR", "expected_output": "R+B", "expected_accepted": True, "check_output": True},
        {"input": "G", "expected_output": "R+B", "expected_accepted": True, "check_output": True},
    ]
    fb = env.score(fenced(paint), hf_row(tests))
    assert fb.acc == pytest.approx(2 / 3)
    assert "Expected\nR+B" in fb.feedback and "Expected output: 'R+B'" in fb.feedback


# --- rows -------------------------------------------------------------------------------------


def test_ground_truth_as_json_string_and_verl_rows_score_the_same(env):
    as_list = env.score(fenced(ONLY_R), hf_row())
    as_json = env.score(fenced(ONLY_R), hf_row(json.dumps(TESTS)))
    verl = to_verl_row(hf_row(), "train")
    assert isinstance(verl["reward_model"]["ground_truth"], str)
    as_verl = env.score(fenced(ONLY_R), verl)
    assert as_list.to_dict() == as_json.to_dict() == as_verl.to_dict()
    assert env.prompt_messages(verl) == env.prompt_messages(hf_row()) == [
        {"role": "user", "content": "Build a factory."}
    ]
    assert env.example_id(verl) == env.example_id(hf_row()) == "abc-123"


def test_optional_test_fields_take_upstream_defaults(env):
    tests = env.tests(hf_row([{"input": "R", "expected_accepted": True}]))
    assert (tests[0].expected_output, tests[0].check_output, tests[0].description) == ("", True, "")
    # check_output defaults to True, so the final tape must then equal "" exactly
    assert env.score(fenced(ONLY_R), hf_row([{"input": "RB", "expected_accepted": True}])).acc == 0.0


def test_a_single_test_object_is_wrapped(env):
    assert len(env.tests(hf_row(json.dumps(TESTS[0])))) == 1


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"ground_truth": TESTS, "id": "x"}, "messages"),
        (hf_row(messages="hello"), "messages"),
        (hf_row(messages=[{"role": "user"}]), "content"),
        ({"messages": [{"role": "user", "content": "x"}], "id": "x"}, "ground_truth"),
        (hf_row("[not json"), "ground_truth"),
        (hf_row(5), "ground_truth"),
        (hf_row([]), "ground_truth"),
        (hf_row(["R"]), "ground_truth[0]"),
        (hf_row([{"expected_accepted": True}]), "input"),
        (hf_row([{"input": 3, "expected_accepted": True}]), "input"),
        (hf_row([{"input": "R"}]), "expected_accepted"),
        (hf_row([{"input": "R", "expected_accepted": "yes"}]), "expected_accepted"),
        (hf_row([{"input": "R", "expected_accepted": True, "expected_output": 1}]), "expected_output"),
        (hf_row([{"input": "R", "expected_accepted": True, "check_output": "no"}]), "check_output"),
    ],
)
def test_malformed_rows_raise_data_error_naming_the_field(env, row, field):
    with pytest.raises(DataError, match=field.replace("[", r"\[").replace("]", r"\]")):
        env.prompt_messages(row) if field in ("messages", "content") else env.score(fenced(ONLY_R), row)


def test_missing_id_raises_data_error(env):
    with pytest.raises(DataError, match="'id'"):
        env.example_id({"messages": []})


# --- fuzz -------------------------------------------------------------------------------------

_TOKENS = [
    "START", "END", "PULLER_RB", "PULLER_YG", "PAINTER_RED", "PAINTER_BLUE", "PAINTER_YELLOW",
    "PAINTER_GREEN", "start", "end", "NONE", "END", "NEXT", "[R]", "[B]", "[Y]", "[G]", "[EMPTY]",
    "[", "]", ":", "#", " ", "    ", "\t", "\n", "\n", "\n    ", "```", "```manufactoria", "a", "b1",
    "q_0", "é", "\r", "\x00", "\u2028", "(", "*", "\\", "'", '"',
]  # fmt: skip


def _mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 6))):
        op = rng.randrange(4)
        pos = rng.randint(0, len(chars))
        if op == 0 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op == 1:
            chars[pos:pos] = list(rng.choice(_TOKENS))
        elif op == 2 and chars:
            chars[min(pos, len(chars) - 1)] = chr(rng.randint(0, 0x2FF))
        else:
            lines = "".join(chars).split("\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            chars = list("\n".join(lines))
    return "".join(chars)


def _rewire(text: str, rng: random.Random) -> str:
    """Point some routes of a valid program elsewhere: still valid, often looping or rejecting."""
    ids = [line.split()[1].rstrip(":") for line in text.split("\n") if line and not line[0].isspace()]
    targets = [*ids, "NONE", "end", "END", "start"]
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        if lines[i].startswith("    "):
            head, _, _ = lines[i].rpartition(" ")
            lines[i] = f"{head} {rng.choice(targets)}"
    return "\n".join(lines)


def test_fuzz_parser_and_score_never_raise(env):
    from resd.envs.manufactoria.solutions import count_program, substring_program

    rng = random.Random(1234)
    seeds = [ONLY_R, substring_program("RBY"), count_program({"G": 2, "R": 1}), "START start:\n    NEXT end\nEND end"]
    row = hf_row()
    parsed = 0
    for i in range(6000):
        if i % 3 == 0:
            text = "".join(rng.choice(_TOKENS) for _ in range(rng.randint(0, 40)))
        elif i % 3 == 1:
            text = _mutate(rng.choice(seeds), rng)
        else:
            text = _rewire(rng.choice(seeds), rng)
        try:
            parse_program(text)
            parsed += 1
        except ParseError as e:
            assert str(e)  # every parse error has a message
        response = rng.choice(["", "```manufactoria\n", "```\n", "text ```"]) + text + rng.choice(["```", "", "\n```"])
        fb = env.score(response, row, truncated=rng.random() < 0.1)
        assert 0.0 <= fb.acc <= 1.0 and fb.score in (0.0, 1.0)
        assert len(fb.feedback) <= 2000
        assert (fb.feedback == "") == (fb.score == 1.0)
    assert parsed > 1500  # the mutations keep a fair share of programs valid


def test_family_filter_keeps_only_the_chosen_problem_families():
    from resd.envs.manufactoria.env import ManufactoriaEnv

    env = ManufactoriaEnv(families=["contains_count"])
    rows = env.load_split("train")
    assert rows and {r["problem_family"] for r in rows} == {"contains_count"}
    assert len(env.load_split("train", limit=5)) == 5
    assert len(ManufactoriaEnv().load_split("train")) > len(rows)
    with pytest.raises(ValueError, match="unknown Manufactoria-Has families"):
        ManufactoriaEnv(families=["contains_colour"])
