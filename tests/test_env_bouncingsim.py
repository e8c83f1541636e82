"""The BouncingSim environment end to end: real sandboxed runs, scores, feedback, datasets, fuzz."""

from __future__ import annotations

import json
import math
import random

import pytest

import resd.envs
from resd.data import read_rows
from resd.envs.base import DataError
from resd.envs.bouncingsim import BouncingSimEnv, generate_rows, to_verl_row, write_dataset
from resd.envs.bouncingsim.checks import encode_ground_truth, parse_assert
from resd.envs.bouncingsim.dataset import DEFAULT_SIZES, base_seed, generate_row
from resd.envs.bouncingsim.feedback import INCORRECT_FORMAT_MESSAGE, NEARLY_CORRECT_HINT, TRUNCATED_MESSAGE
from resd.envs.bouncingsim.reference import reference_response
from resd.envs.bouncingsim.scene import Scene
from resd.sandbox import TestOutcome


@pytest.fixture(scope="module")
def env():
    return BouncingSimEnv()


@pytest.fixture(scope="module")
def row():
    return generate_row("easy", "test", 0)


@pytest.fixture(scope="module")
def scene(row):
    return Scene.from_config(row["scene_config"])


def first_tests(row, n):
    return {**row, "ground_truth": row["ground_truth"][:n]}


def fenced(code):
    return f"Here is my answer.\n```python\n{code}\n```"


def table_program(row, shift=lambda t, ball: (0.0, 0.0)):
    """A program answering from the asserts' own expected positions, each ball shifted by ``shift``."""
    table = {}
    for line in row["ground_truth"]:
        test = parse_assert(line)
        table[test.time] = [[x + shift(test.time, k)[0], y + shift(test.time, k)[1]] for k, (x, y) in enumerate(test.expected)]
    return f"def predict_position(t):\n    table = {table!r}\n    return table[round(t, 2)]"


# ---------------------------------------------------------------- registry and rows


def test_registry_loads_the_environment():
    env = resd.envs.load("bouncingsim")
    assert isinstance(env, BouncingSimEnv) and env.difficulty == "easy"
    assert resd.envs.load("bouncingsim", difficulty="medium").difficulty == "medium"
    with pytest.raises(ValueError, match="difficulty"):
        BouncingSimEnv("hard")


def test_upstream_row_layout(row):
    assert set(row) == {"messages", "ground_truth", "dataset", "difficulty", "id", "scene_config"}
    assert row["dataset"] == "bouncingsim" and row["difficulty"] == 1
    assert row["id"] == "bouncingsim-easy-test-00000"
    assert row["scene_config"]["meta"]["scene_type"] == "MULTIOBJ"
    assert len(row["ground_truth"]) == 15
    times = [parse_assert(line).time_text for line in row["ground_truth"]]
    assert times == [f"{0.1 * k:.2f}" for k in range(1, 16)]
    (message,) = row["messages"]
    assert message["role"] == "user"


def test_prompt_structure(row, scene):
    text = row["messages"][0]["content"]
    order = ["# Polygon Dynamics Prediction", "## General mechanics", "## Constraints", "## Scene", "### Containers",
             "### Objects", "### Physics", "### Dynamics", "### Conventions", "## Task", "## Output format"]
    positions = [text.index(h) for h in order]
    assert positions == sorted(positions)
    for needle in ["v' = v - 2*(v . n)*n", "`predict_position(t)`", "global variables", "except `math`", "no prints",
                   "no randomness", "round(value, 2)", "-0.0", "independent", "bounces back", "Y axis points up",
                   "Number of balls: 3", "```python", "[[x1, y1], [x2, y2], [x3, y3]]"]:
        assert needle in text, needle
    c = scene.container
    assert f"{c.sides} sides, circumradius 375.00 m, centre (750.00, 750.00), orientation {c.orientation:.4f} rad" in text
    for k, b in enumerate(scene.balls, 1):
        assert (f"Ball {k}: circle, radius 20.00 m, initial position ({b.position[0]:.2f}, {b.position[1]:.2f}) m, "
                f"initial velocity ({b.velocity[0]:.2f}, {b.velocity[1]:.2f}) m/s") in text


def test_prompt_messages_and_ids_for_both_layouts(env, row):
    verl = to_verl_row(row, "test")
    assert env.prompt_messages(row) == env.prompt_messages(verl) == row["messages"]
    assert env.example_id(row) == env.example_id(verl) == row["id"]
    assert verl["data_source"] == "bouncingsim-easy" and verl["ability"] == "bouncingsim"
    assert verl["reward_model"] == {"style": "bouncingsim", "ground_truth": json.dumps(row["ground_truth"])}
    assert verl["extra_info"] == {"split": "test", "index": row["id"], "difficulty": 1, "axes": "MULTIOBJ"}
    with pytest.raises(DataError):
        env.prompt_messages({"id": 1})
    with pytest.raises(DataError):
        env.score("```python\npass\n```", {"messages": row["messages"]})
    with pytest.raises(DataError, match="not of the form"):
        env.score("x", {**row, "ground_truth": ["assert predict_position(1) == 2"]})


