"""What a run prints (start summary, metrics lines, validation lines, closing summary), and the files
``resd eval`` writes (one per checkpoint, split and k, with their provenance; aliases shown once)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from resd.trainer.console import Console, fmt_count, fmt_number, step_line, validation_line

TESTS = Path(__file__).parent
SMOKE = ["logging.progress=false", "logging.log_every=1", "train.steps=2", "eval.before_train=true",
         "eval.every_steps=2", "eval.k=2", "data.val_limit=3"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, run_cli):
    """One ``resd train --preset smoke`` run (2 steps, validation before and after), its console and directory."""
    run_dir = tmp_path_factory.mktemp("console") / "run"
    text = run_cli("train", "--preset", "smoke", f"logging.run_dir={run_dir}", *SMOKE)
    return text, run_dir


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _summary(run_dir: Path, step: int) -> dict:
    return json.loads((run_dir / "eval" / f"step-{step:06d}_summary.json").read_text())


# ------------------------------------------------------------------------------------------ formatting
def test_small_numbers_are_printed_in_scientific_notation():
    assert fmt_number(8.9e-08) == "8.90e-08" and fmt_number(-2.5e-05) == "-2.50e-05"
    assert fmt_number(0.0) == "0" and fmt_number(0.375) == "0.375" and fmt_number(0.001) == "0.001"
    assert fmt_number(12.34) == "12.3" and fmt_number(12345.6) == "12346" and fmt_number(3) == "3"
    assert fmt_count(494_032_768) == "494M" and fmt_count(2_160_000) == "2.16M" and fmt_count(512) == "512"
    line = step_line(3, 16, {"reward/mean": 0.375, "acc/mean": 0.5, "loss/distill": 8.9e-08,
                             "response_length/mean": 12.25, "time/step_s": 2.414})
    assert line == "step 3/16  reward=0.375  acc=0.5  loss=8.90e-08  len=12.2  time=2.41s"
    assert "\n" not in line and "0.0000" not in line
    mixed = step_line(1, None, {"loss/distill": 0.25, "loss/pg": -3e-4})
    assert mixed == "step 1  distill_loss=0.25  pg_loss=-3.00e-04"


def test_validation_line_shows_an_alias_family_once():
    summary = {"task/mean@2": 0.25, "task/best@2": 0.5, "score/mean@2": 0.25, "score/best@2": 0.5,
               "test_case/mean@2": 0.4, "test_case/best@2": 0.6, "acc/mean@2": 0.4, "acc/best@2": 0.6, "pass@2": 0.5}
    line = validation_line(4, "test", 8, 2, summary, {"score": "task", "acc": "test_case"}, best=True)
    assert line == ("validation after step 4 (test, 8 prompts x 2): task/mean@2=0.25 task/best@2=0.5 "
                    "test_case/mean@2=0.4 test_case/best@2=0.6 pass@2=0.5 [task = score, test_case = acc] (new best)")


def test_a_disabled_console_prints_nothing(capsys):
    Console(enabled=False).print("rank 1 says hello")
    Console(enabled=False).block("title", [("a", "b")])
    Console(enabled=True).print("rank 0 says hello")
    assert capsys.readouterr().out == "rank 0 says hello\n"


# ------------------------------------------------------------------------------------------ a smoke run
def test_start_summary_comes_before_the_first_step(smoke):
    text, run_dir = smoke
    lines = text.splitlines()
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step "))
    head = "\n".join(lines[:first_step])
    assert lines[0] == "loading model tiny (fp32) ..."
    assert "resd run smoke" in head
    assert re.search(r"model\s+tiny \(fp32\) on cpu", head)
    from safetensors.torch import load_file

    student = load_file(str(run_dir / "checkpoints" / "step-000002" / "student.safetensors"))
    total = fmt_count(sum(t.numel() for t in student.values()))
    assert re.search(rf"parameters\s+{re.escape(total)} trainable of {re.escape(total)}", head), head
    assert re.search(r"algorithm\s+sdpo, standard schedule, 2 steps, 4 prompts x 4 rollouts per step", head)
    assert re.search(r"data\s+arithmetic: 32 train rows, 3 val \(test, k=2\)", head)
    assert re.search(rf"run dir\s+{re.escape(str(run_dir))}$", head, re.M)


def test_one_metrics_line_per_logged_step_with_small_losses_in_scientific_notation(smoke):
    text, run_dir = smoke
    step_lines = [line for line in text.splitlines() if line.startswith("step ")]
    logged = [row for row in _metrics(run_dir) if "reward/mean" in row]
    assert [line.split()[1] for line in step_lines] == ["1/2", "2/2"] and len(logged) == 2
    for line, row in zip(step_lines, logged, strict=True):
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        assert set(fields) == {"reward", "acc", "loss", "len", "time"}, line
        assert fields["reward"] == fmt_number(row["reward/mean"]) and fields["acc"] == fmt_number(row["acc/mean"])
        assert fields["loss"] == fmt_number(row["loss/distill"])
        assert fields["len"] == fmt_number(row["response_length/mean"])
        if 0 < abs(row["loss/distill"]) < 1e-3:
            assert re.fullmatch(r"-?\d\.\d\de-\d\d", fields["loss"]), line
    assert any(0 < abs(row["loss/distill"]) < 1e-3 for row in logged)  # the smoke model's losses are ~1e-7
    assert "0.0000" not in text


def test_validation_results_are_printed_when_computed(smoke):
    text, run_dir = smoke
    lines = text.splitlines()
    val = [line for line in lines if line.startswith("validation after step")]
    assert [line.split()[3] for line in val] == ["0", "2"]
    assert lines.index(val[0]) < next(i for i, line in enumerate(lines) if line.startswith("step 1/2"))
    for line, step in zip(val, (0, 2), strict=True):
        summary = _summary(run_dir, step)
        assert line.startswith(f"validation after step {step} (test, 3 prompts x 2): ")
        assert f"task/mean@2={fmt_number(summary['task/mean@2'])}" in line
        assert f"pass@2={fmt_number(summary['pass@2'])}" in line
        assert summary["aliases"] == {"test_case": "task", "score": "task", "acc": "task"}  # arithmetic: one 0/1 quantity under four names
        for alias in summary["aliases"]:  # a family repeating another's values is not printed again
            assert f" {alias}/mean@2=" not in line
    assert val[0].endswith("(new best)")


def test_closing_summary_ends_the_output(smoke):
    text, run_dir = smoke
    lines = text.rstrip("\n").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("done: "))
    assert re.fullmatch(r"done: 2 steps, 32 rollouts in \S+", lines[start])
    closing = "\n".join(lines[start:])
    before, after = _summary(run_dir, 0)["task/mean@2"], _summary(run_dir, 2)["task/mean@2"]
    best = json.loads((run_dir / "best.json").read_text())
    expected = (f"{fmt_number(before)} at step 0 -> {fmt_number(after)} at step 2 "
                f"(best {fmt_number(best['value'])} at step {best['step']}) [test]")
    assert re.search(rf"held-out task/mean@2\s+{re.escape(expected)}$", closing, re.M), closing
    assert re.search(rf"run dir\s+{re.escape(str(run_dir))}$", closing, re.M)
    assert lines[-1].split() == ["report", "resd", "report", str(run_dir)]
    assert "run directory:" not in text  # said once, by the summaries


def test_eval_of_best_and_latest_writes_separate_files_with_their_provenance(smoke, run_cli):
    _, run_dir = smoke
    best = json.loads((run_dir / "best.json").read_text())
    assert best["best_metric"] == "task/mean" and best["metric"] == "task/mean@2" and best["k"] == 2
    # the step-0 validation is always the first best and always checkpointed: make it the best
    saved = (run_dir / "best.json").read_text()
    (run_dir / "best.json").write_text(json.dumps({**best, "step": 0}))
    printed = {}
    try:
        for which in ("best", "latest"):
            printed[which] = run_cli("eval", "--run", str(run_dir), "--step", which, "--limit", "2", "--k", "2",
                                  "logging.progress=false")
    finally:
        (run_dir / "best.json").write_text(saved)
    files = {which: run_dir / "eval" / f"arithmetic-test-step{step}-k2_summary.json"
             for which, step in (("best", 0), ("latest", 2))}
    for which, path in files.items():
        assert path.is_file() and path.with_name(path.name.replace("_summary.json", "_samples.jsonl")).is_file()
        data = json.loads(path.read_text())
        origin = data["provenance"]
        assert data["prompts"] == 2 and data["samples"] == 4  # the metrics stay at the top level
        assert {k: origin[k] for k in ("model", "run_dir", "step", "checkpoint", "k", "limit", "split", "data_path",
                                       "temperature", "top_p", "max_new_tokens")} == {
            "model": "tiny", "run_dir": str(run_dir), "step": 0 if which == "best" else 2, "checkpoint": which,
            "k": 2, "limit": 2, "split": "test", "data_path": None, "temperature": 0.6, "top_p": 0.95,
            "max_new_tokens": 16}
        assert isinstance(origin["seed"], int) and origin["resd_version"]
        assert datetime.fromisoformat(origin["time"]).tzinfo is not None
        assert str(path) in printed[which]
        # an alias family is printed once, with a note naming it
        assert data["aliases"] == {"test_case": "task", "score": "task", "acc": "task"}
        for alias, family in data["aliases"].items():
            assert f"{alias}/mean@2" not in printed[which] and f"{family}/mean@2" in printed[which]
        assert "same values, shown once:" in printed[which]


def test_old_best_json_is_still_read(smoke, tmp_path):
    from resd.run_dir import RunDir

    _, run_dir = smoke
    run = RunDir(run_dir)
    saved = run.best.read_text()
    try:
        run.best.write_text(json.dumps({"step": 2, "metric": "task/mean@2", "value": 0.0}))  # before best_metric
        assert run.load_best() == {"step": 2, "metric": "task/mean@2", "best_metric": "task/mean", "k": 2,
                                   "value": 0.0}
        assert run.checkpoint_step("best") == 2 and run.checkpoint_step("latest") == 2
    finally:
        run.best.write_text(saved)


# ------------------------------------------------------------------------------------------ torchrun
@pytest.mark.slow
def test_one_console_and_one_progress_bar_under_torchrun(tmp_path):
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    result = subprocess.run(  # --redirects 3: each rank's stdout and stderr in its own files under logs/
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", f"--log-dir={logs}",
         "--redirects=3", "-m", "resd.cli", "train", "--preset", "smoke", f"logging.run_dir={run_dir}",
         "train.steps=1", "rollout.n=2", "rollout.max_new_tokens=8", "eval.before_train=true", "eval.k=1",
         "data.val_limit=2", "logging.progress=true"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    def read(rank: int, stream: str) -> str:
        (path,) = logs.rglob(f"{rank}/{stream}.log")
        return path.read_text()

    out = read(0, "stdout")
    for marker in ("loading model tiny", "resd run smoke", "validation after step 0", "step 1/1", "done: 1 steps"):
        assert out.count(marker) == 1, (marker, out)
    assert "2 processes" in out and "smoke:" in read(0, "stderr")  # rank 0: the console and the progress bar
    assert read(1, "stdout") == ""  # rank 1: neither
    assert "smoke:" not in read(1, "stderr") and "FSDP2 sharding active: rank 1 of 2" in read(1, "stderr")


# ------------------------------------------------------------------------------------------ aliases
def test_alias_families_are_found_sample_by_sample_and_across_summaries():
    from resd.evaluation.metrics import alias_note, family_aliases, value_aliases, without_aliases

    values = {"score": [[1.0, 0.0]], "acc": [[0.5, 0.25]], "task": [[1.0, 0.0]], "test_case": [[0.5, 0.25]]}
    assert family_aliases(values) == {"score": "task", "acc": "test_case"}
    assert family_aliases({**values, "score": [[1.0, 0.5]]}) == {"acc": "test_case"}  # one sample differs
    aliases = {"score": "task", "acc": "test_case"}
    assert alias_note(aliases) == "task = score, test_case = acc"
    assert without_aliases({"score/mean@2": 1, "task/mean@2": 1, "pass@2": 1, "acc": 2}, aliases) == {
        "task/mean@2": 1, "pass@2": 1, "acc": 2}
    rows = [{"val/task/mean@4": 0.5, "val/score/mean@4": 0.5}, {"val/task/mean@4": 0.25, "val/score/mean@4": 0.25},
            {"reward/mean": 1.0}]
    assert value_aliases(rows, prefix="val/") == {"score": "task"}
    rows[1]["val/score/mean@4"] = 0.3
    assert value_aliases(rows, prefix="val/") == {}


def test_report_shows_an_alias_family_once(tmp_path):
    from resd.report import write_report

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\n")
    metrics = [{"step": s, "reward/mean": 0.1 * s, "val/task/mean@4": 0.1 * s, "val/score/mean@4": 0.1 * s,
                "val/test_case/mean@4": 0.2 * s, "val/acc/mean@4": 0.3 * s} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for name, value in (("step-000002", 0.5), ("arithmetic-test-step2-k4", 0.25)):
        summary = {"task/mean@4": value, "score/mean@4": value, "test_case/mean@4": 0.75, "acc/mean@4": 0.5,
                   "aliases": {"score": "task"}, "provenance": {"step": 2}}
        (run / "eval" / f"{name}_summary.json").write_text(json.dumps(summary))
    page = write_report([run], tmp_path / "report" / "index.html").read_text()
    table = page[page.index('id="eval"'):]
    assert "task/<wbr>mean@4" in table and "score/<wbr>mean@4" not in table
    assert "acc/<wbr>mean@4" in table  # acc differs from test_case: both stay
    assert "same values, shown once: task = score" in table
    assert "arithmetic-test-step2-k4" in table
    assert 'alt="val/task/mean@4' in page and 'alt="val/score/mean@4' not in page and 'alt="val/acc/mean@4' in page
