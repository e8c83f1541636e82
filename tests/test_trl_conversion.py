"""docs/from-trl.md, end to end: the page's reward module and config, as written, train from the CLI on a
TRL-style ``prompt`` dataset (a ``datasets`` save_to_disk directory and a JSONL of the same), with the
user's module in the current directory and nothing edited in resd (issue 23)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "from-trl.md"
ROWS = [  # TRL's conversational format, plus a column the reward functions read and one they ignore
    {"prompt": [{"role": "user", "content": "What is 2 + 3? Put the answer in <answer></answer> tags."}],
     "solution": "5", "level": 1},
    {"prompt": [{"role": "user", "content": "What is 4 + 4?"}], "solution": "8", "level": 1},
    {"prompt": [{"role": "user", "content": "What is 7 - 2?"}], "solution": "5", "level": 2},
    {"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 3 * 3?"}],
     "solution": "9", "level": 2},
]
FAST = ["train", "--preset", "smoke", "--config", "resd.yaml", "model.name=tiny", "model.precision=fp32",
        "train.steps=2", "train.batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8", "logging.progress=false"]


def doc_block(first_line: str) -> str:
    """The fenced block of docs/from-trl.md whose first line is ``first_line``."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        if block.startswith(first_line + "\n"):
            return block
    raise AssertionError(f"no block starting with {first_line!r} in {DOC}")


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # -P: like the installed `resd` script, the current directory is not on sys.path
    return subprocess.run([sys.executable, "-P", "-m", "resd.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=400)


@pytest.fixture()
def project(tmp_path):
    """A user's directory: the page's my_rewards.py and resd.yaml, and the data as JSONL."""
    (tmp_path / "my_rewards.py").write_text(doc_block("# my_rewards.py"), encoding="utf-8")
    (tmp_path / "resd.yaml").write_text(doc_block("# resd.yaml"), encoding="utf-8")
    (tmp_path / "my-math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return tmp_path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_save_to_disk_dataset_trains_with_the_docs_reward_functions(project):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(project / "my-math"))
    out = run_cli([*FAST, "data.train_path=my-math", "logging.run_dir=run"], project)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = read_jsonl(project / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics if "reward/mean" in m] == [1, 2]
    samples = read_jsonl(project / "run" / "samples.jsonl")
    assert samples and all(s["example_id"].startswith("row") for s in samples)
    assert all(s["feedback"] for s in samples if s["acc"] < 1)  # explain() ran (grpo ignores it)


@pytest.mark.slow
def test_jsonl_trains_with_sdpo_from_the_feedback_functions(project):
    out = run_cli([*FAST, "algorithm=sdpo", "data.train_path=my-math.jsonl", "logging.run_dir=run"], project)
    assert out.returncode == 0, out.stderr[-3000:]
    samples = read_jsonl(project / "run" / "samples.jsonl")
    failed = [s for s in samples if s["acc"] < 1]
    assert failed and all(re.search(r"correct answer is \d|gave no number", s["feedback"]) for s in failed)
    assert any(s["feedback"] in (s.get("teacher_prompt") or "") for s in failed)  # the teacher read it


def test_print_config_checks_the_functions(project):
    out = run_cli(["--verbose", "train", "--config", "resd.yaml", "--print-config"], project)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "- my_rewards:accuracy_reward" in out.stdout and "train_path: hf:my-org/my-math" in out.stdout
    (project / "my_rewards.py").write_text("def format_reward(completions, **kwargs):\n    return []\n")
    out = run_cli(["train", "--config", "resd.yaml", "--print-config"], project)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot import 'my_rewards:accuracy_reward': module 'my_rewards' has no attribute" in out.stderr