# ---------------------------------------------------------------- scoring with the real sandbox


def test_reference_solution_passes_every_test(env, row, scene):
    result = env.score(reference_response(scene), row)
    assert (result.score, result.acc, result.feedback) == (1.0, 1.0, "")
    assert result.details["passed"] == 15


def test_no_bounce_solution_gets_the_specified_feedback(env, row, scene):
    """Straight-line motion: right until the first bounce, then wrong. The expected header is
    recomputed here from the asserts."""
    balls = [[b.position[0], b.position[1], b.velocity[0], b.velocity[1]] for b in scene.balls]
    code = f"def predict_position(t):\n    return [[round(x + vx * t, 2), round(y + vy * t, 2)] for x, y, vx, vy in {balls!r}]"
    result = env.score(fenced(code), row)
    tests = [parse_assert(line) for line in row["ground_truth"]]
    avg = []
    for test in tests:
        got = [[round(x + vx * test.time, 2), round(y + vy * test.time, 2)] for x, y, vx, vy in balls]
        avg.append(round(sum(math.dist(p, q) for p, q in zip(got, test.expected)) / len(got), 3))
    passed = [a <= 50.0 for a in avg]
    assert 0 < sum(passed) < 15 and result.score == 0.0
    assert result.acc == pytest.approx(sum(passed) / 15)
    lines = result.feedback.split("\n")
    assert lines[0] == f"Passed {sum(passed)}/15 test cases."
    first_fail = passed.index(False)
    last_pass = max(i for i, p in enumerate(passed) if p)
    assert lines[1] == (f"Tests pass for t <= {tests[last_pass].time_text}, first failure at t = "
                        f"{tests[first_fail].time_text} (Test Case {first_fail + 1}).")
    wrong = [i for i, p in enumerate(passed) if not p]
    assert lines[2] == (f"Position error grows with time (avg_distance {avg[wrong[0]]:.1f} at t={tests[wrong[0]].time_text} "
                        f"-> {avg[wrong[-1]]:.1f} at t={tests[wrong[-1]].time_text}), suggesting collision/bounce handling "
                        "may be incorrect.")
    assert lines[3] == ""
    assert lines[4] == f"Test Case {first_fail + 1}: Wrong Answer"
    assert lines[5] == f"avg_distance={avg[first_fail]:.3f}, threshold=50.0"
    assert lines[6:10] == ["", "Input", f"t = {tests[first_fail].time_text}", ""]
    assert lines[10] == "Per-Ball Distances"
    assert result.feedback.count(": Wrong Answer") == min(3, len(wrong))


def test_nearly_correct_balls_get_the_hint(env, row):
    code = table_program(row, shift=lambda t, ball: (300.0, 0.0) if ball == 2 else (0.0, 0.0))
    result = env.score(fenced(code), first_tests(row, 2))
    assert result.acc == 0.0
    lines = result.feedback.split("\n")
    expected = parse_assert(row["ground_truth"][0]).expected
    x, y = expected[2]
    assert lines[:3] == ["Passed 0/2 test cases.", "", "Test Case 1: Wrong Answer"]
    assert lines[3] == "avg_distance=100.000, threshold=50.0"
    assert lines[8] == "Per-Ball Distances"
    assert lines[9] == f"Ball 1: off by 0.0m (got [{expected[0][0]}, {expected[0][1]}], expected [{expected[0][0]}, {expected[0][1]}])"
    assert lines[11] == f"Ball 3: off by 300.0m (got [{x + 300.0}, {y}], expected [{x}, {y}])"
    assert lines[12:14] == ["", NEARLY_CORRECT_HINT]
    assert "Position error grows" not in result.feedback  # constant error


def test_runtime_error_shows_the_traceback_of_the_solution(env, row):
    code = "def helper(t):\n    return 1 / 0\n\ndef predict_position(t):\n    return helper(t)"
    result = env.score(fenced(code), first_tests(row, 3))
    lines = result.feedback.split("\n")
    assert lines[:4] == ["Passed 0/3 test cases.", "", "Runtime Error", "ZeroDivisionError: division by zero"]
    assert lines[4] == "Traceback (most recent call last):"
    assert '  File "<solution>", line 5, in predict_position' in lines
    assert "    return 1 / 0" in lines
    assert lines[-7:] == ["ZeroDivisionError: division by zero", "", "Input", "t = 0.10", "", "Assert", row["ground_truth"][0]]
    assert "main.py" not in result.feedback and "driver" not in result.feedback  # our harness stays hidden


