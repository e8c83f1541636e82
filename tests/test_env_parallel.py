"""Parallel batch scoring: hung, crashing and flooding checks are killed and scored as failures."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from resd.envs import load, register
from resd.envs.base import Environment, Feedback
from resd.envs.parallel import ParallelScorer, shutdown

TIMEOUT_S = 1.5


@register("_test_hostile_checks")
class HostileChecksEnv(Environment):
    """An environment whose check misbehaves on request (the response names the misbehaviour)."""

    def prompt_messages(self, example):
        return [{"role": "user", "content": "anything"}]

    def score(self, response, example, *, truncated=False):
        if response == "hang":
            while True:  # a pure-Python hang: only killing the process stops it
                pass
        if response == "sleep":
            time.sleep(3600)
        if response == "raise":
            raise ValueError("boom")
        if response == "exit":
            os._exit(7)
        if response == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if response == "flood":
            while True:
                print("x" * 10000)
        if response == "flood-fd":
            while True:
                os.write(2, b"y" * 65536)
        if response == "not-feedback":
            return 42
        if response == "unpicklable":
            return Feedback(1.0, 1.0, "", {"f": lambda: 0})
        if response == "chatty":
            print("a little output is fine")
        return Feedback(1.0, 1.0, "", {"pid": os.getpid(), "echo": response, "truncated": truncated})


class UnpicklableEnv(HostileChecksEnv):
    def __init__(self):
        self.handle = lambda: None


class BrokenInWorkerEnv(HostileChecksEnv):
    def __init__(self):
        self.state = "something to restore"

    def __setstate__(self, state):
        raise RuntimeError("cannot load here")


def _worker_pids() -> set[int]:
    """Live worker processes: the children of this process's forkserver."""
    pids = set()
    for child in psutil.Process().children():
        try:
            if "forkserver" in " ".join(child.cmdline()):
                pids |= {p.pid for p in child.children() if p.status() != psutil.STATUS_ZOMBIE}
        except psutil.Error:
            continue
    return pids


def test_hostile_batch_is_scored_and_continues():
    env = HostileChecksEnv()
    responses = ["ok-1", "hang", "ok-2", "raise", "exit", "segfault", "flood", "ok-3", "not-feedback", "unpicklable"]
    responses += ["flood-fd", "sleep", "chatty", "ok-4"]
    with ParallelScorer(env, workers=3, timeout_s=TIMEOUT_S, max_output_bytes=1 << 20) as scorer:
        start = time.monotonic()
        results = scorer.score_batch(responses, [{"id": i} for i in range(len(responses))], [False, True] * 7)
        elapsed = time.monotonic() - start
        by_response = dict(zip(responses, results, strict=True))
        for name in ("ok-1", "ok-2", "ok-3", "ok-4", "chatty"):
            fb = by_response[name]
            assert (fb.score, fb.acc, fb.feedback) == (1.0, 1.0, "")
            assert fb.details["echo"] == name
        assert by_response["ok-2"].details["truncated"] is False
        assert by_response["ok-1"].details["pid"] != os.getpid()
        assert by_response["hang"].feedback == "Environment check timed out after 1.5 s"
        assert by_response["sleep"].feedback == "Environment check timed out after 1.5 s"
        assert by_response["raise"].feedback == "Environment check crashed: ValueError: boom"
        assert by_response["exit"].feedback == "Environment check crashed: the worker process died (exit code 7)"
        assert by_response["segfault"].feedback == (
            "Environment check crashed: the worker process died (killed by signal SIGSEGV)"
        )
        assert by_response["flood"].feedback == "Environment check flooded its output (more than 1048576 bytes)"
        assert by_response["flood-fd"].feedback == "Environment check flooded its output (more than 1048576 bytes)"
        assert (
            by_response["not-feedback"].feedback
            == "Environment check crashed: TypeError: score() returned int, not Feedback"
        )
        assert by_response["unpicklable"].feedback.startswith(
            "Environment check crashed: its result could not be sent back"
        )
        for name in ("hang", "sleep", "raise", "exit", "segfault", "flood", "flood-fd", "not-feedback", "unpicklable"):
            fb = by_response[name]
            assert (fb.score, fb.acc) == (0.0, 0.0), name
        assert by_response["hang"].details["env_error"] == "timeout"
        assert by_response["raise"].details["env_error"] == "crash"
        assert by_response["flood"].details["env_error"] == "flood"
        assert "x" * 100 in by_response["flood"].details["output_tail"]
        # two time-outs with 3 workers: far less than running every hang one after another
        assert elapsed < 20
        # the scorer keeps working after all that
        again = scorer.score_batch(["ok-5"], [{"id": 0}])
        assert again[0].score == 1.0
        pids = _worker_pids()
        assert pids
    time.sleep(0.2)
    assert not (_worker_pids() & pids)


def test_environment_score_batch_uses_workers_when_asked():
    env = load("_test_hostile_checks")
    sequential = env.score_batch(["a", "b"], [{"id": 0}, {"id": 1}])
    assert [fb.details["pid"] for fb in sequential] == [os.getpid()] * 2
    parallel = env.score_batch(["a", "hang", "b"], [{"id": i} for i in range(3)], workers=2, timeout_s=1.0)
    assert [fb.score for fb in parallel] == [1.0, 0.0, 1.0]
    assert parallel[1].feedback == "Environment check timed out after 1 s"
    assert parallel[0].details["pid"] != os.getpid()
    # configured by attributes, as a trainer would
    env.score_workers, env.score_timeout_s = 1, 1.0
    assert [fb.details["echo"] for fb in env.score_batch(["c"], [{"id": 0}])] == ["c"]
    shutdown(env)
    with pytest.raises(ValueError):
        env.score_batch(["a"], [{"id": 0}, {"id": 1}], workers=1)


def test_code_environment_in_workers():
    env = load("code")
    row = env.load_split("test")[9]  # sum_numbers (stdin)
    responses = [
        "```python\nn = int(input())\nprint(sum(map(int, input().split())) if n else 0)\n```",
        "```python\nprint(0)\n```",
        "no code at all",
    ]
    results = env.score_batch(responses, [row] * 3, workers=2, timeout_s=30)
    assert [fb.score for fb in results] == [1.0, 0.0, 0.0]
    assert results[1].feedback.startswith("Test Case")
    assert results[2].details["incorrect_format"] == 1
    shutdown(env)


def test_unpicklable_environment_is_refused_clearly():
    with pytest.raises(TypeError, match="cannot be sent to worker processes"):
        ParallelScorer(UnpicklableEnv(), workers=1)


def test_environment_that_cannot_load_in_a_worker_raises():
    scorer = ParallelScorer(BrokenInWorkerEnv(), workers=1, timeout_s=5)
    try:
        with pytest.raises(
            RuntimeError, match="could not be loaded in a worker process: RuntimeError: cannot load here"
        ):
            scorer.score_batch(["a"], [{"id": 0}])
    finally:
        scorer.close()


def test_invalid_settings():
    with pytest.raises(ValueError):
        ParallelScorer(HostileChecksEnv(), workers=0)
    with pytest.raises(ValueError):
        ParallelScorer(HostileChecksEnv(), timeout_s=0)
    scorer = ParallelScorer(HostileChecksEnv(), workers=1)
    scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score_batch(["a"], [{"id": 0}])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
