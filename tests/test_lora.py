"""LoRA through PEFT: only the adapter trains, the teacher is the base model or an EMA adapter."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from resd.models.lora import STUDENT_ADAPTER, TEACHER_ADAPTER, active_adapter, adapter_parameters, counterpart  # noqa: E402
from resd.trainer.forward import pack_rows, response_hidden  # noqa: E402
from resd.trainer.trainer import Trainer  # noqa: E402

LORA = ("model.lora.enabled=true", "model.lora.r=4", "train.lr=1e-2", "train.rollout_is_threshold=null")


def _named(params):
    return {n: p.detach().clone() for n, p in params}


def _base(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def test_only_the_student_adapter_trains_and_the_teacher_adapter_follows_by_ema(tiny_config):
    trainer = Trainer(tiny_config(*LORA, "train.steps=1", "teacher.update_rate=0.25"))
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{STUDENT_ADAPTER}." in n and "lora_" in n for n in trainable)
    assert trainer.teacher.module is None  # no second copy of the model
    base_before = _base(model)
    student_before = _named(adapter_parameters(model, STUDENT_ADAPTER).items())
    teacher_before = _named(adapter_parameters(model, TEACHER_ADAPTER).items())
    for name, value in teacher_before.items():  # the teacher adapter starts as a copy of the student's
        assert torch.equal(value, student_before[counterpart(name, TEACHER_ADAPTER, STUDENT_ADAPTER)])

    trainer.train()
    student_after = _named(adapter_parameters(model, STUDENT_ADAPTER).items())
    teacher_after = _named(adapter_parameters(model, TEACHER_ADAPTER).items())
    assert all(torch.equal(base_before[n], p) for n, p in _base(model).items())
    assert any(not torch.equal(student_before[n], student_after[n]) for n in student_before)
    for name, value in teacher_after.items():  # teacher <- 0.75 teacher + 0.25 student, once
        source = counterpart(name, TEACHER_ADAPTER, STUDENT_ADAPTER)
        torch.testing.assert_close(value, 0.75 * teacher_before[name] + 0.25 * student_after[source], rtol=0, atol=1e-6)
    # switching adapters for the teacher pass leaves the student's trainable flags as they were
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def _hidden(model, ids):
    rows = pack_rows([ids[:3]], [ids[3:]], 0)
    with torch.no_grad():
        return response_hidden(model, rows)


def test_teacher_passes_select_the_right_weights(tiny_config):
    """frozen = the base model with the adapter off; ema = the teacher adapter; trust-region mixes
    the base and the live student with weights 1 - tau and tau."""
    trainer = Trainer(tiny_config(*LORA, "train.steps=1", "teacher.update_rate=0.5"))
    trainer.train()  # the student adapter is no longer zero, so the three forwards differ
    model = trainer.model
    ids = [5, 9, 11, 20, 31, 7]
    student = _hidden(model, ids)
    with active_adapter(model, None):
        base = _hidden(model, ids)
    with active_adapter(model, TEACHER_ADAPTER):
        ema = _hidden(model, ids)
    assert not torch.allclose(student, base) and not torch.allclose(student, ema) and not torch.allclose(ema, base)
    # the same base weights without PEFT: the frozen teacher is exactly the original model
    plain = Trainer(tiny_config("train.steps=0")).model
    plain.load_state_dict({n.replace("base_model.model.", "").replace(".base_layer", ""): p
                           for n, p in model.named_parameters() if "lora_" not in n}, strict=False)
    torch.testing.assert_close(_hidden(plain, ids), base, rtol=0, atol=1e-6)

    for kind, expected in (("frozen", [(base, 1.0)]), ("ema", [(ema, 1.0)]),
                           ("trust-region", [(base, 0.5), (student, 0.5)]), ("live", [(student, 1.0)])):
        trainer.teacher.kind = kind
        got = []
        for module, weight, context in trainer.teacher.passes():
            with context:
                got.append((_hidden(module, ids), weight))
        assert len(got) == len(expected), kind
        for (h, w), (h_ref, w_ref) in zip(got, expected, strict=True):
            assert w == w_ref, kind
            torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-6)
    assert _hidden(model, ids).equal(student)  # the student's adapter is active again


def test_lora_resume_is_exact_and_checkpoints_hold_adapters_only(tiny_config, tmp_path):
    from resd.trainer.checkpoint import latest_valid, load_checkpoint

    common = (*LORA, "train.batch_size=2", "logging.save_every=1", "train.warmup_steps=0")
    straight = Trainer(tiny_config("train.steps=2", f"logging.run_dir={tmp_path / 'a'}", *common))
    straight.train()
    first = Trainer(tiny_config("train.steps=1", f"logging.run_dir={tmp_path / 'b'}", *common))
    first.train()
    tensors, _, _ = load_checkpoint(latest_valid(first.checkpoint_root))
    assert tensors["student"] and all("lora_" in n for n in tensors["student"])
    assert set(tensors["teacher"]) == set(adapter_parameters(first.model, TEACHER_ADAPTER))
    resumed = Trainer(tiny_config("train.steps=2", f"logging.run_dir={tmp_path / 'b'}", *common))
    assert resumed.resume() and resumed.step == 1
    resumed.train()
    for (n, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full-parameter"])
def test_eval_and_solve_load_a_run_of_either_kind(tiny_config, tmp_path, lora):
    """Issue 21, bug 2: `resd eval --run` and `resd solve --run` load a LoRA run (PEFT adapter names in the
    checkpoint) as well as a full-parameter run, and the loaded policy is the trained one."""
    from resd.cli import _checkpoint_dir, load_policy, main
    from resd.trainer import build_trainer

    cfg = tiny_config(*(LORA if lora else ("train.lr=1e-2",)), "train.steps=1", "rollout.max_new_tokens=4")
    trainer = build_trainer(cfg)
    run_dir = trainer.train()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        trained = trainer.model(ids).logits
        loaded = load_policy(cfg, run_dir)[0](ids).logits
        untrained = load_policy(cfg, None)[0](ids).logits
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(untrained, trained)

    # test-time training from the run starts from its weights
    again = build_trainer(cfg, run_dir=tmp_path / "again")
    again.load_weights(_checkpoint_dir(run_dir, "latest"))
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, trained, rtol=1e-4, atol=1e-5)

    assert main(["eval", "--run", str(run_dir), "--limit", "2", "--k", "1", "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "arithmetic-test-step1-k1_summary.json").read_text())["prompts"] == 2
    for method in ("best-of-k", "sdpo"):
        out = tmp_path / f"solve-{method}"
        assert main(["solve", "--run", str(run_dir), "--split", "train", "--example", "0", "--method", method,
                     "--budget", "4", "--out", str(out), "train.batch_size=1", "rollout.n=2"]) == 0
        assert json.loads((out / "solve.json").read_text())["runs"][0]["attempts"] <= 4
