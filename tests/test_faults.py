"""Fault injection: corrupt checkpoints, SIGKILL at random points, SIGTERM, bad input."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resd.data import read_rows
from resd.envs import register
from resd.envs.base import DataError, Environment, Feedback
from resd.fileio import atomic_write_text
from resd.trainer import build_trainer
from resd.trainer.checkpoint import CheckpointError, latest_valid, load_checkpoint, step_dirs

SMOKE = ["train.batch_size=2", "train.warmup_steps=1", "logging.progress=false", "logging.keep_last=3"]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tiny_config, caplog):
    trainer = build_trainer(tiny_config("train.steps=2", "logging.save_every=1", "logging.keep_last=3"))
    trainer.train()
    root = trainer.checkpoint_root
    newest = step_dirs(root)[-1][1]
    blob = newest / "student.safetensors"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        chosen = latest_valid(root)
    assert chosen.name == "step-000001"
    assert "does not match its checksum" in caplog.text
    with pytest.raises(CheckpointError):
        load_checkpoint(newest)
    (root / "step-000003").mkdir()  # a directory without manifest (killed before the rename)
    assert latest_valid(root).name == "step-000001"
    again = build_trainer(tiny_config("train.steps=2"))
    assert again.resume() and again.step == 1


def _cli(run_dir: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "resd.cli", "train", "--preset", "smoke", f"train.steps={steps}",
            f"logging.run_dir={run_dir}", "logging.save_every=1", *SMOKE, *extra]


def _resume_cli(run_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "resd.cli", "train", "--resume", str(run_dir), f"train.steps={steps}"]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = step_dirs(run_dir / "checkpoints")[-1][1]
    return load_file(str(last / "student.safetensors")) | {
        f"teacher.{k}": v for k, v in load_file(str(last / "teacher.safetensors")).items()
    }


def _samples(run_dir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    return [(r["step"], r["example_id"], r["response"], r["teacher_prompt"]) for r in rows]


# Why weights are compared to 1e-5 and not bit for bit: two *uninterrupted* runs of this config
# on the same CPU are not always bit-identical. In one of about 200 runs on this project's AVX-512
# Xeon (and, most likely, in stop 18's CI run) an uninterrupted run's weights after 4 steps differed from the usual result
# by up to 1.3e-7 (its step-2 loss by 2e-4 relative, its sampled tokens not at all): an effect of the
# platform's floating-point kernels, not isolated further, that no resume is involved in, and that
# made the bitwise check fail at random. Forgetting a piece of state on resume moves the weights by
# far more (measured on this smoke config, resumed in-process at step 2 of 4: optimizer moments
# 2.7e-3, data position 1.3e-3, teacher 4.0e-4, learning-rate schedule during warm-up 2.5e-4), so 1e-5 still catches each of them. The
# global RNG state moves no weight here (rollouts draw from per-sequence seeds), so what was sampled
# must match exactly: that covers the sampling seeds and the data order.
RESUME_ATOL = 1e-5


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_exact(tmp_path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    steps, warmup = 4, "train.warmup_steps=3"  # a warm-up still running at the kills, so the schedule matters
    straight = tmp_path / "straight"
    subprocess.run(_cli(straight, steps, warmup), check=True, env=env, capture_output=True)
    expected = _final_weights(straight)

    rng = random.Random(1234)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, steps, warmup), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kills = []
    for _ in range(2):  # kill twice at random moments once training has started, resuming in between
        deadline = time.time() + 120
        while not (killed / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(sorted(p.name for p in (killed / "checkpoints").glob("*")) if (killed / "checkpoints").exists() else [])
        proc.wait()
        proc = subprocess.Popen(_resume_cli(killed, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait() == 0
    assert kills, "no kill landed while training ran"
    assert _samples(killed) == _samples(straight)
    got = _final_weights(killed)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0.0, atol=RESUME_ATOL,
                                   msg=lambda m, name=name: f"{name} after kills with checkpoints {kills}: {m}")
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, steps + 1))  # each step logged exactly once


@pytest.mark.slow
def test_sigterm_stops_cleanly_after_saving(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(run, 1000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    state = json.loads((step_dirs(run / "checkpoints")[-1][1] / "state.json").read_text())
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= state["step"] < 1000 and state["step"] == logged[-1]


def test_overlong_prompts_are_dropped_truncated_or_rejected(tiny_config):
    trainer = build_trainer(tiny_config("data.max_prompt_length=20"))
    examples = trainer.data.next_batch(2)
    samples, metrics = trainer.sample(examples)
    assert samples == [] and metrics["data/prompts_dropped"] == 2.0
    assert trainer.train_step()["data/prompts_dropped"] == 4.0  # a step with nothing to learn does not crash
    trainer = build_trainer(tiny_config("data.max_prompt_length=20", "data.prompt_overflow=truncate"))
    samples, metrics = trainer.sample(trainer.data.next_batch(2))
    assert len(samples) == 8 and all(len(s.prompt_ids) == 20 for s in samples)
    trainer = build_trainer(tiny_config("data.max_prompt_length=20", "data.prompt_overflow=error"))
    with pytest.raises(ValueError, match="exceeds"):
        trainer.sample(trainer.data.next_batch(1))


def test_bad_dataset_rows_name_the_file_row_and_field(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": 1}\n{"id": 2\n')
    with pytest.raises(DataError, match=r"data.jsonl: row 2: invalid JSON"):
        read_rows(path)
    path.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"row 2: expected a JSON object"):
        read_rows(path)
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")


@register("faulty-test")
class FaultyEnv(Environment):
    """Example "0" hangs forever, example "1" crashes, the others are scored normally."""

    def load_split(self, split, path=None, limit=None):
        return [{"id": str(i)} for i in range(4)]

    def prompt_messages(self, example):
        return [{"role": "user", "content": "Say anything."}]

    def score(self, response, example, *, truncated=False):
        if example["id"] == "0":
            while True:
                pass
        if example["id"] == "1":
            raise RuntimeError("checker bug")
        return Feedback(0.0, 0.0, "not good")


def test_hanging_and_crashing_environment_is_scored_as_failure_and_training_continues(tiny_config):
    cfg = tiny_config("data.env=faulty-test", "data.env_kwargs={}", "data.score_workers=2", "data.score_timeout_s=2",
                      "data.shuffle=false", "train.steps=1", "rollout.n=1", "train.batch_size=4")
    trainer = build_trainer(cfg)
    samples, _ = trainer.sample(trainer.data.next_batch(4))
    by_id = {s.example["id"]: s.feedback for s in samples}
    assert by_id["0"].score == 0 and "timed out after 2" in by_id["0"].feedback
    assert by_id["1"].score == 0 and "crashed" in by_id["1"].feedback and "checker bug" in by_id["1"].feedback
    assert by_id["2"].feedback == by_id["3"].feedback == "not good"
    trainer.data.load_state_dict({"epoch": 0, "index": 0})
    trainer.train()  # a full training step with the faulty environment completes
    assert trainer.step == 1


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "seed: 1\n")
    assert path.read_text() == "seed: 1\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the mode of any new file, not 0600
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "seed: 2\n\ud800")  # fails half-way through the write
    assert path.read_text() == "seed: 1\n"  # Path.write_text would have left a cut file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temporary left behind
    atomic_write_text(path, "seed: 3\n")
    assert path.read_text() == "seed: 3\n"


def test_resume_rewrites_run_files_without_losing_lines(tiny_config, tmp_path):
    run = tmp_path / "run"  # tiny_config's run directory
    trainer = build_trainer(tiny_config("train.steps=2", "logging.save_every=1"))
    trainer.train()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss/distill": 0.1}\n{"step": 4, "loss')  # a step after the checkpoint, then a cut line
    again = build_trainer(tiny_config("train.steps=2"))
    assert again.resume() and again.step == 2
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
