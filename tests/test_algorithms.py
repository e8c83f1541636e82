"""The algorithm layer: registration of a new algorithm, and a trainer that never looks at the name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import resd.trainer
from resd.algorithms import ALGORITHMS, Algorithm, algorithm_class, register_algorithm
from resd.config import ConfigError
from resd.trainer import Trainer


@register_algorithm("test-reward-weighted")
class RewardWeightedDistillation(Algorithm):
    """A toy algorithm written outside the trainer: distil every sample, weighting it by its score + 1,
    towards a teacher that sees the feedback."""

    def prepare(self, samples, step):
        for s in samples:
            s.teacher_messages = [*s.prompt_messages, {"role": "user", "content": f"Hint: {s.feedback.feedback}"}]
            s.sd_mask = True
            s.seq_weight = s.feedback.score + 1.0
        self.calls = getattr(self, "calls", 0) + 1
        return {"custom/prepared": float(len(samples))}

    def state_dict(self):
        return {"calls": getattr(self, "calls", 0)}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_a_registered_algorithm_trains_without_touching_the_trainer(tiny_config, tmp_path):
    cfg = tiny_config("algorithm=test-reward-weighted", "train.steps=2", f"logging.run_dir={tmp_path}")
    trainer = Trainer(cfg)
    assert isinstance(trainer.algorithm, RewardWeightedDistillation) and trainer.teacher is not None
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    per_step = cfg.train.batch_size * cfg.rollout.n
    assert [r["custom/prepared"] for r in lines] == [per_step, per_step] and all(r["loss/distill"] > 0 for r in lines)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    resumed = Trainer(cfg)
    assert resumed.resume() and resumed.algorithm.calls == 2  # its state went into the checkpoint


def test_unknown_algorithm_is_a_config_error_listing_the_known_ones(tiny_config):
    with pytest.raises(ConfigError) as info:
        tiny_config("algorithm=nosuch")
    assert "nosuch" in str(info.value) and "sdpo" in str(info.value)
    with pytest.raises(ValueError, match="known"):
        algorithm_class("nosuch")


def test_registration_refuses_a_clash_and_non_algorithms():
    with pytest.raises(ValueError, match="already registered"):
        register_algorithm("sdpo")(RewardWeightedDistillation)
    with pytest.raises(TypeError):
        register_algorithm("not-a-class")(object)
    assert set(ALGORITHMS) >= {"grpo", "sdpo", "sdpo+ss", "resd"}


def test_the_trainer_package_never_branches_on_an_algorithm_name():
    """Nothing in resd/trainer compares with an algorithm's name or reads ``config.algorithm``."""
    names = set(ALGORITHMS)
    for path in Path(resd.trainer.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Compare):
                constants = [n.value for n in [node.left, *node.comparators] if isinstance(n, ast.Constant)]
                assert not names & {c for c in constants if isinstance(c, str)}, f"{where} compares with a name"
                for n in [node.left, *node.comparators]:  # "x in ('grpo', ...)"
                    if isinstance(n, (ast.Tuple, ast.List, ast.Set)):
                        values = {e.value for e in n.elts if isinstance(e, ast.Constant)}
                        assert not names & values, f"{where} compares with a name"
            if isinstance(node, ast.Attribute) and node.attr == "algorithm":
                assert not ast.unparse(node.value).endswith(("config", "cfg")), f"{where} reads config.algorithm"
