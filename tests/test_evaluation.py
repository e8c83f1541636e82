"""Evaluation metrics against hand-computed cases, and validation inside training."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from resd.evaluation import best_at_k, best_at_k_bootstrap, mean_at_k, mean_pass_at_k, paired_difference, pass_at_k


def test_mean_and_best_by_hand():
    values = [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0.5, 0]]
    assert mean_at_k(values) == pytest.approx((0.25 + 0 + 0.625) / 3)
    assert best_at_k(values) == pytest.approx((1 + 0 + 1) / 3)
    assert best_at_k([[0.3]]) == 0.3
    assert best_at_k([]) == 0.0 and mean_at_k([]) == 0.0


def test_bootstrap_best_is_below_the_literal_max_and_converges():
    values = [[1, 0, 0, 0]]
    boot = best_at_k_bootstrap(values, k=4, resamples=20000, seed=0)
    exact_expectation = 1 - (3 / 4) ** 4  # P(at least one draw picks the success)
    assert boot == pytest.approx(exact_expectation, abs=0.01)
    assert boot < best_at_k(values)
    assert best_at_k_bootstrap([[1, 1]], k=2) == 1.0 and best_at_k_bootstrap([[0, 0]], k=2) == 0.0
    assert best_at_k_bootstrap(values, 4, seed=42) == best_at_k_bootstrap(values, 4, seed=42)


def test_paired_difference_by_hand_and_against_the_normal_approximation():
    a = {"p": [0.0, 1.0], "q": [0.5, 0.5], "only_a": [1.0]}
    b = {"p": [1.0, 1.0], "q": [0.0, 0.5], "only_b": [1.0]}
    result = paired_difference(a, b)
    assert result.prompts == 2 and result.mean == pytest.approx((0.5 - 0.25) / 2)
    assert -0.25 <= result.low < result.mean < result.high <= 0.5  # resampled means lie between the extremes
    # a shift that is the same on every prompt has no spread; an unchanged model gives exactly 0
    shifted = paired_difference({"p": [0.2], "q": [0.4]}, {"p": [0.3], "q": [0.5]})
    assert (shifted.low, shifted.high) == pytest.approx((0.1, 0.1)) and shifted.mean == pytest.approx(0.1)
    assert tuple(paired_difference(a, a))[:3] == (0.0, 0.0, 0.0)
    # many prompts: the percentile interval approaches mean +- 1.96 standard errors
    diffs = np.random.default_rng(1).normal(0.2, 1.0, size=400)
    many = paired_difference({str(i): [0.0] for i in range(400)}, {str(i): [d] for i, d in enumerate(diffs)})
    half_width = 1.96 * diffs.std() / np.sqrt(len(diffs))
    assert many.mean == pytest.approx(diffs.mean())
    assert (many.high - many.low) / 2 == pytest.approx(half_width, rel=0.1)
    assert (many.low + many.high) / 2 == pytest.approx(diffs.mean(), abs=0.2 * half_width)
    with pytest.raises(ValueError, match="no prompt"):
        paired_difference({"p": [1.0]}, {"q": [1.0]})
    with pytest.raises(ValueError, match="level"):
        paired_difference(a, b, level=1.0)


def _pass_at_k_by_enumeration(n, c, k):
    items = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 3), (6, 5, 2), (8, 3, 8), (10, 1, 4), (4, 4, 1)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k))
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_edge_cases():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    assert mean_pass_at_k([[True, False], [False, False]], 1) == pytest.approx(0.25)
    assert mean_pass_at_k([[True, False], [False, False]], 2) == pytest.approx(0.5)
    assert math.isclose(mean_pass_at_k([[True]], 2), 0.0)  # prompts with fewer than k samples are skipped


@pytest.mark.parametrize("name", ["arithmetic", "mcq", "manufactoria", "bouncingsim", "code"])
def test_task_is_the_whole_task_solved_and_test_case_the_fraction_in_every_env(name):
    """Issue 21, bug 3: a sample passing 3 of 4 checks counts 0 per task and 0.75 per test case, whether the
    reward is sparse or dense (Manufactoria with sparse=False scores 0.75 too). FiNER: tests/test_env_finer.py."""
    import resd.envs
    from resd.evaluation.evaluate import summarize

    try:
        env = resd.envs.load(name, **({"sparse": False} if name == "manufactoria" else {}))
    except Exception as e:  # an optional dependency of one environment
        pytest.skip(f"{name}: {e}")
    for score in (0.0, 0.75):
        summary = summarize(env, [[{"score": score, "acc": 0.75, "length": 1, "truncated": False}]], 1, 1.0)
        assert (summary["task/mean@1"], summary["test_case/mean@1"]) == (0.0, 0.75), (name, score)
    summary = summarize(env, [[{"score": 1.0, "acc": 1.0, "length": 1, "truncated": False}]], 1, 1.0)
    assert (summary["task/mean@1"], summary["test_case/mean@1"]) == (1.0, 1.0)


def test_validation_during_training_writes_files_and_keeps_the_best(tiny_config):
    from resd.trainer import build_trainer

    cfg = tiny_config("train.steps=2", "eval.every_steps=1", "eval.k=2", "data.val_limit=3", "logging.keep_last=1",
                      "eval.best_metric=score/mean")
    trainer = build_trainer(cfg)
    trainer.train()
    run = trainer.run_dir
    summary = json.loads((run / "eval" / "step-000001_summary.json").read_text())
    assert summary["prompts"] == 3 and summary["samples"] == 6
    assert {"task/mean@2", "task/best@2", "task/best@2_bootstrap", "pass@1", "pass@2", "test_case/mean@2"} <= set(summary)
    samples = [json.loads(x) for x in (run / "eval" / "step-000002_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {"feedback", "score", "response", "example_id"} <= set(samples[0])
    best = json.loads((run / "best.json").read_text())
    assert best["metric"] == "score/mean@2"
    assert (run / "checkpoints" / f"step-{best['step']:06d}").is_dir()  # protected from keep_last pruning
    val_lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val/' in x]
    assert len(val_lines) == 2


@pytest.mark.parametrize("common", [True, False])
def test_common_seeds_repeat_the_draw_of_an_unchanged_model(tiny_config, common):
    """With eval.common_seeds two evaluations of the same weights give the same samples; without, new draws."""
    from resd.trainer import build_trainer

    trainer = build_trainer(tiny_config("eval.k=2", "data.val_limit=3", f"eval.common_seeds={common}",
                                        "eval.save_best=false", "eval.temperature=1.0"))
    responses = []
    for step in (0, 3):
        trainer.step = step
        trainer.validate()
        rows = (trainer.run_dir / "eval" / f"step-{step:06d}_samples.jsonl").read_text().splitlines()
        responses.append([json.loads(x)["response"] for x in rows])
    assert (responses[0] == responses[1]) is common


def test_eval_cli_on_manufactoria_and_arithmetic_writes_the_expected_files(tmp_path, capsys):
    from resd.cli import main

    for env in ("manufactoria", "arithmetic"):
        out = tmp_path / env
        overrides = [f"data.env={env}", "data.env_kwargs={}", "rollout.max_new_tokens=8", "logging.progress=false"]
        assert main(["eval", "--preset", "smoke", "--split", "test", "--limit", "2", "--k", "2", "--out", str(out),
                     *overrides]) == 0
        summary = json.loads((out / f"{env}-test-k2_summary.json").read_text())
        samples = [json.loads(x) for x in (out / f"{env}-test-k2_samples.jsonl").read_text().splitlines()]
        assert summary["prompts"] == 2 and len(samples) == 4
        assert all(s["feedback"] for s in samples)  # random text fails, and every failure is explained
    assert "pass@2" in capsys.readouterr().out
