"""Discoverable configuration and clear errors (issue 23, items 5 and 10): ``resd config [SECTION]``,
did-you-mean for unknown keys, ``--key=value`` overrides, TRL's config names, booleans refused for
numbers, non-UTF-8 config files, empty datasets, missing local models and an unreachable hub."""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path

import pytest
import yaml

from resd.cli import main
from resd.config import Config, ConfigError, TrainConfig, config_keys, load_config
from resd.config_aliases import TRL_NAMES

DOC = Path(__file__).resolve().parents[1] / "docs" / "from-trl.md"
#: sections whose descriptions other parts of the project own
ELSEWHERE = ("eval.", "logging.")


def words(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------- resd config
def test_config_train_lists_every_key_with_type_default_and_description(capsys):
    assert main(["config", "train"]) == 0
    out = capsys.readouterr().out
    flat = words(out)
    for name, field in TrainConfig.model_fields.items():
        assert re.search(rf"^train\.{name}: ", out, re.M), name
        assert field.description and words(field.description) in flat, name
    assert "train.lr: float (> 0) = 1e-05" in out
    assert "train.steps: int | null (>= 0) = 10" in out
    assert "train.lr_schedule: constant | cosine = constant" in out
    assert "model." not in out and "rollout." not in out


def test_config_lists_subsections_single_keys_and_everything(capsys):
    assert main(["config", "model.lora"]) == 0
    out = capsys.readouterr().out
    keys = re.findall(r"^(\S+): ", out, re.M)
    assert keys == ["model.lora.enabled", "model.lora.r", "model.lora.alpha", "model.lora.dropout",
                    "model.lora.target_modules"]
    assert main(["config", "train.lr"]) == 0
    assert re.findall(r"^(\S+): ", capsys.readouterr().out, re.M) == ["train.lr"]
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    listed = set(re.findall(r"^(\S+): ", out, re.M))
    assert listed == {k.path for k in config_keys() if not k.section}
    assert "[model.lora]" in out and "[reprompt]" in out and "[resd.reflector]" in out


def test_every_key_has_a_description():
    missing = [k.path for k in config_keys() if not k.description and not k.path.startswith(ELSEWHERE)]
    assert not missing, f"keys without a description: {missing}"


def test_config_unknown_section_suggests_the_closest(capsys):
    assert main(["config", "trian"]) == 2
    err = capsys.readouterr().err
    assert "'trian'" in err and "did you mean train?" in err
    assert main(["config", "model.lroa"]) == 2
    assert "did you mean model.lora?" in capsys.readouterr().err


def test_config_with_a_preset_shows_its_values_and_the_default(capsys):
    assert main(["config", "--preset", "smoke", "train"]) == 0
    out = capsys.readouterr().out
    assert "train.steps: int | null (>= 0) = 2  (default: 10)" in out
    assert "train.lr: float (> 0) = 0.001  (default: 1e-05)" in out
    assert "train.weight_decay: float (>= 0) = 0.01\n" in out  # unchanged: no default shown


def test_train_help_says_where_the_keys_are(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = words(capsys.readouterr().out)
    assert "resd config [SECTION]" in out and "--print-config" in out and "--train.lr=1e-6" in out


# ---------------------------------------------------------------------------------------------- did you mean
@pytest.mark.parametrize("override, key, suggestion", [
    ("train.stepz=3", "train.stepz", "train.steps"),
    ("trian.steps=3", "trian", "train.steps"),
    ("rollout.lr=1e-6", "rollout.lr", "train.lr"),
    ("train.learning_rate=1e-6", "train.learning_rate", "train.lr"),
    ("model.lora.rank=8", "model.lora.rank", "model.lora.r"),
])
def test_unknown_override_suggests_the_known_key(override, key, suggestion, capsys):
    assert main(["train", "--preset", "smoke", override, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"{key}: unknown key; did you mean {suggestion}" in err


def test_unknown_key_in_a_yaml_file_suggests_the_known_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  steps: 3\nrollout:\n  temprature: 0.5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config("smoke", path=path)
    assert "trian: unknown key; did you mean train.steps?" in str(info.value)
    assert "rollout.temprature: unknown key; did you mean rollout.temperature?" in str(info.value)


def test_nothing_close_gives_no_suggestion():
    with pytest.raises(ConfigError) as info:
        load_config("smoke", overrides=["zzzz.qqqq=1"])
    assert "zzzz: unknown key" in str(info.value) and "did you mean" not in str(info.value)


# ---------------------------------------------------------------------------------------------- --key=value
def printed_config(capsys) -> dict:
    return yaml.safe_load(capsys.readouterr().out)


def test_dash_dash_overrides_reach_the_config(capsys):
    assert main(["train", "--preset", "smoke", "--train.lr=1e-6", "--rollout.n", "3", "loss.alpha=1.0",
                 "--seed=7", "--print-config"]) == 0
    cfg = printed_config(capsys)
    assert cfg["train"]["lr"] == 1e-6 and cfg["rollout"]["n"] == 3 and cfg["loss"]["alpha"] == 1.0 and cfg["seed"] == 7


def test_overrides_keep_their_order_across_both_forms(capsys):
    assert main(["train", "train.lr=1e-3", "--preset", "smoke", "--train.lr=1e-6", "--print-config"]) == 0
    assert printed_config(capsys)["train"]["lr"] == 1e-6
    assert main(["train", "--train.lr=1e-6", "--preset=smoke", "train.lr=1e-4", "--print-config"]) == 0
    assert printed_config(capsys)["train"]["lr"] == 1e-4


@pytest.mark.parametrize("command", [["eval"], ["solve", "--example", "0"]])
def test_eval_and_solve_take_dash_dash_overrides(command, monkeypatch):
    import resd.config

    seen = {}

    def capture(preset=None, path=None, overrides=None):
        seen["overrides"] = list(overrides or [])
        raise ConfigError("stop here")

    monkeypatch.setattr(resd.config, "load_config", capture)
    assert main([*command, "--preset", "smoke", "--eval.k=2", "--rollout.n", "3", "train.lr=1e-6"]) == 2
    assert seen["overrides"][:3] == ["eval.k=2", "rollout.n=3", "train.lr=1e-6"]


def test_unknown_options_still_fail_clearly(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--presett", "smoke"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--presett" in err and "did you mean --preset?" in err
    with pytest.raises(SystemExit):
        main(["train", "--preset", "smoke", "--train.lr"])  # no value
    assert "--train.lr=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--data_path", "x.jsonl"])  # the option is --data-path
    assert "did you mean --data-path?" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- TRL names
TRL_YAML = """\
learning_rate: 1.0e-6
num_generations: 2
report_to: wandb
output_dir: {run_dir}
max_steps: 3
bf16: false
epsilon_high: 0.3
distillation_weight: 0.75
beta: 0.0
"""


def test_a_trl_yaml_loads_with_a_warning_per_name(tmp_path, caplog, capsys):
    path = tmp_path / "trl.yaml"
    path.write_text(TRL_YAML.format(run_dir=tmp_path / "out"), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="resd.config"):
        assert main(["train", "--preset", "smoke", "--config", str(path), "--print-config"]) == 0
    cfg = printed_config(capsys)
    assert cfg["train"]["lr"] == 1e-6 and cfg["rollout"]["n"] == 2 and cfg["train"]["steps"] == 3
    assert cfg["logging"]["report_to"] == ["wandb"] and cfg["logging"]["run_dir"] == str(tmp_path / "out")
    assert cfg["model"]["precision"] == "fp32" and cfg["loss"]["clip_high"] == 0.3 and cfg["loss"]["pg_weight"] == 0.25
    log = caplog.text
    for trl, resd in [("learning_rate", "train.lr"), ("num_generations", "rollout.n"),
                      ("report_to", "logging.report_to"), ("output_dir", "logging.run_dir"),
                      ("max_steps", "train.steps"), ("bf16", "model.precision")]:
        assert f"{path}: {trl} is TRL's name; resd calls it {resd}" in log
    assert "beta=0.0 is TRL's name and resd has no such key" in log


def test_trl_names_work_as_overrides_too(caplog):
    with caplog.at_level(logging.WARNING, logger="resd.config"):
        cfg = load_config("smoke", overrides=["learning_rate=2e-6", "adam_beta2=0.95", "loss_type=dr_grpo",
                                              "model=Qwen/Qwen2.5-0.5B-Instruct"])
    assert cfg.train.lr == 2e-6 and cfg.train.betas == (0.9, 0.95)
    assert cfg.loss.pg_aggregation == "seq-mean-token-sum-norm" and cfg.model.name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert "override: learning_rate is TRL's name; resd calls it train.lr" in caplog.text


@pytest.mark.parametrize("entry, message", [
    ("num_train_epochs: 2", r"num_train_epochs=2 is a TRL setting that resd cannot express: .*train\.steps"),
    ("per_device_train_batch_size: 8", r"per_device_train_batch_size=8 .*train\.batch_size counts prompts"),
    ("beta: 0.04", r"beta=0.04 .*no KL term"),
    ("lr_scheduler_type: linear", r"lr_scheduler_type='linear' .*'constant', 'constant_with_warmup', 'cosine'"),
    ("report_to: all", r"report_to='all' .*name the trackers"),
    ("max_steps: -1", r"max_steps=-1 .*num_train_epochs"),
    ("learning_rate: 1.0e-6\ntrain: {lr: 1.0e-5}",
     r"learning_rate \(TRL's name for train\.lr\) and train\.lr are both"),
    ("bf16: true\ndtype: float32", r"bf16 and dtype \(TRL's names\) both set model\.precision"),
])
def test_trl_names_without_an_equivalent_are_refused(entry, message, tmp_path):
    path = tmp_path / "trl.yaml"
    path.write_text(entry + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", path=path)


def test_the_docs_table_lists_every_trl_name():
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Config names"):]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])}
    assert set(TRL_NAMES) <= documented, sorted(set(TRL_NAMES) - documented)
    assert documented - set(TRL_NAMES) <= {"model"}, sorted(documented - set(TRL_NAMES))
    for name in TRL_NAMES:  # never a resd key's own name
        assert name not in Config.model_fields


# ---------------------------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("override, key", [
    ("train.steps=true", "train.steps"),
    ("loss.alpha=false", "loss.alpha"),
    ("rollout.n=true", "rollout.n"),
    ("train.grad_clip=true", "train.grad_clip"),
    ("train.betas=[true, 0.9]", "train.betas"),
    ("model.lora.r=yes", "model.lora.r"),  # YAML 1.1: yes is a boolean
    ("reprompt.success_reward_threshold=true", "reprompt.success_reward_threshold"),
    ("resd.reflector.max_new_tokens=true", "resd.reflector.max_new_tokens"),
])
def test_a_boolean_is_refused_for_a_number(override, key):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: expected a number, got a boolean"):
        load_config("smoke", overrides=[override])


def test_booleans_and_numbers_still_load_where_they_belong(tmp_path):
    cfg = load_config("smoke", overrides=["model.lora.enabled=true", "train.steps=3", "train.grad_clip=null",
                                          "loss.alpha=1", "train.betas=[0.8, 0.9]"])
    assert cfg.model.lora.enabled is True and cfg.train.steps == 3 and cfg.train.grad_clip is None
    assert cfg.loss.alpha == 1.0 and cfg.train.betas == (0.8, 0.9)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"train\.steps: expected a number, got a boolean"):
        load_config("smoke", path=path)
    with pytest.raises(ValueError, match="boolean"):  # assignment is checked too
        cfg.train.steps = True


def test_a_non_utf8_config_file_names_the_file_and_byte(tmp_path, capsys):
    path = tmp_path / "latin.yaml"
    data = b"name: ok\ntrain:\n  lr: 1.0e-5\n# caf\xe9\n"
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(ConfigError, match=rf"latin\.yaml: not UTF-8 text: byte offset {offset} \(line 4\) is 0xe9"):
        load_config(path=path)
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    assert f"byte offset {offset}" in capsys.readouterr().err


def test_a_config_path_that_is_a_directory_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(path=tmp_path)


def test_an_empty_dataset_names_the_path(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    assert main(["eval", "--preset", "smoke", "--data-path", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "split is empty" in err


def test_a_missing_local_model_names_model_name(tmp_path, capsys):
    args = ["train", "--preset", "smoke", "model.name=./no-such-model-dir", f"logging.run_dir={tmp_path / 'run'}",
            "logging.progress=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'./no-such-model-dir' (model.name): no such directory" in err and "Repo id" not in err
    from resd.models import load_tokenizer

    with pytest.raises(ConfigError, match=r"'~/no/such/tokenizer' \(model\.tokenizer, or model\.name"):
        load_tokenizer("~/no/such/tokenizer")


def closed_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def online(monkeypatch):
    """Hub access allowed (not offline), whatever the environment running the tests says."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_an_uncached_hub_id_fails_at_once_when_the_hub_is_unreachable(online, monkeypatch, capsys, tmp_path):
    from resd.models import load_model, load_tokenizer

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    name = "resd-tests/no-such-model-7c1e"
    for load in (load_tokenizer, load_model):
        start = time.monotonic()
        with pytest.raises(ConfigError) as info:
            load(name)
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert name in message and "HF_HUB_OFFLINE=1" in message and "local model directory" in message
        assert "hf download" in message
    start = time.monotonic()
    assert main(["train", "--preset", "smoke", f"model.name={name}", f"logging.run_dir={tmp_path / 'run'}",
                 "logging.progress=false"]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert f"'{name}' (model.name)" in err and "does not answer" in err


def test_an_uncached_hub_id_fails_at_once_offline(online, monkeypatch):
    from resd.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:9")  # never probed: offline
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"not in the Hugging Face cache while HF_HUB_OFFLINE is set"):
        load_tokenizer("resd-tests/no-such-model-7c1e")
    assert time.monotonic() - start < 5


def test_a_config_key_is_not_taken_for_an_abbreviated_option():
    """``solve --seed=3`` is the config key ``seed`` (as ``--key=value`` promises), not ``--seeds=3``."""
    from resd.cli import _gather_overrides, build_parser

    argv = _gather_overrides(build_parser(), ["solve", "--example", "1", "--seed=3"])
    assert argv[-2:] == ["--", "seed=3"] and "--seeds=3" not in argv and "--seed=3" not in argv
    # a real abbreviation of an option that is no config key still works
    assert _gather_overrides(build_parser(), ["solve", "--exam", "1"]) == ["solve", "--exam", "1"]
