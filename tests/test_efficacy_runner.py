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


def test_task_specific_settings_and_the_compact_arm(runner):
    arith, _ = runner.run_config("arithmetic", "resd", None)
    manuf, _ = runner.run_config("manufactoria", "resd", None)
    assert arith["resd"]["teacher_template"] == "direct" and "teacher_template" not in manuf["resd"]
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
    table = [line for line in lines if line.startswith("| resd ")]
    assert table == ["| resd | 2 | 0.100 ± 0.000 | 0.350 ± 0.050 | 0.400 ± 0.050 | 2.0 min |",  # accuracy
                     "| resd | 2 | 0.000 ± 0.000 | 0.000 ± 0.000 | 0.050 ± 0.050 |"]  # problems solved
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


def test_verdict_when_resd_never_reaches_grpo(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    (tmp_path / "toy").mkdir()
    for method, final in {"grpo": 0.4, "sdpo": 0.3, "resd": 0.2}.items():
        points = [{"rollouts": 0, "acc_mean": 0.1, "elapsed_s": 0.0}, {"rollouts": 64, "acc_mean": final, "elapsed_s": 60.0}]
        (tmp_path / "toy" / f"{method}-seed0.json").write_text(json.dumps(
            {"method": method, "seed": 0, "eval_k": 2, "points": points}))
    lines = runner.summarize_task("toy")
    assert "- GRPO's final held-out accuracy: 0.400; RESD's mean never reaches it within the budget " \
           "(target: at most 16): not met." in lines
    assert "- Final accuracy RESD 0.200 vs SDPO 0.300: RESD not higher." in lines
    verdict = json.loads((tmp_path / "toy" / "summary.json").read_text())["verdict"]
    assert verdict["resd_rollouts_to_grpo_final"] is None and verdict["resd_beats_sdpo"] is False
