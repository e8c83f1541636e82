"""RunDir: the one owner of a run directory's layout, and choosing a checkpoint."""

from __future__ import annotations

import json

import pytest

from resd.run_dir import RunDir
from resd.trainer.checkpoint import CheckpointError, save_checkpoint


def test_paths_and_checkpoint_choice(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_run()
    run.config.write_text("name: x\n")
    assert run.is_run() and run.metrics == tmp_path / "metrics.jsonl" and run.best == tmp_path / "best.json"
    assert run.playbook_snapshot(3, per_example=False) == tmp_path / "playbook" / "step-000003.txt"
    assert run.playbook_snapshot(3, per_example=True).suffix == ".json"
    with pytest.raises(CheckpointError, match="no checkpoint 'latest'"):
        run.checkpoint("latest")
    with pytest.raises(CheckpointError, match="no best.json"):
        run.checkpoint("best")
    for step in (2, 5):
        save_checkpoint(run.checkpoints, step, {}, {}, {"step": step}, keep_last=5)
    assert run.checkpoint_steps() == [2, 5]
    assert run.checkpoint().name == "step-000005" and run.checkpoint(2).name == "step-000002"
    run.best.write_text(json.dumps({"step": 2, "metric": "task/mean@1", "value": 0.5}))
    assert run.checkpoint("best").name == "step-000002"
    with pytest.raises(CheckpointError, match="'7'"):
        run.checkpoint(7)
    with pytest.raises(CheckpointError, match="latest"):
        run.checkpoint("newest")
    run.best.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        run.checkpoint("best")


def test_playbook_snapshots_in_step_order(tmp_path):
    run = RunDir(tmp_path)
    run.playbook_dir.mkdir()
    for name in ("step-000010.txt", "step-000002.txt", "notes.txt", "step-x.txt"):
        (run.playbook_dir / name).write_text("")
    assert list(run.playbook_snapshots()) == [2, 10]


@pytest.mark.parametrize("content", ['{"step": "two"}', '{"step": true}', '{"step": 1.5}', "[2]", '{"metric": "x"}'])
def test_a_best_file_without_a_step_is_named_by_every_reader(tmp_path, content):
    """RunDir owns best.json: checkpoint('best') and load_best raise naming the file, the report warns."""
    from resd.report.loading import load_run

    run = RunDir(tmp_path)
    run.best.write_text(content)
    with pytest.raises(CheckpointError, match="best.json: unreadable"):
        run.checkpoint("best")
    with pytest.raises(ValueError, match="best.json: unreadable"):
        run.load_best()
    data = load_run(tmp_path)
    assert data.best is None and "best.json: unreadable (no step)" in data.warnings
    run.best.write_text('{"step": 4.0, "metric": "task/mean@2", "value": 0.5}')
    assert run.load_best() == {"step": 4, "metric": "task/mean@2", "best_metric": "task/mean", "k": 2, "value": 0.5}
    assert load_run(tmp_path).best["step"] == 4
