"""torchrun with 2 CPU processes (gloo) and FSDP2 gives the weights, teacher and playbook of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
        "resd.reflector.backend=callable", "resd.reflector.model=resd_test_plugins:counted",
        "reprompt.dont_reprompt_on_self_success=false", "train.steps=100"]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(run_dir: Path, overrides: list[str], procs: int = 1, resume: bool = False,
           timeout: float = 900) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    args = ["train", "--resume", str(run_dir)] if resume else ["train", "--preset", "smoke", f"logging.run_dir={run_dir}"]
    result = subprocess.run([*launcher, "-m", "resd.cli", *args, *overrides], env=_env(), capture_output=True, text=True,
                            timeout=timeout)
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
        assert state1["extra"]["algorithm"]["context"] == state2["extra"]["algorithm"]["context"]  # playbook, buffer
        playbook = (tmp_path / "two" / "playbook" / "step-000002.txt").read_text()
        assert "lesson" in playbook
        assert playbook == (tmp_path / "one" / "playbook" / "step-000002.txt").read_text()
        # each reflection and curation is made once: the ranks split the calls of one process
        calls = {run: {p.name: sum(map(int, p.read_text().split())) for p in (tmp_path / run).glob("reflector-calls-*")}
                 for run in ("one", "two")}
        assert set(calls["two"]) == {"reflector-calls-rank0.txt", "reflector-calls-rank1.txt"}
        assert all(n > 0 for n in calls["two"].values())
        assert sum(calls["two"].values()) == sum(calls["one"].values()) > 0
    else:  # a sharded run's checkpoint loads for evaluation and the report like any other
        for args in (["eval", "--run", str(tmp_path / "two"), "--limit", "2", "--k", "1", "--out", str(tmp_path / "ev")],
                     ["report", str(tmp_path / "two"), "--out", str(tmp_path / "report.html")]):
            result = subprocess.run([sys.executable, "-m", "resd.cli", *args], env=_env(), capture_output=True,
                                    text=True, timeout=600)
            assert result.returncode == 0, result.stderr[-4000:]
        (summary,) = (tmp_path / "ev").glob("*_summary.json")
        assert json.loads(summary.read_text())["prompts"] == 2 and (tmp_path / "report.html").is_file()


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


# Issue 21, bug 1: a rank that runs only dummy micro-batches must make the same collectives as the others.
HALF = ["data.env=resd_test_plugins:HalfSignalEnv", "train.mini_batch_size=2", "dist.timeout_s=60"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "sdpo"])
def test_a_rank_with_nothing_to_train_on_does_not_hang(tmp_path, algorithm):
    """GRPO with mini-batches (a rank whose prompt has all-zero advantages) and SDPO where one rank has no
    distillation target: two processes finish both steps and agree with one process."""
    extra = [*COMMON, *HALF, f"algorithm={algorithm}"]
    _train(tmp_path / "one", extra)
    _train(tmp_path / "two", extra, procs=2, timeout=240)  # before the fix: stuck in step 1 until killed
    (_, one), (_, two) = step_dirs(tmp_path / "one" / "checkpoints")[-1], step_dirs(tmp_path / "two" / "checkpoints")[-1]
    assert json.loads((one / "state.json").read_text())["step"] == json.loads((two / "state.json").read_text())["step"] == 2
    _assert_close(load_file(str(one / "student.safetensors")), load_file(str(two / "student.safetensors")))
    lines1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lines2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    # each step trains on the even rows only: half of the samples, summed over both ranks
    assert [r["actor/update_samples"] for r in lines2] == [r["actor/update_samples"] for r in lines1] == [4.0, 4.0]


MISMATCH = """
import sys, time
from resd.distributed import CollectiveError, init_distributed

info = init_distributed(timeout_s=float(sys.argv[1]))
info.where = "training step 7"
start = time.monotonic()
if info.rank == 1:  # skips the collective (as a rank with only dummy micro-batches did) and stays busy
    time.sleep(20 * float(sys.argv[1]))
    sys.exit(0)
try:
    info.all_reduce_sum({"loss/pg": 1.0})
except CollectiveError as e:
    print(f"rank {info.rank} failed after {time.monotonic() - start:.1f} s: {e}", flush=True)
    sys.exit(3)
print(f"rank {info.rank} went through", flush=True)
"""


@pytest.mark.slow
def test_a_collective_mismatch_fails_with_an_error_naming_the_step(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(MISMATCH)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    start = time.monotonic()
    result = subprocess.run([*launcher, str(script), "3"], env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "went through" not in result.stdout, result.stdout
    assert "rank 0 failed after" in result.stdout and "training step 7" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "dist.timeout_s=3" in result.stdout  # the error says which key sets the limit
    assert time.monotonic() - start < 50  # the 3 s limit, not rank 1's 60 s of sleep
