"""Run directory logging: ``metrics.jsonl`` (one line per step), samples, and the experiment trackers
of ``logging.report_to`` (W&B, TensorBoard, trackio; each an optional import).

A W&B run's id is kept in the run directory (``trackers.json``), so a resumed run continues the same
W&B run (``resume="allow"``); trackio resumes by run name.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import secrets
import string
from collections.abc import Sequence
from typing import Any

from resd.fileio import atomic_write_text
from resd.run_dir import RunDir

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _cell(value: Any) -> Any:
    """A table cell: plain JSON values as they are, anything else as text."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def _table(table_class: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """``table_class(columns=..., data=...)`` of the rows (``wandb.Table`` and ``trackio.Table`` take the same)."""
    columns = _columns(rows)
    return table_class(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows])


def new_run_id() -> str:
    """A fresh tracker run id: 8 lowercase letters and digits (W&B's form)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class Tracker:
    """One experiment tracker: scalars per step, tables of samples, results of ``resd eval``."""

    name = ""

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_table(self, key: str, rows: Sequence[dict[str, Any]], step: int) -> None:
        raise NotImplementedError

    def log_eval(self, name: str, summary: dict[str, float], step: int | None, rows: Sequence[dict[str, Any]]) -> None:
        """An evaluation of the checkpoint of ``step`` (``name``: its split and k, e.g. ``arithmetic-test-k4``)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class WandbTracker(Tracker):
    """Weights & Biases. The run id is stored in the run directory and reused, with ``resume="allow"``."""

    name = "wandb"

    def __init__(self, wandb: Any, run: RunDir, config: dict[str, Any], project: str, name: str,
                 group: str | None, tags: Sequence[str]) -> None:
        self.wandb = wandb
        run_id = run.tracker_id("wandb")
        if run_id is None:
            run_id = new_run_id()
            run.save_tracker_id("wandb", run_id)  # before init: a crash inside init still resumes this id
        self.run_id = run_id
        run.wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, group=group, tags=list(tags) or None, config=config,
                              id=run_id, resume="allow", dir=str(run.root))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, key: str, rows: Sequence[dict[str, Any]], step: int) -> None:
        self.run.log({key: _table(self.wandb.Table, rows)}, step=step)

    def log_eval(self, name: str, summary: dict[str, float], step: int | None, rows: Sequence[dict[str, Any]]) -> None:
        # after training W&B's own step has moved on: eval/* get their own x-axis, the checkpoint's step
        self.run.define_metric("eval/*", step_metric="eval/step")
        values = {f"eval/{name}/{k}": v for k, v in summary.items()}
        self.run.summary.update(values)
        record: dict[str, Any] = {**values, "eval/step": step if step is not None else 0}
        if rows:
            record[f"eval/{name}/samples_table"] = _table(self.wandb.Table, rows)
        self.run.log(record)

    def close(self) -> None:
        self.run.finish()


class TensorBoardTracker(Tracker):
    """TensorBoard event files in ``RUN/tensorboard`` (tables as markdown text)."""

    name = "tensorboard"

    def __init__(self, run: RunDir) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.tensorboard))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    @staticmethod
    def _markdown(rows: Sequence[dict[str, Any]]) -> str:
        columns = _columns(rows)

        def cell(value: Any) -> str:
            return str(_cell(value)).replace("|", "\\|").replace("\n", "<br>")

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
        return "\n".join(lines)

    def log_table(self, key: str, rows: Sequence[dict[str, Any]], step: int) -> None:
        self.writer.add_text(key, self._markdown(rows), step)

    def log_eval(self, name: str, summary: dict[str, float], step: int | None, rows: Sequence[dict[str, Any]]) -> None:
        for k, v in summary.items():
            self.writer.add_scalar(f"eval/{name}/{k}", v, step or 0)
        if rows:
            self.writer.add_text(f"eval/{name}/samples_table", self._markdown(rows), step or 0)

    def close(self) -> None:
        self.writer.close()


class TrackioTracker(Tracker):
    """trackio (local or a Space); a resumed run continues the run of the same name (``resume="allow"``)."""

    name = "trackio"

    def __init__(self, trackio: Any, config: dict[str, Any], project: str, name: str, group: str | None) -> None:
        self.trackio = trackio
        extra = {"group": group} if group else {}  # (older trackio versions have no group)
        trackio.init(project=project, name=name, config=config, resume="allow", **extra)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    def log_table(self, key: str, rows: Sequence[dict[str, Any]], step: int) -> None:
        self.trackio.log({key: _table(self.trackio.Table, rows)}, step=step)

    def log_eval(self, name: str, summary: dict[str, float], step: int | None, rows: Sequence[dict[str, Any]]) -> None:
        self.trackio.log({**{f"eval/{name}/{k}": v for k, v in summary.items()}, "eval/step": step or 0})

    def close(self) -> None:
        self.trackio.finish()


class RunLogger:
    """Appends metrics to ``metrics.jsonl`` and samples to ``samples.jsonl``, and forwards both to the
    trackers of ``report_to`` (nothing is written or reported when not ``enabled``: every rank but the first)."""

    def __init__(self, run: RunDir, config: dict[str, Any], report_to: Sequence[str] = (), *, project: str = "resd",
                 name: str | None = None, group: str | None = None, tags: Sequence[str] = (),
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.run = run
        self.metrics_path = run.metrics
        self.samples_path = run.samples
        self.trackers: list[Tracker] = []
        self._failed_tables: set[str] = set()
        name = name or run.root.name
        for tracker in report_to if enabled else ():
            self.trackers.append(self._make(tracker, config, project, name, group, tags))

    @classmethod
    def for_run(cls, run: RunDir, config, enabled: bool = True) -> RunLogger:
        """The logger of a run with ``config`` (a :class:`resd.config.Config`): its ``logging`` section's
        trackers, project, run name (default: the run directory's name), group and tags."""
        lc = config.logging
        return cls(run, config.to_dict(), lc.report_to, project=lc.project, name=lc.run_name, group=lc.group,
                   tags=lc.tags, enabled=enabled)

    def _make(self, tracker: str, config: dict[str, Any], project: str, name: str, group: str | None,
              tags: Sequence[str]) -> Tracker:
        try:
            if tracker == "wandb":
                return WandbTracker(importlib.import_module("wandb"), self.run, config, project, name, group, tags)
            if tracker == "trackio":
                return TrackioTracker(importlib.import_module("trackio"), config, project, name, group)
            if tracker == "tensorboard":
                return TensorBoardTracker(self.run)
        except ImportError:
            raise RuntimeError(f"logging.report_to has {tracker!r} but {tracker} is not installed "
                               f"(pip install 'resd[{tracker}]')") from None
        raise ValueError(f"unknown tracker {tracker!r} in logging.report_to")

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps > ``step`` (after a resume, so the file has each step once)."""
        if not self.enabled:
            return
        for path in (self.metrics_path, self.samples_path, self.run.curation):
            if not path.exists():
                continue
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except ValueError:
                    continue  # a line cut by a crash
            atomic_write_text(path, "".join(k + "\n" for k in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(numeric, step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Rollouts of a step: lines of ``samples.jsonl`` and a ``samples_table`` in the trackers."""
        if not samples or not self.enabled:
            return
        with self.samples_path.open("a", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}) + "\n")
        self.log_table("samples_table", [{"step": step, **s} for s in samples], step)

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int) -> None:
        """A table of rows (samples) in the trackers; a tracker that cannot take one is warned about once."""
        if not rows or not self.enabled:
            return
        for tracker in self.trackers:
            try:
                tracker.log_table(key, rows, step)
            except Exception as e:  # a table is a convenience: it must not stop the run
                if tracker.name not in self._failed_tables:
                    self._failed_tables.add(tracker.name)
                    log.warning("%s: logging the table %r failed (%s: %s); tables are not sent to it", tracker.name,
                                key, type(e).__name__, e)

    def log_eval(self, name: str, summary: dict[str, float], step: int | None,
                 rows: list[dict[str, Any]] | None = None) -> None:
        """The results of ``resd eval`` on the checkpoint of ``step`` (``name``: split and k) in the trackers."""
        if not self.enabled:
            return
        numeric = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log_eval(name, numeric, step, rows or [])

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of ``key`` in ``metrics.jsonl``, in file order (the run's history, resumes included)."""
        out: list[tuple[int, float]] = []
        if not self.metrics_path.is_file():
            return out
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            value = row.get(key) if isinstance(row, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(row.get("step"), int):
                out.append((row["step"], float(value)))
        return out

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as e:  # a tracker failing at exit must not lose the run
                log.warning("closing %s failed: %s", tracker.name, e)
        self.trackers = []
