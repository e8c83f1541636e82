"""The RESD stream trainer end to end on a tiny model with a scripted reflector/curator."""

from __future__ import annotations

import json
import re

import pytest
import torch

from resd.context.parsing import strip_thinking
from resd.envs import register
from resd.envs.base import Environment, Feedback
from resd.trainer import build_trainer
from resd.trainer.schedule import StreamSchedule


@register("parity-test")
class ParityEnv(Environment):
    """Success iff the response has an even number of characters: a deterministic mix of outcomes."""

    task_description = "writing even-length answers"
    final_instruction = "Answer again with the above information:"

    def load_split(self, split, path=None, limit=None):
        rows = [{"id": f"{split}-{i}", "question": f"Say something about {i}."} for i in range(8)]
        return rows[:limit] if limit else rows

    def prompt_messages(self, example):
        return [{"role": "system", "content": "sys"}, {"role": "user", "content": example["question"]}]

    def score(self, response, example, *, truncated=False):
        ok = len(response) % 2 == 0
        return Feedback(float(ok), float(ok), "" if ok else f"odd length {len(response)} for {example['id']}")


class ScriptedReflector:
    """Deterministic reflector / success-reflector / curator text; records the call order."""

    def __init__(self):
        self.calls: list[str] = []
        self.counter = 0

    def __call__(self, conversations):
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            self.counter += 1
            if "curator" in text:
                self.calls.append("curator")
                out.append(json.dumps({"reasoning": "r", "operations": [
                    {"type": "ADD", "section": "common_mistakes_to_avoid", "content": f"lesson {self.counter}"}]}))
            elif "answered correctly" in text:
                self.calls.append("success")
                out.append(json.dumps({"reasoning": "ok", "bullet_tags": [{"id": "err-00001", "tag": "helpful"}]}))
            else:
                self.calls.append("reflector")
                out.append("<think>hmm</think>" + json.dumps({
                    "reasoning": "why", "error_identification": "odd", "root_cause_analysis": "rc",
                    "correct_approach": "be even", "key_insight": f"insight {self.counter}",
                    "bullet_tags": [{"id": "err-00001", "tag": "harmful"}]}))
        return out


def _config(tiny_config, *extra):
    return tiny_config(
        "algorithm=resd", "data.env=parity-test", "data.env_kwargs={}", "data.shuffle=false", "rollout.n=1", "rollout.max_new_tokens=8",
        "train.batch_size=4", "stream.inner_steps=2", "stream.min_inner_steps=2", "stream.num_batches=2",
        "reprompt.dont_reprompt_on_self_success=false", "resd.max_bullets=3", "resd.concise_frequency=4",
        "teacher.update_rate=0.5", "train.rollout_is_threshold=null", "train.steps=null", *extra,
    )


def _make(cfg):
    trainer = build_trainer(cfg)
    assert isinstance(trainer.schedule, StreamSchedule)
    trainer.algorithm.text_generate = ScriptedReflector()
    return trainer


