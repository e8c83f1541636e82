"""Test-time self-distillation and its baselines on a tiny model with a scripted environment."""

from __future__ import annotations

import json

from resd.cli import main
from resd.envs import register
from resd.envs.base import Environment, Feedback
from resd.solve import (
    SolveResult,
    attempts_messages,
    discovery_at_k,
    feedback_only_messages,
    fit_context,
)


@register("letter-test")
class LetterEnv(Environment):
    """Solved when the response contains the letter in the row; the feedback names it."""

    def load_split(self, split, path=None, limit=None):
        return [{"id": "p0", "letter": "e"}, {"id": "p1", "letter": "€"}]

    def prompt_messages(self, example):
        return [{"role": "user", "content": "Write something."}]

    def score(self, response, example, *, truncated=False):
        ok = example["letter"] in response
        return Feedback(float(ok), float(ok), "" if ok else f"Use the letter {example['letter']!r}.")


def test_discovery_at_k():
    runs = [SolveResult("x", 8, 3, 3, [0, 0, 1], 0.0), SolveResult("x", 8, 8, None, [0] * 8, 0.0),
            SolveResult("x", 8, 1, 1, [1], 0.0)]
    assert discovery_at_k(runs, [1, 2, 3, 8]) == {1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 8: 2 / 3}


def test_multiturn_templates_and_context_dropping(tokenizer):
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "Q"}]
    msgs = feedback_only_messages(prompt, ["f1", "f2"])
    assert msgs[0] == prompt[0]
    assert msgs[1]["content"] == (
        "Q\n\nThe following is feedback from your unsuccessful earlier attempts:\n\nf1\n\nf2\n\n"
        "Correctly solve the original question."
    )
    chat = attempts_messages(prompt, [("a1", "f1")])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    feedbacks = [f"feedback number {i} " * 20 for i in range(10)]
    full = fit_context(tokenizer, lambda f: feedback_only_messages(prompt, f), feedbacks, 10_000)
    cut = fit_context(tokenizer, lambda f: feedback_only_messages(prompt, f), feedbacks, 300)
    assert len(cut) <= 300 < len(full)
    text = tokenizer.decode(cut)
    assert "feedback number 9" in text and "feedback number 0 " not in text  # the oldest went first


def test_solve_cli_sdpo_and_baselines(tmp_path, capsys):
    common = ["--preset", "smoke", "--split", "train", "--example", "p0", "--budget", "24"]
    overrides = ["data.env=letter-test", "data.env_kwargs={}", "rollout.max_new_tokens=8", "train.batch_size=1",
                 "rollout.n=4", "rollout.batch_size=4"]
    assert main(["solve", *common, "--method", "sdpo", "--out", str(tmp_path / "sdpo"), *overrides]) == 0
    summary = json.loads((tmp_path / "sdpo" / "solve.json").read_text())
    run = summary["runs"][0]
    assert run["solved"] and run["first_success"] <= 24 and run["scores"][-1] == 1.0
    assert summary["discovery_at_k"]["24"] == 1.0
    for method in ("best-of-k", "multiturn-feedback", "multiturn-attempts"):
        assert main(["solve", *common, "--method", method, "--out", str(tmp_path / method), *overrides]) == 0
        runs = json.loads((tmp_path / method / "solve.json").read_text())["runs"]
        assert runs[0]["attempts"] <= 24 and len(runs[0]["scores"]) == runs[0]["attempts"]


def test_self_distillation_steps_happen_until_solved(tiny_config):
    from resd.solve import solve_with_self_distillation
    from resd.trainer import build_trainer

    env = LetterEnv()
    example = env.load_split("x")[1]  # "€" is never produced by the tiny model: unsolved, so it trains
    cfg = tiny_config("data.env=letter-test", "data.env_kwargs={}", "train.batch_size=1", "rollout.n=2",
                      "rollout.max_new_tokens=4")
    trainer = build_trainer(cfg, env=env, train_rows=[example])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = solve_with_self_distillation(trainer, example, budget=6)
    assert not result.solved and result.attempts == 6 and trainer.step == 2  # 3 rounds, the last not trained
    assert any((before[n] != p).any() for n, p in trainer.model.named_parameters())
