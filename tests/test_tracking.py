"""Experiment trackers: ``logging.report_to`` (and the deprecated booleans), the W&B run id kept in the run
directory and reused on resume, sample tables and evaluation results sent to the trackers.

W&B, TensorBoard and trackio are optional: the tests with the real libraries skip when they are not
installed (W&B in offline mode, no network); the recorder below stands in for ``wandb`` only where it is not.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
import warnings
from pathlib import Path

import pytest

from resd.config import ConfigError, load_config
from resd.run_dir import RunDir
from resd.trainer.run_logger import RunLogger

TRAIN = ["logging.progress=false", "train.steps=1", "eval.before_train=true", "eval.k=1", "data.val_limit=2",
         "rollout.max_new_tokens=8", "logging.samples_per_step=2", "logging.save_every=1"]


# ------------------------------------------------------------------------------------------ configuration
def test_report_to_takes_a_list_a_name_or_none_and_rejects_unknown_trackers():
    def report_to(value: str) -> list[str]:
        return load_config("smoke", overrides=[f"logging.report_to={value}"]).logging.report_to

    assert load_config("smoke").logging.report_to == []
    assert report_to("[wandb, tensorboard]") == ["wandb", "tensorboard"]
    assert report_to("trackio") == ["trackio"] and report_to("none") == [] and report_to("[]") == []
    assert report_to("[wandb, wandb]") == ["wandb"]
    with pytest.raises(ConfigError, match=r"logging\.report_to: .*unknown tracker\(s\) 'mlflow'.*wandb, tensorboard"):
        report_to("[wandb, mlflow]")
    with pytest.raises(ConfigError, match=r"logging\.report_to"):
        report_to("{a: 1}")


def test_the_old_booleans_still_work_with_a_deprecation_warning():
    with pytest.warns(FutureWarning) as caught:
        cfg = load_config("smoke", overrides=["logging.wandb=true", "logging.tensorboard=true"])
    assert [str(w.message) for w in caught] == [
        "logging.wandb=true is deprecated; use logging.report_to=[wandb]",
        "logging.tensorboard=true is deprecated; use logging.report_to=[tensorboard]"]
    assert cfg.logging.report_to == ["wandb", "tensorboard"]
    assert "wandb" not in cfg.to_dict()["logging"]  # a saved config.yaml names report_to only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # false (in every older run's config.yaml) is dropped silently
        old = load_config("smoke", overrides=["logging.wandb=false", "logging.tensorboard=false", "logging.trackio=false"])
    assert old.logging.report_to == []
    with pytest.warns(FutureWarning):
        both = load_config("smoke", overrides=["logging.report_to=[tensorboard]", "logging.trackio=true"])
    assert both.logging.report_to == ["tensorboard", "trackio"]
    with pytest.raises(ConfigError, match=r"replaced by logging.report_to"):
        load_config("smoke", overrides=["logging.wandb=project-x"])


def test_run_dir_keeps_tracker_ids(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.tracker_id("wandb") is None  # no directory yet
    run.save_tracker_id("wandb", "abc123xy")
    run.save_tracker_id("other", "zz")
    assert run.tracker_id("wandb") == "abc123xy" and run.tracker_id("other") == "zz"
    assert json.loads(run.trackers.read_text()) == {"wandb": "abc123xy", "other": "zz"}
    run.trackers.write_text("{cut by a cra")
    assert run.tracker_id("wandb") is None
    run.save_tracker_id("wandb", "new")
    assert run.tracker_id("wandb") == "new"


def test_a_missing_tracker_package_names_report_to(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)  # import trackio -> ImportError
    with pytest.raises(RuntimeError, match=r"logging.report_to has 'trackio' but trackio is not installed "
                                           r"\(pip install 'resd\[trackio\]'\)"):
        RunLogger(RunDir(tmp_path), {}, ["trackio"])
    assert RunLogger(RunDir(tmp_path), {}, ["trackio"], enabled=False).trackers == []  # other ranks: no tracker


# ------------------------------------------------------------------------------------------ W&B
class _Recorder:
    """Stands in for the ``wandb`` module where it is not installed: records what resd passes to it."""

    def __init__(self) -> None:
        self.inits: list[dict] = []
        self.logs: list[tuple[dict, int | None]] = []
        self.defined: list[tuple] = []
        self.summary: dict = {}
        self.finished = 0

    def module(self) -> types.ModuleType:
        recorder = self
        mod = types.ModuleType("wandb")
        mod.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # (libraries probe find_spec("wandb"))

        class Table:
            def __init__(self, columns, data):
                self.columns, self.data = columns, data

        class Run:
            summary = recorder.summary

            def log(self, values, step=None):
                recorder.logs.append((values, step))

            def define_metric(self, *args, **kwargs):
                recorder.defined.append((args, kwargs))

            def finish(self):
                recorder.finished += 1

        def init(**kwargs):
            recorder.inits.append(kwargs)
            return Run()

        mod.init, mod.Table = init, Table
        return mod


def test_wandb_run_id_is_stored_and_reused_on_resume_with_tables_and_eval_results(tmp_path, monkeypatch, run_cli):
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed: test_real_wandb_offline_resumes_the_same_run covers it")
    except ImportError:
        pass
    recorder = _Recorder()
    monkeypatch.setitem(sys.modules, "wandb", recorder.module())
    run_dir = tmp_path / "run"
    run_cli("train", "--preset", "smoke", f"logging.run_dir={run_dir}", *TRAIN, "logging.report_to=wandb",
         "logging.group=seeds", "logging.tags=[smoke, test]")
    (first,) = recorder.inits
    run_id = RunDir(run_dir).tracker_id("wandb")
    assert run_id and len(run_id) == 8
    assert first == {"project": "resd", "name": "run", "group": "seeds", "tags": ["smoke", "test"],
                     "config": first["config"], "id": run_id, "resume": "allow", "dir": str(run_dir)}
    assert first["config"]["logging"]["report_to"] == ["wandb"] and (run_dir / "wandb").is_dir()
    steps = {step for values, step in recorder.logs if "reward/mean" in values}
    assert steps == {1}
    val = [values for values, step in recorder.logs if "val/task/mean@1" in values]
    assert len(val) == 1
    samples = [values["samples_table"] for values, _ in recorder.logs if "samples_table" in values]
    assert len(samples) == 1 and {"step", "response", "score", "feedback"} <= set(samples[0].columns)
    assert len(samples[0].data) == 2
    val_samples = [values["val/samples_table"] for values, _ in recorder.logs if "val/samples_table" in values]
    assert len(val_samples) == 1 and "response" in val_samples[0].columns
    assert recorder.finished == 1

    # a resumed run continues the same W&B run; the run name stays the run directory's
    run_cli("train", "--resume", str(run_dir), "train.steps=2")
    assert [i["id"] for i in recorder.inits] == [run_id, run_id] and recorder.inits[1]["resume"] == "allow"
    assert recorder.inits[1]["name"] == "run"
    assert {step for values, step in recorder.logs if "reward/mean" in values} == {1, 2}

    # resd eval --run sends its results to the same run, against the checkpoint's step
    run_cli("eval", "--run", str(run_dir), "--step", "latest", "--limit", "2", "--k", "1", "logging.progress=false")
    assert recorder.inits[-1]["id"] == run_id and len(recorder.inits) == 3
    assert (("eval/*",), {"step_metric": "eval/step"}) in recorder.defined
    record = recorder.logs[-1][0]
    assert record["eval/step"] == 2 and record["eval/arithmetic-test-k1/prompts"] == 2
    assert recorder.summary["eval/arithmetic-test-k1/task/mean@1"] == record["eval/arithmetic-test-k1/task/mean@1"]
    assert "response" in record["eval/arithmetic-test-k1/samples_table"].columns


def test_run_name_group_and_tags_reach_wandb(tmp_path, monkeypatch):
    recorder = _Recorder()
    monkeypatch.setitem(sys.modules, "wandb", recorder.module())
    run = RunDir(tmp_path / "my-run")
    logger = RunLogger(run, {"a": 1}, ["wandb"], project="p", name="custom", group="g", tags=["t"])
    logger.log(3, {"reward/mean": 0.5, "note": "text", "flag": True})
    logger.close()
    assert recorder.inits[0]["name"] == "custom" and recorder.inits[0]["group"] == "g"
    assert recorder.inits[0]["tags"] == ["t"] and recorder.inits[0]["project"] == "p"
    assert recorder.logs == [({"reward/mean": 0.5}, 3)]  # numbers only
    RunLogger(run, {}, ["wandb"]).close()
    assert recorder.inits[1]["name"] == "my-run" and recorder.inits[1]["tags"] is None  # default: the run dir's name
    assert recorder.inits[1]["id"] == recorder.inits[0]["id"]
    RunLogger(run, {}, ["wandb"], enabled=False).close()  # another rank: no tracker run
    assert len(recorder.inits) == 2


def test_real_wandb_offline_resumes_the_same_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path / "run")
    ids = []
    for step in (1, 2):
        logger = RunLogger(run, {"x": 1}, ["wandb"], project="resd-test")
        logger.log(step, {"reward/mean": 0.1 * step})
        logger.log_table("samples_table", [{"response": "42", "score": 1.0}], step)
        ids.append(wandb.run.id)
        logger.close()
    assert ids[0] == ids[1] == run.tracker_id("wandb")
    assert any(run.wandb_dir.glob(f"offline-run-*-{ids[0]}"))


# ------------------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_gets_scalars_and_sample_tables(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path / "run")
    logger = RunLogger(run, {}, ["tensorboard"])
    logger.log(1, {"reward/mean": 0.25})
    logger.log_samples(1, [{"response": "a | b", "score": 0.0}])
    logger.log_eval("arithmetic-test-k2", {"task/mean@2": 0.5}, 4, [])
    logger.close()
    events = EventAccumulator(str(run.tensorboard), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("reward/mean")] == [0.25]
    assert [(e.step, e.value) for e in events.Scalars("eval/arithmetic-test-k2/task/mean@2")] == [(4, 0.5)]
    assert any(tag.startswith("samples_table") for tag in events.Tags()["tensors"])


def test_metric_names_doc_lists_what_the_trainer_logs():
    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    for name in ("reward/mean", "acc/mean", "loss/distill", "loss/pg", "response_length/mean", "actor/grad_norm",
                 "actor/lr", "time/step_s", "val/task/mean@k", "completions/mean_length", "grad_norm", "learning_rate"):
        assert f"`{name}`" in doc, name
