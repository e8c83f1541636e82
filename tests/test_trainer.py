"""End-to-end training of a tiny model: SDPO and GRPO steps, the EMA rule, and exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from resd.trainer.trainer import Trainer


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_sdpo_steps_train_and_move_the_ema_teacher_exactly(tiny_config):
    cfg = tiny_config("train.steps=1", "teacher.update_rate=0.25", "train.rollout_is_threshold=null")
    trainer = Trainer(cfg)
    before_student = _params(trainer.model)
    before_teacher = _params(trainer.teacher.module)
    trainer.train()
    after_student = _params(trainer.model)
    after_teacher = _params(trainer.teacher.module)
    assert any(not torch.equal(before_student[n], after_student[n]) for n in before_student)
    for name in before_teacher:  # teacher <- (1 - tau) teacher + tau student, once
        expected = 0.75 * before_teacher[name] + 0.25 * after_student[name]
        torch.testing.assert_close(after_teacher[name], expected, rtol=0, atol=1e-6)
    record = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["self_distillation/reprompt_sample_fraction"] == 1.0  # arithmetic feedback always exists
    # successes / samples (binary rewards: the mean reward); success_sample_fraction is SDPO's "given a demonstration"
    assert record["reward/success_fraction"] == record["reward/mean"]
    assert record["loss/distill"] > 0 and record["actor/optimizer_steps"] == 1
    assert all(v is None or isinstance(v, (int, float, str)) for v in record.values())
    sample = json.loads((trainer.run_dir / "samples.jsonl").read_text().splitlines()[0])
    assert "The correct answer is" in sample["teacher_prompt"]


def test_grpo_steps_run_without_a_teacher(tiny_config):
    cfg = tiny_config("algorithm=grpo", "loss.pg_weight=1.0", "train.steps=2", "train.mini_batch_size=2")
    trainer = Trainer(cfg)
    assert trainer.teacher is None
    trainer.train()
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert all(r["actor/optimizer_steps"] == 2 and "loss/distill" not in r for r in lines)
    assert all(torch.isfinite(torch.tensor(r["loss/pg"])) for r in lines)


def test_grpo_gradient_on_controlled_rewards(tiny_config):
    """GRPO moves the weights when the rewards in a group differ (scores set directly on the samples)."""
    cfg = tiny_config("algorithm=grpo", "loss.pg_weight=1.0")
    trainer = Trainer(cfg)
    samples, _ = trainer.sample(trainer.data.next_batch(2))
    for k, s in enumerate(samples):
        s.feedback.score = float(k % 2)
    trainer.algorithm.prepare(samples, 1)
    assert {s.advantage for s in samples} == {0.5, -0.5}
    before = _params(trainer.model)
    metrics = trainer.learner.update(samples)
    assert metrics["actor/grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_zero_advantage_samples_are_left_out_without_changing_the_steps(tiny_config, tmp_path):
    """Skipping samples that carry no loss gives the weights of the full forward/backward.

    Step 1 has one group with mixed rewards and one with equal rewards (zero advantages); step 2
    has only equal rewards, so nothing runs a backward and the step must still move the weights
    by Adam's momentum, as the zero gradient of a zero loss does.
    """
    import copy

    trainers = {}
    for skip in (True, False):
        trainers[skip] = Trainer(tiny_config("algorithm=grpo", "loss.pg_weight=1.0", f"train.skip_zero_advantage={skip}",
                                             f"logging.run_dir={tmp_path / str(skip)}"))
    start = _params(trainers[True].model)
    assert all(torch.equal(start[n], p) for n, p in trainers[False].model.named_parameters())
    samples, _ = trainers[True].sample(trainers[True].data.next_batch(2))
    first = min(s.group for s in samples)
    for k, s in enumerate(samples):
        s.feedback.score = float(k % 2) if s.group == first else 1.0
    after, counts = {}, {}
    for skip, trainer in trainers.items():
        batch = copy.deepcopy(samples)
        trainer.algorithm.prepare(batch, 1)
        counts[skip] = [trainer.learner.update(batch)["actor/update_samples"]]
        after[skip] = [_params(trainer.model)]
        for s in batch:
            s.feedback.score = 0.0
        trainer.algorithm.prepare(batch, 1)
        assert {s.advantage for s in batch} == {0.0}
        counts[skip].append(trainer.learner.update(batch)["actor/update_samples"])
        after[skip].append(_params(trainer.model))
    n_group = sum(s.group == first for s in samples)
    assert counts == {True: [n_group, 0], False: [len(samples), len(samples)]}
    # Adam's m / sqrt(v) turns float32 summation-order noise on near-zero gradients into up to
    # about 1e-6 of weight; a left-out sample with a real gradient would move weights by ~lr = 1e-3
    for step in (0, 1):
        for name in start:
            torch.testing.assert_close(after[True][step][name], after[False][step][name], rtol=0, atol=1e-5)
    assert any(not torch.equal(after[True][0][n], after[True][1][n]) for n in start)  # momentum moved step 2


def test_mixed_objective_and_off_policy_mini_batches(tiny_config):
    cfg = tiny_config("loss.pg_weight=0.5", "train.mini_batch_size=1", "train.steps=1", "train.batch_size=2")
    trainer = Trainer(cfg)
    trainer.train()
    record = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["actor/optimizer_steps"] == 2
    assert "loss/pg" in record and "loss/distill" in record
    assert record["self_distillation/is_ratio_mean"] <= 2.0


def test_rollout_logprobs_match_a_full_forward(tiny_config):
    trainer = Trainer(tiny_config())
    samples, _ = trainer.sample(trainer.data.next_batch(2))
    s = samples[0]
    ids = torch.tensor([s.prompt_ids + s.response_ids])
    with torch.no_grad():
        logits = trainer.model(ids).logits[0, len(s.prompt_ids) - 1 : -1]
    ref = torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(s.response_ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(s.rollout_logprobs, dtype=torch.float64), ref, atol=1e-4, rtol=1e-4)


def _final_state(trainer):
    return _params(trainer.model), trainer.teacher.state_dict(), trainer.learner.optimizer.state_dict()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_config, tmp_path):
    common = ("train.batch_size=2", "logging.save_every=2", "train.warmup_steps=2")
    straight = Trainer(tiny_config("train.steps=4", f"logging.run_dir={tmp_path / 'a'}", *common))
    straight.train()

    first = Trainer(tiny_config("train.steps=2", f"logging.run_dir={tmp_path / 'b'}", *common))
    first.train()
    resumed = Trainer(tiny_config("train.steps=4", f"logging.run_dir={tmp_path / 'b'}", *common))
    assert resumed.resume()
    assert resumed.step == 2
    resumed.train()

    a_student, a_teacher, a_opt = _final_state(straight)
    b_student, b_teacher, b_opt = _final_state(resumed)
    for name in a_student:
        assert torch.equal(a_student[name], b_student[name]), name
        assert torch.equal(a_teacher[name], b_teacher[name]), name
    assert a_opt["optimizer"]["state"][0]["step"] == b_opt["optimizer"]["state"][0]["step"] == 4
    a_lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b_lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "progress/elapsed"))}
    assert [strip(x) for x in a_lines] == [strip(x) for x in b_lines]


def test_nonfinite_gradients_skip_the_step_and_eventually_stop(tiny_config):
    from resd.trainer.trainer import NonFiniteError

    trainer = Trainer(tiny_config("train.max_nonfinite_steps=2", "train.steps=3"))
    teacher_before = trainer.teacher.state_dict()
    student_before = _params(trainer.model)
    hook = trainer.model.get_output_embeddings().weight.register_hook(lambda g: g * float("nan"))
    metrics = trainer.train_step()
    assert metrics["actor/nonfinite_steps"] == 1
    assert all(torch.equal(student_before[n], p) for n, p in trainer.model.named_parameters())
    assert all(torch.equal(teacher_before[n], v) for n, v in trainer.teacher.state_dict().items())
    with pytest.raises(NonFiniteError):
        trainer.train_step()
    hook.remove()
