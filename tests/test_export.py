"""Issue 23, item 4: `resd export` (a run as a Hugging Face model directory, merged or a PEFT adapter) and
`model.init_from` (a new run starts from an old run's student)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from resd.cli import load_policy, main  # noqa: E402
from resd.config import ConfigError, load_config  # noqa: E402
from resd.models import load_tokenizer  # noqa: E402
from resd.trainer import build_trainer  # noqa: E402

IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [151644, 872, 198, 16, 10, 16, 28, 151645]])
LORA = ("model.lora.enabled=true", "model.lora.r=4", "train.rollout_is_threshold=null")


def _config(run_dir: Path, *overrides: str):
    return load_config("smoke", overrides=[f"logging.run_dir={run_dir}", "logging.progress=false", "train.steps=1",
                                           "train.lr=1e-2", "rollout.max_new_tokens=4", *overrides])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


class Run:
    """A trained run: its directory, config and the trainer's final logits on IDS."""

    def __init__(self, root: Path, *overrides: str) -> None:
        self.config = _config(root, *overrides)
        trainer = build_trainer(self.config)
        self.dir = trainer.train()
        self.logits = _logits(trainer.model)
        self.base_logits = _logits(load_policy(self.config, None)[0])
        assert not torch.allclose(self.logits, self.base_logits)  # training moved the weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"full": Run(root / "full"), "lora": Run(root / "lora", *LORA)}


def _export(run: Run, out: Path, *extra: str) -> int:
    return main(["export", str(run.dir), str(out), *extra])


def _assert_hf_model_dir(out: Path) -> None:
    from transformers import AutoTokenizer

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] is not None
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template
    messages = [{"role": "user", "content": "1+1?"}]
    original = load_tokenizer("embedded")  # the training tokenizer (smoke preset)
    assert tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == \
        original.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_export_loads_with_transformers_and_gives_the_trained_logits(runs, tmp_path, capsys, kind):
    from transformers import AutoModelForCausalLM

    run = runs[kind]
    out = tmp_path / "hf"
    assert _export(run, out) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "model.safetensors" in printed and "config.json" in printed
    _assert_hf_model_dir(out)
    assert not (out / "adapter_config.json").exists()  # a LoRA run is merged by default
    exported = _logits(AutoModelForCausalLM.from_pretrained(out))
    assert (exported - run.logits).abs().max() < 1e-5
    assert (exported - _logits(load_policy(run.config, run.dir)[0])).abs().max() < 1e-5


