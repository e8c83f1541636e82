"""Configuration: presets, YAML, key=value overrides and clear errors."""

from __future__ import annotations

import pytest

from resd.cli import main
from resd.config import ConfigError, available_presets, load_config, parse_override


def test_every_preset_loads():
    names = available_presets()
    assert {"smoke", "demo", "sdpo", "grpo", "trl-sdpo"} <= set(names)
    for name in names:
        load_config(name)


def test_sdpo_preset_pins_the_effective_reference_defaults():
    cfg = load_config("sdpo")
    assert (cfg.loss.alpha, cfg.loss.topk, cfg.loss.add_tail, cfg.loss.is_clip) == (0.5, 100, True, 2.0)
    assert (cfg.teacher.kind, cfg.teacher.update_rate) == ("ema", 0.05)
    r = cfg.reprompt
    assert r.success_reward_threshold == 0.5 and r.dont_reprompt_on_self_success and r.remove_thinking_from_demonstration
    assert r.include_environment_feedback and r.environment_feedback_only_without_solution
    assert r.max_reprompt_len == 10240 and r.reprompt_truncation == "right"
    assert (cfg.train.batch_size, cfg.rollout.n, cfg.train.lr) == (32, 8, 1e-5)
    trl = load_config("trl-sdpo")
    assert not trl.loss.full_logit and trl.loss.alpha == 1.0 and trl.reprompt.reprompt_truncation == "left"
    assert trl.reprompt.success_reward_threshold == 1.0 and not trl.reprompt.include_environment_feedback


def test_overrides_are_typed():
    cfg = load_config("smoke", overrides=["train.lr=1e-6", "loss.topk=null", "train.betas=[0.8, 0.9]", "name=x"])
    assert cfg.train.lr == 1e-6 and cfg.loss.topk is None and cfg.train.betas == (0.8, 0.9) and cfg.name == "x"
    assert parse_override("a.b=3") == {"a": {"b": 3}}


def test_unknown_key_and_bad_value_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key"):
        load_config("smoke", overrides=["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"loss\.alpha"):
        load_config("smoke", overrides=["loss.alpha=2"])
    with pytest.raises(ConfigError, match="sampled-token"):
        load_config("smoke", overrides=["loss.full_logit=false", "loss.alpha=0.5"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nope")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("smoke", overrides=["justakey"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path=bad)


def test_cli_reports_config_errors_without_a_traceback(capsys):
    assert main(["train", "--preset", "smoke", "train.nope=1"]) == 2
    assert "train.nope: unknown key" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--print-config"]) == 0
    assert "algorithm: sdpo" in capsys.readouterr().out


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "presets" in out


def test_grpo_config_reports_its_pure_policy_gradient():
    from resd.config import load_config

    assert load_config("smoke", overrides=["algorithm=grpo"]).loss.pg_weight == 1.0


@pytest.mark.parametrize("overrides, message", [
    (["loss.teacher_min_ratio=1.5"], r"loss\.teacher_min_ratio.*\(0, 1\]"),
    (["loss.teacher_min_ratio=0"], r"loss\.teacher_min_ratio"),
    (["loss.teacher_min_ratio=-0.2"], r"loss\.teacher_min_ratio"),
    (["loss.teacher_min_ratio=0.5", "loss.teacher_max_ratio=0.4"], r"loss\.teacher_min_ratio.*loss\.teacher_max_ratio"),
    (["loss.teacher_max_ratio=0"], r"loss\.teacher_max_ratio"),
])
def test_teacher_ratio_bounds_are_checked_and_name_the_key(overrides, message):
    """Issue 21, bug 8: the teacher floor ratio lies in (0, 1] and is not above the ceiling."""
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)
    assert load_config(overrides=["loss.teacher_min_ratio=1", "loss.teacher_max_ratio=1"]).loss.teacher_min_ratio == 1.0
    assert load_config(overrides=["loss.teacher_min_ratio=0.2"]).loss.teacher_max_ratio is None


def test_an_existing_run_directory_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    from resd.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    args = ["train", "--preset", "smoke", f"logging.run_dir={run_dir}", "train.steps=1", "logging.progress=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(run_dir) in err and "--resume" in err and "--overwrite" in err
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing was touched
    assert main([*args, "--overwrite"]) == 0
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert len(steps) == 1 and '"step": 1' in steps[0] and "reward/mean" in steps[0]