def test_definition_error(env, row):
    result = env.score(fenced("raise ValueError('boom')\ndef predict_position(t):\n    return []"), first_tests(row, 2))
    assert result.feedback.split("\n")[2:4] == ["Runtime Error", "DefinitionError: ValueError: boom"]


def test_wrong_number_of_balls_is_an_error_with_the_actual_output(env, row):
    result = env.score(fenced("def predict_position(t):\n    return [[1.5, 2], [3, 4]]"), first_tests(row, 1))
    lines = result.feedback.split("\n")
    assert lines[2:4] == ["Runtime Error", "ValueError: Lists must have same length: 2 vs 3"]
    assert lines[-2:] == ["Debug Output", "actual_output=[[1.5, 2], [3, 4]]"]


def test_a_non_list_result_is_an_error(env, row):
    result = env.score(fenced("def predict_position(t):\n    return {1, 2}"), first_tests(row, 1))
    assert result.feedback.split("\n")[3] == (
        "TypeError: predict_position must return a list of [x, y] number pairs, got a value of type set"
    )


def test_missing_function(env, row):
    result = env.score(fenced("def predict(t):\n    return []"), first_tests(row, 1))
    assert result.feedback.split("\n")[3] == "NameError: name 'predict_position' is not defined"


def test_infinite_loop_times_out_with_the_exact_message(env, row):
    result = env.score(fenced("def predict_position(t):\n    while True:\n        pass"), first_tests(row, 1))
    assert result.feedback.split("\n") == [
        "Passed 0/1 test cases.",
        "",
        "Time Limit Exceeded",
        "Time limit exceeded (killed after 1.0s). Your code likely has an infinite loop in collision handling.",
        "",
        "Input",
        "t = 0.10",
        "",
        "Assert",
        row["ground_truth"][0],
    ]
    assert result.details["timed_out"] is True


def test_exits_and_memory_bombs_are_errors(env, row):
    cases = {
        "import sys\ndef predict_position(t):\n    sys.exit(3)": "SystemExit: 3",
        "def predict_position(t):\n    __import__('o' + 's')._exit(4)": (
            "ProcessExit: the program ended (exit code 4) before predict_position returned"
        ),
        "def predict_position(t):\n    return [0] * (10 ** 10)": "MemoryError",
    }
    for code, message in cases.items():
        result = env.score(fenced(code), first_tests(row, 1))
        assert result.acc == 0.0
        assert result.feedback.split("\n")[3].startswith(message), (code, result.feedback)


def test_prints_and_forged_result_lines_do_not_help(env, row):
    code = (
        "import sys\n"
        "def predict_position(t):\n"
        "    print('@@RESD-BOUNCINGSIM-RESULT@@{\"kind\": \"value\", \"json\": \"[[0, 0]]\"}')\n"
        "    sys.__stdout__.write('x' * 100000)\n"
        "    return [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]"
    )
    result = env.score(fenced(code), first_tests(row, 1))
    assert result.acc == 0.0 and "Wrong Answer" in result.feedback


def test_safety_filter_and_syntax_error_feedback(env, row):
    blocked = env.score(fenced("import threading\ndef predict_position(t):\n    return []"), first_tests(row, 2))
    assert blocked.feedback.split("\n")[:4] == [
        "Passed 0/2 test cases.",
        "",
        "Runtime Error",
        "Execution blocked by safety filter (restricted patterns in code).",
    ]
    broken = env.score(fenced("def predict_position(t)\n    return []"), first_tests(row, 2))
    assert broken.feedback.split("\n")[3].startswith("Syntax Error: expected ':' (<solution>, line 1)")


@pytest.mark.parametrize("response", ["no code here", "```python\n   \n```", "```python\nnever closed"])
def test_incorrect_format(env, row, response):
    result = env.score(response, row)
    assert (result.score, result.acc) == (0.0, 0.0)
    assert result.feedback == "Passed 0/1 test cases.\n\n" + INCORRECT_FORMAT_MESSAGE
    assert env.score(response, row, truncated=True).feedback == "Passed 0/1 test cases.\n\n" + TRUNCATED_MESSAGE


def test_stored_formats_score_alike(env, row):
    code = fenced(table_program(row, shift=lambda t, ball: (0.0, 40.0) if t > 0.25 else (0.0, 0.0)))
    small = first_tests(row, 4)
    plain = env.score(code, small)
    assert (plain.score, plain.acc) == (1.0, 1.0)  # 40 m off is within the tolerance
    compressed = env.score(code, {**small, "ground_truth": encode_ground_truth(small["ground_truth"])})
    verl = env.score(code, to_verl_row(small, "train"))
    assert plain.acc == compressed.acc == verl.acc and plain.feedback == compressed.feedback == verl.feedback


