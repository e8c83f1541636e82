"""The efficacy benchmark's runner: merged run configs, method list, and the summary arithmetic."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from resd.config import Config

RUNNER = Path(__file__).resolve().parent.parent / "benchmarks" / "efficacy" / "run.py"


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("efficacy_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task", ["arithmetic", "manufactoria"])
def test_every_arm_gives_a_valid_config_with_the_budget_in_whole_batches(runner, task):
    for method in runner.defined_methods():
        config, budget = runner.run_config(task, method, None)
        parsed = Config.model_validate(config)  # the config `resd train` will load
        rollouts_per_batch = parsed.train.batch_size * parsed.rollout.n * parsed.stream.inner_steps
        assert parsed.stream.num_batches * rollouts_per_batch == budget
        assert parsed.rollout.n == (8 if method == "grpo" else 1)


def test_resd_arms_use_the_direct_template_and_the_compact_arm_differs_only_in_prompts(runner):
    arith, _ = runner.run_config("arithmetic", "resd", None)
    manuf, _ = runner.run_config("manufactoria", "resd", None)
    assert arith["resd"]["teacher_template"] == manuf["resd"]["teacher_template"] == "direct"
    compact, _ = runner.run_config("arithmetic", "resd-compact", None)
    assert compact["resd"]["context_prompts"] == "compact" and compact["resd"]["teacher_template"] == "direct"
    # apart from the prompt set, the compact arm is the RESD arm
    assert {**compact["resd"], "context_prompts": None} == {**arith["resd"], "context_prompts": None}
    assert runner.defined_methods()[:4] == ["grpo", "sdpo", "sdpo-ss", "resd"]
    with pytest.raises(SystemExit, match="not a multiple"):
        runner.run_config("arithmetic", "grpo", 100)


def test_first_reaching_and_curves(runner):
    xs = np.array([0, 64, 128])
    assert runner.first_reaching(xs, np.array([0.1, 0.25, 0.3]), 0.25) == 64
    assert runner.first_reaching(xs, np.array([0.1, 0.2, 0.2]), 0.25) is None
    results = [
        {"points": [{"rollouts": 0, "acc_mean": 0.1, "elapsed_s": 0}, {"rollouts": 64, "acc_mean": 0.3, "elapsed_s": 60}]},
        {"points": [{"rollouts": 0, "acc_mean": 0.2, "elapsed_s": 0}, {"rollouts": 32, "acc_mean": 0.9, "elapsed_s": 9},
                    {"rollouts": 64, "acc_mean": 0.5, "elapsed_s": 80}]},
    ]
    common, values, times = runner.curve(results)
    assert common.tolist() == [0, 64]  # only the rollout counts every seed has
    assert values.tolist() == [[0.1, 0.3], [0.2, 0.5]] and times.tolist() == [[0, 60], [0, 80]]


def test_summary_table_and_verdict(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    task_dir = tmp_path / "toy"
    task_dir.mkdir()
    finals = {"grpo": [0.2, 0.4], "sdpo": [0.3, 0.3], "resd": [0.35, 0.45]}
    for method, per_seed in finals.items():
        for seed, final in enumerate(per_seed):
            points = [{"rollouts": 0, "acc_mean": 0.1, "elapsed_s": 0.0, "task_mean": 0.0},
                      {"rollouts": 32, "acc_mean": final - 0.05, "elapsed_s": 30.0, "task_mean": 0.0},
                      {"rollouts": 128, "acc_mean": final, "elapsed_s": 120.0, "task_mean": seed / 10}]
            (task_dir / f"{method}-seed{seed}.json").write_text(json.dumps(
                {"method": method, "seed": seed, "eval_k": 2, "points": points}))
    lines = runner.summarize_task("toy")
    table = [line for line in lines if line.startswith("| resd | 2 ")]  # the two tables over seeds
    assert table == ["| resd | 2 | 0.100 ± 0.000 | 0.350 ± 0.050 | 0.400 ± 0.050 | 2.0 min |",  # accuracy
                     "| resd | 2 | 0.000 ± 0.000 | 0.000 ± 0.000 | 0.050 ± 0.050 |"]  # problems solved
    per_seed = lines[lines.index("Per seed (held-out accuracy at each evaluation):") + 2:]
    assert per_seed[:2] == ["| method | seed | 0 rollouts | 32 rollouts | 128 rollouts |", "|---|---|---|---|---|"]
    assert "| resd | 0 | 0.100 | 0.300 | 0.350 |" in per_seed and "| grpo | 1 | 0.100 | 0.350 | 0.400 |" in per_seed
    summary = json.loads((task_dir / "summary.json").read_text())
    # GRPO ends at 0.3; RESD's mean is 0.35 at 32 rollouts = a quarter of 128: met
    assert summary["verdict"]["grpo_final"] == pytest.approx(0.3)
    assert summary["verdict"]["resd_rollouts_to_grpo_final"] == 32
    assert summary["verdict"]["target_quarter_budget"] is True
    assert summary["verdict"]["resd_beats_sdpo"] is True
    assert "- GRPO's final held-out accuracy: 0.300; RESD's mean first reaches it at 32 rollouts " \
           "(target: at most 32): met." in lines
    assert (task_dir / "accuracy_vs_rollouts.png").read_bytes()[:4] == b"\x89PNG"
    rows = (task_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 2 * 3  # header + methods x seeds x points
    assert rows[0] == "task,method,seed,rollouts,acc_mean,solved_mean"
    # accuracy is partial credit here (it differs from the solve rate), so a second table follows
    cases = lines[lines.index("Held-out problems solved (every test case passed):") + 2:]
    assert "| grpo | 2 | 0.000 ± 0.000 | 0.000 ± 0.000 | 0.050 ± 0.050 |" in cases


def test_no_trivial_programs_outside_manufactoria(runner):
    assert runner.trivial_accs({"sdpo": [{"seed": 0, "points": []}]}) == {}  # no config kept
    config, _ = runner.run_config("arithmetic", "sdpo", None)
    assert runner.trivial_accs({"sdpo": [{"seed": 0, "config": config, "points": []}]}) == {}


def test_per_seed_table_leaves_a_blank_where_a_seed_was_not_evaluated(runner):
    results = {"sdpo": [
        {"seed": 1, "points": [{"rollouts": 0, "acc_mean": 0.2}, {"rollouts": 64, "acc_mean": 0.5}]},
        {"seed": 0, "points": [{"rollouts": 0, "acc_mean": 0.1}, {"rollouts": 32, "acc_mean": 0.9},
                               {"rollouts": 64, "acc_mean": 0.3}]}]}
    assert runner.seed_lines(results)[3:] == ["| method | seed | 0 rollouts | 32 rollouts | 64 rollouts |",
                                              "|---|---|---|---|---|",
                                              "| sdpo | 0 | 0.100 | 0.900 | 0.300 |",  # sorted by seed
                                              "| sdpo | 1 | 0.200 |  | 0.500 |"]


def test_no_second_table_when_accuracy_is_the_solve_rate(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    (tmp_path / "toy").mkdir()
    points = [{"rollouts": 0, "acc_mean": 0.1, "elapsed_s": 0.0, "task_mean": 0.1},
              {"rollouts": 64, "acc_mean": 0.2, "elapsed_s": 60.0, "task_mean": 0.2}]
    (tmp_path / "toy" / "sdpo-seed0.json").write_text(json.dumps({"method": "sdpo", "seed": 0, "eval_k": 2, "points": points}))
    lines = runner.summarize_task("toy")
    assert "Held-out problems solved (every test case passed):" not in lines
    assert lines[2:5] == ["| method | seeds | 0 rollouts | 64 rollouts | train time per run |", "|---|---|---|---|---|",
                          "| sdpo | 1 | 0.100 ± 0.000 | 0.200 ± 0.000 | 1.0 min |"]


def _two_point_results(tmp_path, finals):
    """One seed per method: accuracy 0.1 before training and ``finals[method]`` after 64 rollouts."""
    (tmp_path / "toy").mkdir()
    for method, final in finals.items():
        points = [{"rollouts": 0, "acc_mean": 0.1, "elapsed_s": 0.0}, {"rollouts": 64, "acc_mean": final, "elapsed_s": 60.0}]
        (tmp_path / "toy" / f"{method}-seed0.json").write_text(json.dumps(
            {"method": method, "seed": 0, "eval_k": 2, "points": points}))


@pytest.mark.parametrize("grpo_final,resd_final,verdict_line,improved", [
    (0.4, 0.2, "- GRPO's final held-out accuracy: 0.400; RESD's mean never reaches it within the budget "
               "(target: at most 16): not met.", True),
    # GRPO never moved off the base model: every method "reaches" its final at 0 rollouts
    (0.1, 0.05, "- GRPO's final held-out accuracy: 0.100; RESD's mean first reaches it at 0 rollouts (target: at most 16): "
                "met (trivially: GRPO ended at or below the base model's 0.100).", False),
])
def test_verdict_lines(runner, tmp_path, monkeypatch, grpo_final, resd_final, verdict_line, improved):
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    _two_point_results(tmp_path, {"grpo": grpo_final, "sdpo": 0.3, "resd": resd_final})
    lines = runner.summarize_task("toy")
    assert verdict_line in lines
    assert f"- Final accuracy RESD {resd_final:.3f} vs SDPO 0.300: RESD not higher." in lines
    verdict = json.loads((tmp_path / "toy" / "summary.json").read_text())["verdict"]
    assert verdict["resd_beats_sdpo"] is False and verdict["grpo_improved"] is improved
    assert verdict["resd_rollouts_to_grpo_final"] == (None if improved else 0)


def test_per_problem_samples_are_kept_attached_and_compared_in_pairs(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    # a finished run's files: the evaluation rows of steps 0 and 2 (samples written out of order)
    run_dir = tmp_path / "runs" / "sdpo-seed0"
    (run_dir / "eval").mkdir(parents=True)
    metrics = [{"step": 0, "progress/rollouts": 0, "progress/elapsed_s": 0.0, "val/acc/mean@2": 0.25},
               {"step": 1, "progress/rollouts": 4, "reward/mean": 0.0},
               {"step": 2, "progress/rollouts": 8, "progress/elapsed_s": 50.0, "val/acc/mean@2": 0.5}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    evals = {0: [("p", 1, 0.5), ("p", 0, 0.0), ("q", 0, 0.5), ("q", 1, 0.0)],
             2: [("p", 0, 1.0), ("p", 1, 0.5), ("q", 0, 0.5), ("q", 1, 0.0)]}
    for step, rows in evals.items():
        (run_dir / "eval" / f"step-{step:06d}_samples.jsonl").write_text(
            "".join(json.dumps({"example_id": p, "sample": i, "acc": a}) + "\n" for p, i, a in rows))
    points = runner.extract(run_dir, 2)["points"]
    assert [p["samples"] for p in points] == [{"p": [0.0, 0.5], "q": [0.5, 0.0]}, {"p": [1.0, 0.5], "q": [0.5, 0.0]}]
    # a result written without samples gets them from its run directory; a run sharing its rollout-0
    # point gets that point's samples from the run that measured it
    task_dir = tmp_path / "results" / "toy"
    task_dir.mkdir(parents=True)
    bare = [{k: v for k, v in p.items() if k != "samples"} for p in points]
    (task_dir / "sdpo-seed0.json").write_text(json.dumps({"method": "sdpo", "seed": 0, "eval_k": 2, "points": bare}))
    runner.attach_samples("toy", run_dir)
    unchanged = {"p": [0.0, 0.5], "q": [0.5, 0.0]}
    resd = [{**bare[0], "shared": True}, {"rollouts": 8, "acc_mean": 0.25, "elapsed_s": 90.0, "samples": unchanged}]
    (task_dir / "resd-seed0.json").write_text(json.dumps({"method": "resd", "seed": 0, "eval_k": 2, "points": resd}))
    grpo = [{**bare[0], "shared": True}, {**bare[1], "samples": None}]  # a run without samples: left out
    (task_dir / "grpo-seed0.json").write_text(json.dumps({"method": "grpo", "seed": 0, "eval_k": 2, "points": grpo}))
    runner.attach_samples("toy", tmp_path / "runs" / "resd-seed0")  # no run directory needed: only the shared point
    assert json.loads((task_dir / "resd-seed0.json").read_text())["points"][0]["samples"] == unchanged
    rows = {r["comparison"]: r for r in runner.paired_comparisons(runner.load_results(task_dir))}
    assert set(rows) == {"sdpo: 8 vs 0 rollouts", "resd: 8 vs 0 rollouts", "resd - sdpo at 8 rollouts"}
    # sdpo: problem p rose from 0.25 to 0.75, q stayed: +0.25 on average; resd did not move
    assert rows["sdpo: 8 vs 0 rollouts"]["difference"] == pytest.approx(0.25)
    assert rows["sdpo: 8 vs 0 rollouts"]["problems"] == 2 and rows["sdpo: 8 vs 0 rollouts"]["seeds"] == 1
    assert (rows["resd: 8 vs 0 rollouts"]["low"], rows["resd: 8 vs 0 rollouts"]["high"]) == (0.0, 0.0)
    assert rows["resd - sdpo at 8 rollouts"]["difference"] == pytest.approx(-0.25)
    lines = runner.summarize_task("toy")
    assert "| resd - sdpo at 8 rollouts | 1 | 2 | -0.250 | [-0.500, +0.000] |" in lines


def test_manufactoria_answers_are_sorted_into_kinds_and_tabled(runner, tmp_path, monkeypatch):
    from resd.envs.manufactoria.kinds import EXAMPLE_CODE, REJECT_ALL, program_acc

    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    config, _ = runner.run_config("manufactoria", "sdpo", None)
    tests = runner.held_out_tests(config)
    assert len(tests) == config["data"]["val_limit"] == 12
    first, second = list(tests)[:2]
    example = f"```manufactoria\n{EXAMPLE_CODE}\n```"
    run_dir = tmp_path / "runs" / "sdpo-seed0"
    (run_dir / "eval").mkdir(parents=True)
    metrics = [{"step": 0, "progress/rollouts": 0, "progress/elapsed_s": 0.0, "val/acc/mean@2": 0.1},
               {"step": 2, "progress/rollouts": 8, "progress/elapsed_s": 50.0, "val/acc/mean@2": 0.4}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    evals = {0: [(first, "no code at all"), (second, "```manufactoria\nSTART start:\n```")],
             2: [(first, example), (second, example)]}
    for step, rows in evals.items():
        (run_dir / "eval" / f"step-{step:06d}_samples.jsonl").write_text("".join(
            json.dumps({"example_id": p, "sample": 0, "acc": 0.0, "response": r}) + "\n" for p, r in rows))
    points = runner.extract(run_dir, 2, config)["points"]
    assert [p["kinds"]["no program"] for p in points] == [2, 0]
    assert [p["kinds"]["prompt example"] for p in points] == [0, 2]
    assert runner.extract(run_dir, 2)["points"][0].get("kinds") is None  # no config: no kinds
    task_dir = tmp_path / "results" / "manufactoria"
    task_dir.mkdir(parents=True)
    (task_dir / "sdpo-seed0.json").write_text(json.dumps(
        {"method": "sdpo", "seed": 0, "eval_k": 2, "config": config, "points": points}))
    lines = runner.summarize_task("manufactoria")
    assert "| sdpo | 0 | 1 | 1.00 | 0.00 | 0.00 | 0.00 | 0.00 |" in lines
    assert "| sdpo | 8 | 1 | 0.00 | 1.00 | 0.00 | 0.00 | 0.00 |" in lines
    # and per run, as counts next to the run's accuracy
    assert "| sdpo | 0 | 0 | 0.100 | 2 | 0 | 0 | 0 | 0 |" in lines
    assert "| sdpo | 0 | 8 | 0.400 | 0 | 2 | 0 | 0 | 0 |" in lines
    example_acc = sum(program_acc(EXAMPLE_CODE, t) for t in tests.values()) / 12
    reject_acc = sum(program_acc(REJECT_ALL, t) for t in tests.values()) / 12
    assert 0 < example_acc < 1 and 0 < reject_acc < 1
    expected = pytest.approx({"example": example_acc, "reject": reject_acc})
    assert runner.trivial_accs(runner.load_results(task_dir)) == expected
    # a result kept without its config (older runners) does not hide another run's config
    assert runner.trivial_accs({"grpo": [{"seed": 0, "points": []}], "sdpo": [{"seed": 0, "config": config}]}) == expected
    assert any(f"scores `acc` {example_acc:.3f} and a factory that rejects every tape {reject_acc:.3f}" in line
               for line in lines)