def test_adapter_export_loads_with_peft_over_a_written_tiny_base(runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = runs["lora"]
    out = tmp_path / "adapter"
    assert _export(run, out, "--adapter", "--step", "1") == 0
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert adapter_config["r"] == 4
    # the tiny random model exists nowhere else, so the export wrote it and points there
    assert Path(adapter_config["base_model_name_or_path"]) == (out / "base").resolve()
    _assert_hf_model_dir(out / "base")
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    assert (_logits(base) - run.base_logits).abs().max() < 1e-6
    peft_model = PeftModel.from_pretrained(base, out)
    assert (_logits(peft_model) - run.logits).abs().max() < 1e-5
    assert (out / "tokenizer.json").is_file()


def test_adapter_base_points_at_the_model_name_when_it_is_loadable(runs, tmp_path):
    """A LoRA run over a model directory: the adapter names that directory and no base is written."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "base-model"
    assert _export(runs["full"], base_dir) == 0
    run = Run(tmp_path / "run", *LORA, f"model.name={base_dir}", f"model.tokenizer={base_dir}")
    out = tmp_path / "adapter"
    assert _export(run, out, "--adapter") == 0
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir.resolve())
    assert not (out / "base").exists()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out)
    assert (_logits(peft_model) - run.logits).abs().max() < 1e-5


def test_export_errors(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(tmp_path), str(out)]) == 2  # not a run directory
    assert "is it a run directory" in capsys.readouterr().err
    assert _export(runs["full"], out, "--step", "7") == 2
    assert "no checkpoint '7'" in capsys.readouterr().err
    assert _export(runs["full"], out, "--step", "best") == 2  # no validation ran
    assert "best.json" in capsys.readouterr().err
    assert _export(runs["full"], out, "--adapter") == 2
    assert "full-parameter run" in capsys.readouterr().err
    assert not out.exists()  # nothing written by a failed export

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _export(runs["full"], out) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert _export(runs["full"], out, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    # --overwrite never replaces the run itself
    assert main(["export", str(runs["full"].dir), str(runs["full"].dir.parent), "--overwrite"]) == 2
    assert "holds the run" in capsys.readouterr().err and runs["full"].dir.is_dir()
    assert _export(runs["full"], runs["full"].dir / "checkpoints", "--overwrite") == 2
    assert "holds the run" in capsys.readouterr().err and list((runs["full"].dir / "checkpoints").iterdir())


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def _base_params(model) -> dict[str, torch.Tensor]:
    """The base weights under plain names (a PEFT model's names stripped of its wrapper)."""
    out = {}
    for name, value in _params(model).items():
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[name] = value
    return out


@pytest.mark.parametrize("source", ["full", "lora"])
@pytest.mark.parametrize("lora", [False, True], ids=["new-full", "new-lora"])
def test_init_from_starts_from_the_old_runs_student(runs, tmp_path, source, lora):
    old = runs[source]
    expected = _params(load_policy(old.config, old.dir)[0])
    trainer = build_trainer(_config(tmp_path / "new", *(LORA if lora else ()), f"model.init_from={old.dir}:1"))
    got = _base_params(trainer.model)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    # the student and the teacher start from the old run's final policy
    assert (_logits(trainer.model) - old.logits).abs().max() < 1e-5
    teacher = trainer.teacher
    if teacher.module is not None:
        assert (_logits(teacher.module) - old.logits).abs().max() < 1e-5
    else:  # LoRA: the EMA teacher adapter is a copy of the (zero) student adapter over the same base
        from resd.models.lora import TEACHER_ADAPTER, active_adapter

        with active_adapter(trainer.model, TEACHER_ADAPTER):
            assert (_logits(trainer.model) - old.logits).abs().max() < 1e-5
    # what it did not start from: the plain base model
    assert (_logits(trainer.model) - old.base_logits).abs().max() > 1e-3


def test_a_lora_run_from_init_from_exports_and_resumes_on_its_starting_weights(runs, tmp_path):
    """A LoRA run that started from another run keeps only its adapter: loading, exporting and resuming
    it needs the init_from weights under the adapter; a resumed run keeps its own checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    old = runs["full"]
    run = Run(tmp_path / "chained", *LORA, f"model.init_from={old.dir}")
    assert (_logits(load_policy(run.config, run.dir)[0]) - run.logits).abs().max() < 1e-5
    merged = tmp_path / "merged"
    assert _export(run, merged) == 0
    assert (_logits(AutoModelForCausalLM.from_pretrained(merged)) - run.logits).abs().max() < 1e-5
    adapter = tmp_path / "adapter"
    assert _export(run, adapter, "--adapter") == 0
    base = AutoModelForCausalLM.from_pretrained(adapter / "base")  # the old run's weights, not the tiny model's
    assert (_logits(base) - old.logits).abs().max() < 1e-5
    assert (_logits(PeftModel.from_pretrained(base, adapter)) - run.logits).abs().max() < 1e-5

    resumed = build_trainer(_config(run.dir, *LORA, f"model.init_from={old.dir}", "train.steps=2"))
    assert resumed.resume() and resumed.step == 1
    assert (_logits(resumed.model) - run.logits).abs().max() < 1e-5


def test_resume_keeps_its_checkpoint_over_init_from(runs, tmp_path):
    old = runs["full"]
    run = Run(tmp_path / "new", f"model.init_from={old.dir}")
    resumed = build_trainer(_config(run.dir, f"model.init_from={old.dir}", "train.steps=2"))
    assert (_logits(resumed.model) - old.logits).abs().max() < 1e-5  # built: the old run's weights
    assert resumed.resume()
    assert (_logits(resumed.model) - run.logits).abs().max() < 1e-6  # resumed: its own checkpoint
    assert (_logits(resumed.model) - old.logits).abs().max() > 1e-3


def test_a_full_parameter_resume_does_not_read_the_init_from_run(runs, tmp_path):
    """A full-parameter checkpoint holds every weight, so resuming it neither reads the init_from run nor
    needs its directory (which failed before); a LoRA checkpoint holds only adapters and still does."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs["full"].dir, old)
    full = Run(tmp_path / "full", f"model.init_from={old}")
    lora = Run(tmp_path / "lora", *LORA, f"model.init_from={old}")
    # with no checkpoint to resume, init_from is applied as in a new run
    fresh = build_trainer(_config(tmp_path / "fresh", f"model.init_from={old}"), resume=True)
    assert not fresh.resumed and fresh.step == 0
    assert (_logits(fresh.model) - runs["full"].logits).abs().max() < 1e-5
    shutil.rmtree(old)

    resumed = build_trainer(_config(full.dir, f"model.init_from={old}", "train.steps=2"), resume=True)
    assert resumed.resumed and resumed.step == 1
    assert (_logits(resumed.model) - full.logits).abs().max() < 1e-6
    assert main(["train", "--resume", str(full.dir), "train.steps=2"]) == 0
    from resd.trainer.checkpoint import step_dirs

    assert step_dirs(full.dir / "checkpoints")[-1][0] == 2

    with pytest.raises(ConfigError, match="model.init_from"):
        build_trainer(_config(lora.dir, *LORA, f"model.init_from={old}", "train.steps=2"), resume=True)


def test_init_from_errors_name_the_key(runs, tmp_path):
    old = runs["full"]
    cases = {
        str(tmp_path): "is it a run directory",
        f"{old.dir}:7": "no checkpoint '7'",
        f"{old.dir}:best": "best.json",
    }
    for spec, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            build_trainer(_config(tmp_path / "new", f"model.init_from={spec}"))
        assert "model.init_from" in str(info.value)
    # weights of another shape than model.name's (full and LoRA sources)
    for source in ("full", "lora"):
        with pytest.raises(ConfigError, match="do not fit") as info:
            build_trainer(_config(tmp_path / "new", "model.tiny.hidden_size=32", f"model.init_from={runs[source].dir}"))
        assert "model.init_from" in str(info.value)
    # through the command line: exit status 2 and the message
    assert main(["train", "--preset", "smoke", f"logging.run_dir={tmp_path / 'cli'}", f"model.init_from={tmp_path}"]) == 2