def test_partial_credit_is_acc_and_score_is_sparse(env, row):
    code = fenced(table_program(row, shift=lambda t, ball: (0.0, 80.0) if t > 0.25 else (0.0, 0.0)))
    result = env.score(code, first_tests(row, 4))
    assert (result.score, result.acc) == (0.0, 0.5)
    assert result.feedback.split("\n")[1] == "Tests pass for t <= 0.20, first failure at t = 0.30 (Test Case 3)."


# ---------------------------------------------------------------- fuzz


def _mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randrange(len(chars) + 1)
        if op < 0.3 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op < 0.6:
            chars.insert(pos, rng.choice(["`", "```", "\n", "(", ")", ":", "0", "-", "import os", "\x00", "é", "1e308"]))
        elif op < 0.8 and chars:
            chars[min(pos, len(chars) - 1)] = rng.choice("xyz0123456789[](){}:.,")
        else:
            chars = chars[:pos]
    return "".join(chars)


def test_fuzz_scoring_never_raises(row, scene):
    """Thousands of random and mutated responses against a stubbed sandbox (every code path up
    to the process), then a few dozen real sandboxed runs of mutated correct answers."""
    rng = random.Random(1234)
    small = first_tests(row, 2)
    good = reference_response(scene)

    def garbage(code, calls, **kwargs):
        return [
            TestOutcome(
                rng.choice(["ok", "error", "timeout", "skipped"]),
                value=rng.choice(["", "[[1, 2], [3, 4], [5, 6]]", "[[1, 2]]", _mutate(good, rng)]),
                phase=rng.choice(["", "define", "call", "resolve"]),
                error=rng.choice(["", "KeyError: 1", "ProcessError: (exit code 4)"]),
            )
            for _ in calls
        ]

    stubbed = BouncingSimEnv(run_sandbox=garbage)
    alphabet = "`python\n ()[]:=.,0123456789abcdef_"
    for i in range(2000):
        if i % 2:
            response = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        else:
            response = _mutate(good, rng)
        result = stubbed.score(response, small, truncated=rng.random() < 0.1)
        assert 0.0 <= result.acc <= 1.0 and result.score in (0.0, 1.0) and len(result.feedback) <= 2000
    real = BouncingSimEnv()
    for _ in range(25):
        result = real.score(_mutate(good, rng), small)
        assert 0.0 <= result.acc <= 1.0 and len(result.feedback) <= 2000


# ---------------------------------------------------------------- datasets


def test_generated_rows_are_deterministic_and_distinct():
    a = generate_rows("medium", "train", 3)
    assert a == generate_rows("medium", "train", 3)
    assert len({r["id"] for r in a}) == 3
    assert all(len(r["scene_config"]["objects"]) in (4, 5) and r["difficulty"] == 2 for r in a)
    seeds = {r["scene_config"]["meta"]["seed"] for r in a}
    test_seeds = {r["scene_config"]["meta"]["seed"] for r in generate_rows("medium", "test", 3)}
    assert not seeds & test_seeds
    assert base_seed("easy", "train", 1) - base_seed("easy", "train", 0) == 1000
    with pytest.raises(DataError):
        base_seed("easy", "validation", 0)


def test_load_split_generates_or_reads(env, tmp_path, row):
    assert DEFAULT_SIZES == {"easy": {"train": 640, "test": 100}, "medium": {"train": 320, "test": 100}}
    rows = env.load_split("test", limit=2)
    assert [r["id"] for r in rows] == ["bouncingsim-easy-test-00000", "bouncingsim-easy-test-00001"]
    assert rows[0] == row
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert env.load_split("train", path=str(path), limit=1) == rows[:1]
    with pytest.raises(DataError):
        env.load_split("dev")


def test_write_dataset_jsonl_and_parquet(tmp_path, env):
    paths = write_dataset(tmp_path / "plain", "easy", n_train=2, n_test=1)
    train = read_rows(paths["train"])
    assert len(train) == 2 and len(read_rows(paths["test"])) == 1
    assert train == generate_rows("easy", "train", 2)
    packed = read_rows(write_dataset(tmp_path / "packed", "easy", 2, 1, compress_ground_truth=True)["train"])
    assert isinstance(packed[0]["ground_truth"], str)
    assert env.tests(packed[0])[0] == train[0]["ground_truth"]
    pytest.importorskip("pyarrow")
    verl = read_rows(write_dataset(tmp_path / "verl", "easy", 2, 1, fmt="parquet", verl=True)["train"])
    assert verl[0] == to_verl_row(train[0], "train")
    raw = read_rows(write_dataset(tmp_path / "raw", "medium", 1, 1, fmt="parquet")["test"])
    assert raw[0]["ground_truth"] == generate_rows("medium", "test", 1)[0]["ground_truth"]
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "x", "easy", 1, 1, fmt="csv")
