"""torchrun with 2 CPU processes (gloo) and FSDP2 gives the weights, teacher and playbook of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resd.trainer.checkpoint import step_dirs

TESTS = Path(__file__).parent
COMMON = [
    "train.steps=2", "train.batch_size=4", "rollout.n=2", "rollout.max_new_tokens=8", "logging.save_every=1",
    "logging.progress=false", "data.env=resd_test_plugins:ParityEnv", "data.env_kwargs={}", "data.shuffle=false",
    "teacher.update_rate=0.3", "train.lr=1e-3", "train.warmup_steps=0",
]
RESD = ["algorithm=resd", "rollout.n=1", "stream.inner_steps=2", "stream.min_inner_steps=2", "stream.num_batches=1",
        "resd.reflector.backend=callable", "resd.reflector.model=resd_test_plugins:scripted",
        "reprompt.dont_reprompt_on_self_success=false", "train.steps=100"]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(run_dir: Path, overrides: list[str], procs: int = 1, resume: bool = False) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    args = ["train", "--resume", str(run_dir)] if resume else ["train", "--preset", "smoke", f"logging.run_dir={run_dir}"]
    result = subprocess.run([*launcher, "-m", "resd.cli", *args, *overrides], env=_env(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _final(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    last = step_dirs(run_dir / "checkpoints")[-1][1]
    return (load_file(str(last / "student.safetensors")), load_file(str(last / "teacher.safetensors")),
            json.loads((last / "state.json").read_text()))


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sdpo", "resd"])
def test_two_processes_match_one(tmp_path, algorithm):
    extra = COMMON + (RESD if algorithm == "resd" else [])
    _train(tmp_path / "one", extra)
    two = _train(tmp_path / "two", extra, procs=2)
    assert "FSDP2 sharding active: rank 0 of 2" in two.stderr and "rank 1 of 2" in two.stderr
    s1, t1, state1 = _final(tmp_path / "one")
    s2, t2, state2 = _final(tmp_path / "two")
    assert state2["world_size"] == 2 and state1["step"] == state2["step"] == 2
    _assert_close(s1, s2)
    _assert_close(t1, t2)
    assert not all(torch.equal(t1[n], s1[n]) for n in s1)  # the teacher is an EMA, not the student
    lines1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lines2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward/mean"] for r in lines1] == [r["reward/mean"] for r in lines2]  # same rollouts
    if algorithm == "resd":
        assert state1["extra"]["context"] == state2["extra"]["context"]  # playbook and buffer
        playbook = (tmp_path / "two" / "playbook" / "step-000002.txt").read_text()
        assert "lesson" in playbook
        assert playbook == (tmp_path / "one" / "playbook" / "step-000002.txt").read_text()


@pytest.mark.slow
def test_resume_under_two_processes(tmp_path):
    _train(tmp_path / "straight", COMMON, procs=2)
    _train(tmp_path / "stopped", [*COMMON, "train.steps=1"], procs=2)
    _train(tmp_path / "stopped", ["train.steps=2"], procs=2, resume=True)
    s1, t1, _ = _final(tmp_path / "straight")
    s2, t2, state = _final(tmp_path / "stopped")
    assert state["step"] == 2
    _assert_close(s1, s2)
    _assert_close(t1, t2)