def test_resd_stream_order_prompts_buffer_playbook_and_teacher(tiny_config):
    trainer = _make(_config(tiny_config))
    script = trainer.algorithm.text_generate
    teacher0 = {n: p.clone() for n, p in trainer.teacher.module.named_parameters()}

    seen_samples = []
    original_optimize = trainer.learner.update

    def spy(samples):
        seen_samples.append(samples)
        student_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        teacher_before = {n: p.detach().clone() for n, p in trainer.teacher.module.named_parameters()}
        out = original_optimize(samples)
        for n, p in trainer.teacher.module.named_parameters():  # EMA with rate 0.5 after the step
            expected = 0.5 * teacher_before[n] + 0.5 * dict(trainer.model.named_parameters())[n].detach()
            torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)
        assert any(not torch.equal(student_before[n], p) for n, p in trainer.model.named_parameters())
        return out

    trainer.learner.update = spy
    trainer.train()
    assert trainer.step == 4 and trainer.schedule.outer == 2

    # order inside each step: reflections on failures, then success tags, then curation
    letters = "".join({"reflector": "r", "success": "s", "curator": "c"}[c] for c in script.calls)
    assert re.fullmatch(r"((r+s*c+)|s+)+", letters), letters
    assert "r" in letters and "c" in letters

    lines = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stream/outer_batch"] for r in lines] == [0, 0, 1, 1]
    assert [r["stream/inner_step"] for r in lines] == [0, 1, 0, 1]
    assert all(r["playbook/size"] <= 3 for r in lines)  # the cap holds after the post-curation trim

    # teacher prompts of the first step
    first = seen_samples[0]
    for s in first:
        text = s.teacher_messages[-1]["content"]
        assert s.teacher_messages[0] == {"role": "system", "content": "sys"}
        assert f"<prompt>{s.prompt_messages[-1]['content']}</prompt>" in text
        assert f"<previous_trial>{strip_thinking(s.text)}</previous_trial>" in text
        assert text.rstrip().endswith("Answer again with the above information:")
        assert s.sd_mask
        if s.feedback.score >= 1:  # own success is the solution, feedback dropped
            assert f"Correct solution:\n\n{strip_thinking(s.text)}" in text and "<feedback>" not in text
        else:
            assert "<feedback>odd length" in text and "insight" in text and "<think>" not in text
            # the teacher sees the playbook after this step's curation
            assert "lesson" in text and "[err-" in text

    # buffer: every example that succeeded at least once is stored
    succeeded = {trainer.env.example_id(s.example) for batch in seen_samples for s in batch if s.feedback.score >= 1}
    assert set(trainer.algorithm.updater.buffer.to_state()) == succeeded
    snapshots = sorted((trainer.run_dir / "playbook").glob("step-*.txt"))
    assert len(snapshots) == 4
    assert snapshots[-1].read_text().strip() == trainer.algorithm.updater.playbook().render()
    assert any(not torch.equal(teacher0[n], p) for n, p in trainer.teacher.module.named_parameters())


