"""The Manufactoria-Has generator, the prompt, and hand-built correct and wrong factories."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from resd.data import read_rows
from resd.envs.manufactoria import ManufactoriaEnv, build_prompt, parse_program, run_program
from resd.envs.manufactoria import generator as gen
from resd.envs.manufactoria.solutions import (
    accept_all_program,
    count_program,
    reject_all_program,
    solution_for,
    subsequence_program,
    substring_program,
)

COUNT_RE = re.compile(r"Accept if the tape has at least \d [RBYG]s( and at least \d [RBYG]s)*; reject otherwise\.")
ORDERED_RE = re.compile(
    r"Accept if the tape contains the subsequence [RBYG]{1,4} \(does not have to be consecutive\); reject otherwise\."
)
SUBSTRING_RE = re.compile(
    r"Accept if the tape contains the substring '[RBYG]{1,4}' \(must be consecutive\); reject otherwise\."
)


def fenced(code: str) -> str:
    return f"```manufactoria\n{code}\n```"


@pytest.fixture(scope="module")
def splits():
    return {split: gen.split_problems(split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def all_problems(splits):
    return splits["train"] + splits["test"]


def independent_label(problem: gen.HasProblem, tape: str) -> bool:
    """The criterion, re-derived from the criteria text with regular expressions."""
    text = problem.criteria
    if problem.family == "contains_count":
        counts = Counter(tape)
        return all(counts[c] >= int(n) for n, c in re.findall(r"at least (\d) ([RBYG])s", text))
    if problem.family == "contains_ordered":
        pattern = re.search(r"subsequence ([RBYG]+) ", text).group(1)
        return re.search(".*".join(pattern), tape) is not None
    return re.search(r"'([RBYG]+)'", text).group(1) in tape


# --- problem set, split, determinism ----------------------------------------------------------


def test_family_sizes_and_total(all_problems):
    families = Counter(p.family for p, _ in all_problems)
    assert families == {"contains_count": 194, "contains_ordered": 340, "contains_substring": 340}
    assert len({p.criteria for p, _ in all_problems}) == 874
    assert len({p.name for p, _ in all_problems}) == 874


def test_split_is_742_train_132_test_and_disjoint(splits):
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test)) == (742, 132)
    assert not {p.name for p, _ in train} & {p.name for p, _ in test}
    assert {p.family for p, _ in test} == {"contains_count", "contains_ordered", "contains_substring"}


def test_generation_is_deterministic_and_depends_on_the_seed():
    gen._generated.cache_clear()
    first = gen.generate_split("test")
    gen._generated.cache_clear()
    assert gen.generate_split("test") == first
    other = gen.generate_split("test", seed=7)
    assert [r["name"] for r in other] != [r["name"] for r in first]


def _digest(seed: int = gen.SEED) -> str:
    rows = gen.generate_split("train", seed) + gen.generate_split("test", seed)
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def test_generation_does_not_depend_on_the_process_hash_seed():
    code = (
        "import hashlib, json\n"
        "from resd.envs.manufactoria import generator as g\n"
        "rows = g.generate_split('train') + g.generate_split('test')\n"
        "print(hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=root)
    assert out.stdout.strip() == _digest()


def test_count_problems_are_a_sample_of_one_to_three_conditions(all_problems):
    counts = [p for p, _ in all_problems if p.family == "contains_count"]
    assert {len(p.requirements) for p in counts} == {1, 2, 3}
    for p in counts:
        colours = [c for c, _ in p.requirements]
        assert colours == sorted(colours, key="RBYG".index) and len(set(colours)) == len(colours)
        assert all(1 <= n <= 5 for _, n in p.requirements)


def test_pattern_families_cover_every_pattern_of_length_one_to_four(all_problems):
    for family in ("contains_ordered", "contains_substring"):
        patterns = {p.pattern for p, _ in all_problems if p.family == family}
        expected = {"".join(t) for n in range(1, 5) for t in itertools.product("RBYG", repeat=n)}
        assert patterns == expected


def test_criteria_strings_follow_the_templates(all_problems):
    regex = {"contains_count": COUNT_RE, "contains_ordered": ORDERED_RE, "contains_substring": SUBSTRING_RE}
    for p, _ in all_problems:
        assert regex[p.family].fullmatch(p.criteria), p.criteria
    assert gen.count_problem({"G": 1, "R": 2}).criteria == (
        "Accept if the tape has at least 2 Rs and at least 1 Gs; reject otherwise."
    )
    assert gen.ordered_problem("RBY").criteria == (
        "Accept if the tape contains the subsequence RBY (does not have to be consecutive); reject otherwise."
    )
    assert gen.substring_problem("RBY").criteria == (
        "Accept if the tape contains the substring 'RBY' (must be consecutive); reject otherwise."
    )


def test_every_problem_has_up_to_35_good_test_tapes(all_problems):
    for p, tests in all_problems:
        inputs = [t.input for t in tests]
        assert len(tests) <= 35 and len(set(inputs)) == len(inputs)
        assert "" in inputs and {"R", "B", "Y", "G"} <= set(inputs)
        assert all(set(t) <= set("RBYG") and len(t) <= gen.COMPLEX_MAX_LEN for t in inputs)
        accepted = sum(t.expected_accepted for t in tests)
        assert accepted >= 3 and len(tests) - accepted >= 3
        for t in tests:
            assert t.expected_accepted == independent_label(p, t.input), (p.name, t.input)
            assert (t.check_output, t.expected_output) == (False, "")
            if t.description.startswith("random"):
                assert 1 <= len(t.input) <= 12


def test_test_sets_have_corner_cases_and_long_cases(all_problems):
    assert all(len(tests) == 35 for _, tests in all_problems)
    assert all(max(len(t.input) for t in tests) > 12 for _, tests in all_problems)
    assert all(sum(t.expected_accepted for t in tests) >= gen.BALANCE_TARGET for _, tests in all_problems)


def test_rows_have_the_upstream_layout(splits):
    row = gen.generate_split("train")[0]
    assert set(row) == {"messages", "ground_truth", "dataset", "difficulty", "id", "problem_family", "name"}
    assert row["dataset"] == "manufactoria" and row["difficulty"] == "easy"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", row["id"])
    assert len(row["messages"]) == 1 and row["messages"][0]["role"] == "user"
    problem, _ = splits["train"][0]
    assert row["messages"][0]["content"].endswith(problem.criteria)
    keys = ["input", "expected_output", "expected_accepted", "check_output", "description"]
    assert list(row["ground_truth"][0]) == keys
    ids = [r["id"] for r in gen.generate_split("train") + gen.generate_split("test")]
    assert len(set(ids)) == 874


# --- hand-built factories ---------------------------------------------------------------------


def test_reference_factories_pass_every_generated_problem_through_score(splits):
    env = ManufactoriaEnv()
    for split in ("train", "test"):
        for row, (problem, _) in zip(gen.generate_split(split), splits[split], strict=True):
            fb = env.score(fenced(solution_for(problem.family, problem.params)), row)
            assert (fb.score, fb.acc, fb.feedback) == (1.0, 1.0, ""), problem.name


@pytest.mark.parametrize(
    ("builder", "family", "params"),
    [
        (count_program, "contains_count", [{"R": 2}, {"B": 1, "G": 3}, {"R": 1, "Y": 2, "G": 1}, {"Y": 5}]),
        (subsequence_program, "contains_ordered", ["R", "RR", "RBY", "GYBG", "YYYY", "BRBR"]),
        (substring_program, "contains_substring", ["G", "RR", "RBR", "GYBG", "YYYY", "RRB", "BRBB"]),
    ],
)
def test_reference_factories_are_exact_on_every_short_tape(builder, family, params):
    tapes = ["".join(t) for n in range(7) for t in itertools.product("RBYG", repeat=n)]
    for param in params:
        problem = gen.count_problem(param) if family == "contains_count" else (
            gen.ordered_problem(param) if family == "contains_ordered" else gen.substring_problem(param)
        )
        program = parse_program(builder(param))
        for tape in tapes:
            assert run_program(program, tape).finished == problem.accepts(tape), (problem.name, tape)


def test_wrong_factories_get_the_specified_feedback(splits):
    env = ManufactoriaEnv()
    row = next(r for r in gen.generate_split("train") if r["problem_family"] == "contains_substring")
    tests = row["ground_truth"]
    first_accepted = next(t["input"] for t in tests if t["expected_accepted"])
    fb = env.score(fenced(reject_all_program()), row)
    assert fb.score == 0.0 and fb.acc == pytest.approx(sum(not t["expected_accepted"] for t in tests) / len(tests))
    front = first_accepted[0] if first_accepted else "EMPTY"
    assert fb.feedback.split("\n") == [
        "Runtime Error",
        "Routed to NONE",
        "",
        "Last Executed Input",
        first_accepted,
        "",
        "Debug Output",
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: NONE",
        "Rejection: Routed to NONE",
        "Routing node: start (START)",
        f"Front tape character at rejection: {front}",
        "Finished: False",
        f"Actual output: '{first_accepted}'",
        "Expected accepted: True",
    ]
    fb = env.score(fenced(accept_all_program()), row)
    rejected = [(i, t["input"]) for i, t in enumerate(tests) if not t["expected_accepted"]]
    (i1, t1), (i2, t2) = sorted(rejected, key=lambda it: 2 * len(it[1]))[:2]
    expected = []
    for index, tape in ((i1, t1), (i2, t2)):
        expected += [f"Test Case {index + 1}: Wrong Answer", "", "Input", tape, "", "Output", tape, "", "Debug Output"]
        expected += ["Execution Trace:", "  Step 1: start", "  Step 2: end", "Finished: True"]
        expected += [f"Actual output: '{tape}'", "Expected accepted: False", ""]
    assert fb.feedback.split("\n") == expected[:-1]


def test_a_factory_for_the_wrong_family_fails_some_tests(splits):
    env = ManufactoriaEnv()
    rows = {r["name"]: r for r in gen.generate_split("train") + gen.generate_split("test")}
    # the substring factory is too strict for a subsequence task: it rejects spread-out patterns
    fb = env.score(fenced(substring_program("RBY")), rows["has_subseq_RBY"])
    assert fb.score == 0.0 and 0.0 < fb.acc < 1.0
    assert fb.feedback.startswith("Runtime Error\nRouted to NONE\n\nLast Executed Input\n")
    shown = fb.feedback.split("\n")[4]
    assert gen.ordered_problem("RBY").accepts(shown) and "RBY" not in shown
    # the subsequence factory is too lenient for a substring task: it wrongly accepts
    fb = env.score(fenced(subsequence_program("RBY")), rows["has_substr_RBY"])
    assert fb.score == 0.0 and fb.feedback.startswith("Test Case ") and "Wrong Answer" in fb.feedback


def test_a_factory_that_forgets_yellow_and_green_fails_a_count_task():
    # reads only with PULLER_RB: a Y or G at the front takes EMPTY and is mistaken for the end
    naive = (
        "START start:\n    NEXT a\nPULLER_RB a:\n    [R] b\n    [B] a\n"
        "PULLER_RB b:\n    [R] end\n    [B] b\nEND end"
    )
    problem = gen.count_problem({"R": 2})
    row = gen.problem_row(problem, gen.make_tests(problem, random.Random(0)))
    fb = ManufactoriaEnv().score(fenced(naive), row)
    assert fb.score == 0.0 and fb.feedback.startswith("Runtime Error\nRouted to NONE\n")
    assert "Routing node: " in fb.feedback


# --- prompt -----------------------------------------------------------------------------------


def test_prompt_structure():
    text = build_prompt("Accept if the tape has at least 2 Rs; reject otherwise.")
    for heading in ("## Overview", "## Robots and tape", "## Operations", "## Objective", "## Syntax", "## Example"):
        assert heading in text
    for word in ("Pull", "Paint", "Route", "B (blue)", "R (red)", "Y (yellow)", "G (green)", "NONE"):
        assert word in text
    assert text.endswith(
        "# Task\nYour task is to design a factory with code with following functionality:\n\n"
        "Accept if the tape has at least 2 Rs; reject otherwise."
    )
    assert "(output check)" not in text and "(output check)" in build_prompt("x", output_check=True)


def test_prompt_example_accepts_exactly_one_red_tape():
    text = build_prompt("x")
    example = text.split("## Example")[1]
    code = example.split("```manufactoria\n")[1].split("```")[0]
    program = parse_program(code)
    tapes = ["".join(t) for n in range(5) for t in itertools.product("RBYG", repeat=n)]
    assert [t for t in tapes if run_program(program, t).finished] == ["R"]


def test_every_code_block_in_the_prompt_is_tagged():
    text = build_prompt("x")
    blocks = re.findall(r"```(\w*)\n.*?```", text, re.DOTALL)
    assert blocks and all(tag == "manufactoria" for tag in blocks)


# --- files ------------------------------------------------------------------------------------


def test_write_dataset_jsonl_round_trips(tmp_path):
    paths = gen.write_dataset(tmp_path, "jsonl")
    train, test = read_rows(paths["train"]), read_rows(paths["test"])
    assert (len(train), len(test)) == (742, 132)
    assert train == gen.generate_split("train")
    env = ManufactoriaEnv()
    assert env.load_split("test", path=str(paths["test"]), limit=5) == test[:5]


def test_write_dataset_verl_layout(tmp_path):
    paths = gen.write_dataset(tmp_path, "jsonl", layout="verl")
    row = read_rows(paths["test"])[0]
    assert row["data_source"] == "manufactoria-has" and row["extra_info"]["split"] == "test"
    assert isinstance(row["reward_model"]["ground_truth"], str)
    hf = gen.generate_split("test")[0]
    assert json.loads(row["reward_model"]["ground_truth"]) == hf["ground_truth"]
    env = ManufactoriaEnv()
    assert env.example_id(row) == hf["id"] and env.prompt_messages(row) == hf["messages"]


def test_write_dataset_parquet(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pyarrow"):
            gen.write_dataset(tmp_path, "parquet")
        return
    paths = gen.write_dataset(tmp_path, "parquet")
    rows = read_rows(paths["test"])
    assert len(rows) == 132 and rows[0]["ground_truth"] == gen.generate_split("test")[0]["ground_truth"]
    problem, _ = gen.split_problems("test")[0]
    fb = ManufactoriaEnv().score(fenced(solution_for(problem.family, problem.params)), rows[0])
    assert fb.score == 1.0


def test_write_dataset_rejects_unknown_options(tmp_path):
    with pytest.raises(ValueError, match="fmt"):
        gen.write_dataset(tmp_path, "csv")
    with pytest.raises(ValueError, match="layout"):
        gen.write_dataset(tmp_path, layout="other")


def test_command_line_writes_both_splits(tmp_path, capsys):
    gen.main([str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.jsonl", "train.jsonl"]
    assert "train:" in capsys.readouterr().out


def test_load_split_generates_in_memory_and_limits():
    env = ManufactoriaEnv()
    assert len(env.load_split("train")) == 742 and len(env.load_split("test", limit=10)) == 10
    with pytest.raises(Exception, match="train"):
        env.load_split("validation")