def test_stream_resume_mid_batch_is_exact(tiny_config, tmp_path):
    straight = _make(_config(tiny_config, f"logging.run_dir={tmp_path / 'a'}"))
    straight.train()

    first = _make(_config(tiny_config, f"logging.run_dir={tmp_path / 'b'}"))
    first.logger.log(1, first.train_step())
    assert first.schedule.batch is not None and first.schedule.inner == 1  # inside an outer batch
    first.save()
    resumed = _make(_config(tiny_config, f"logging.run_dir={tmp_path / 'b'}"))
    resumed.algorithm.text_generate.counter = first.algorithm.text_generate.counter
    assert resumed.resume()
    assert resumed.step == 1 and resumed.schedule.inner == 1 and resumed.schedule.batch is not None
    assert resumed.algorithm.updater.to_state() == first.algorithm.updater.to_state()
    resumed.train()

    for (n, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    for n, v in straight.teacher.state_dict().items():
        assert torch.equal(v, resumed.teacher.state_dict()[n]), n
    assert straight.algorithm.updater.to_state() == resumed.algorithm.updater.to_state()


def test_early_exit_fires_when_scores_stop_improving(tiny_config):
    cfg = _config(tiny_config, "stream.inner_steps=4", "stream.min_inner_steps=2", "stream.early_exit_threshold=1.0",
                  "stream.num_batches=1")
    trainer = _make(cfg)
    trainer.train()
    lines = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    # with threshold 1.0 the batch stops at the first step >= 2 where not every prompt improved
    assert lines[-1]["stream/early_exit"] == 1.0
    assert len(lines) < 4


@pytest.mark.parametrize("algorithm", ["sdpo", "sdpo+ss", "grpo"])
def test_baselines_run_in_the_stream_loop(tiny_config, algorithm):
    extra = ["stream.enabled=true"]
    if algorithm == "grpo":
        extra += ["loss.pg_weight=1.0", "rollout.n=2"]
    cfg = _config(tiny_config, f"algorithm={algorithm}", *extra, "stream.num_batches=1")
    trainer = build_trainer(cfg)
    assert isinstance(trainer.schedule, StreamSchedule) and not hasattr(trainer.algorithm, "updater")
    trainer.train()
    lines = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    if algorithm == "sdpo+ss":
        assert trainer.algorithm.reprompt.dont_reprompt_on_self_success is False


def test_no_demonstration_for_a_successful_sample_when_self_success_is_off(tiny_config):
    """Issue 21, bugs 5 and 6: with reprompt.dont_reprompt_on_self_success=true a successful sample gets no
    solution (not a peer's, not the buffer entry the context update has just filled with its own text), and
    self_distillation/success_sample_fraction counts the samples given a demonstration (SDPO's meaning)."""
    from resd.sample import Sample

    trainer = _make(_config(tiny_config, "reprompt.dont_reprompt_on_self_success=true", "rollout.n=2"))
    env = trainer.env
    rows = env.load_split("train")[:3]
    trainer.algorithm.updater.buffer.store(env.example_id(rows[2]), "earlier!")  # a success of a previous step

    def sample(group, text):
        messages = env.prompt_messages(rows[group])
        return Sample(rows[group], group, messages, [1], [2], None, True, text, env.score(text, rows[group]))

    # example 0: a success and a failure; example 1: a lone success; example 2: two failures, buffered
    samples = [sample(0, "ok"), sample(0, "bad"), sample(1, "good"), sample(2, "odd"), sample(2, "odder")]
    assert [s.feedback.score for s in samples] == [1.0, 0.0, 1.0, 0.0, 0.0]
    trainer.algorithm.context_update(samples, 1)
    metrics = trainer.algorithm.teacher_contexts(samples)
    texts = [s.teacher_messages[-1]["content"] for s in samples]
    for i in (0, 2):
        assert "Correct solution" not in texts[i], f"successful sample {i} is shown a demonstration:\n{texts[i]}"
        assert not samples[i].sd_mask
    assert "Correct solution:\n\nok" in texts[1]  # a failure still gets its successful peer
    assert "Correct solution:\n\nearlier!" in texts[3] and "Correct solution:\n\nearlier!" in texts[4]
    assert metrics["self_distillation/success_sample_fraction"] == pytest.approx(3 / 5)
    assert metrics["self_distillation/solution_self_fraction"] == 0.0


def test_train_steps_caps_the_stream_loop_from_a_fresh_home(tmp_path):
    """Issue 21, bug 4: `resd train --preset smoke algorithm=resd train.steps=2` runs 2 training steps (inner
    iterations), not the 8 batches x 4 inner steps of the split, and does it in under a minute from a fresh
    home directory (no cached model)."""
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("RESD_CACHE", "HF_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path / "home")
    run_dir = tmp_path / "run"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "resd.cli", "train", "--preset", "smoke", "algorithm=resd", "train.steps=2",
         f"logging.run_dir={run_dir}", "logging.progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "reward/mean" in r] == [1, 2]
    # The target is under a minute on a quiet machine (31 s measured alone); the bound here leaves room
    # for a loaded 2-core CI machine (96 s seen under load) while still catching the bug, which planned
    # 32 inner steps and took over half an hour.
    assert elapsed < 150, f"took {elapsed:.0f} s"


def test_stream_loop_validates_every_eval_every_steps(tiny_config):
    """Issue 21, bug 4: eval.every_steps is honoured in the stream loop too (once per step, even when
    stream.val_every_batches asks for the same step)."""
    trainer = _make(_config(tiny_config, "stream.num_batches=1", "eval.every_steps=1", "eval.k=1", "data.val_limit=2",
                            "stream.val_every_batches=1", "eval.save_best=false"))
    trainer.train()
    lines = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "val/task/mean@1" in r] == [1, 2]
