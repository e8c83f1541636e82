"""Read a run directory into plain data for the report, tolerating missing files and garbled lines.

A run that crashed mid-write leaves cut lines in ``metrics.jsonl`` or ``samples.jsonl``, or no
``config.yaml`` at all; the report must still be written. Every reader here therefore returns what
it could read and appends a human-readable note to :attr:`RunData.warnings` for what it skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from resd.run_dir import RunDir

_STEP_FILE = re.compile(r"^step-(\d+)$")


@dataclasses.dataclass
class PlaybookSnapshot:
    """The playbook after one step: ``texts`` maps a playbook key to its text ("" for the global one)."""

    step: int
    texts: dict[str, str]
    per_example: bool


@dataclasses.dataclass
class EvalSummary:
    """One ``eval/*_summary.json``: ``step`` is None for files not named ``step-NNNNNN_summary.json``."""

    name: str
    step: int | None
    summary: dict[str, float]
    samples_path: Path | None
    #: what was evaluated and how (files written before provenance was recorded: empty)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunData:
    """Everything the report shows about one run."""

    path: Path
    config: dict[str, Any]
    metrics: dict[int, dict[str, float]]
    samples: list[dict[str, Any]]
    playbooks: list[PlaybookSnapshot]
    evals: list[EvalSummary]
    best: dict[str, Any] | None
    checkpoints: list[int]
    warnings: list[str]
    label: str = ""

    @property
    def name(self) -> str:
        """The config's ``name``, else the directory name."""
        name = self.config.get("name")
        return str(name) if name not in (None, "") else self.path.name

    def series(self, key: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(xs, ys) of metric ``key`` against ``x`` ("step" or another metric such as
        ``progress/rollouts``), over the steps where both are finite numbers, sorted by step."""
        xs, ys = [], []
        for step in sorted(self.metrics):
            row = self.metrics[step]
            y = row.get(key)
            xv = float(step) if x == "step" else row.get(x)
            if y is not None and xv is not None:
                xs.append(xv)
                ys.append(y)
        return xs, ys


def as_number(value: Any) -> float | None:
    """A finite float from a JSON value, else None (booleans, strings such as "inf", NaN, null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _step_of(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def read_jsonl(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; unreadable lines and non-objects are skipped and counted."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        warnings.append(f"{path.name}: cannot be read ({e})")
        return []
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        warnings.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return rows


def merge_metrics(rows: list[dict[str, Any]], warnings: list[str] | None = None) -> dict[int, dict[str, float]]:
    """step -> {metric: value}, merging the lines of one step (training and ``val/`` lines share
    step numbers; a later line wins for a repeated key). Non-numeric values are dropped."""
    merged: dict[int, dict[str, float]] = {}
    no_step = 0
    for row in rows:
        step = _step_of(row.get("step"))
        if step is None:
            no_step += 1
            continue
        target = merged.setdefault(step, {})
        for key, value in row.items():
            number = as_number(value)
            if key != "step" and number is not None:
                target[str(key)] = number
    if no_step and warnings is not None:
        warnings.append(f"metrics.jsonl: {no_step} line(s) without a valid step skipped")
    return merged


def read_config(path: Path, warnings: list[str]) -> dict[str, Any]:
    if not path.is_file():
        warnings.append("config.yaml is missing")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except (yaml.YAMLError, OSError) as e:
        warnings.append(f"config.yaml cannot be parsed ({type(e).__name__})")
        return {}
    if not isinstance(data, dict):
        warnings.append("config.yaml is not a mapping")
        return {}
    return data


def _numbered(folder: Path, pattern: str) -> list[tuple[int, Path]]:
    """(step, path) of ``step-NNNNNN<suffix>`` entries of a folder, sorted by step."""
    found = []
    for path in folder.glob(pattern) if folder.is_dir() else []:
        stem = path.name.split(".", 1)[0].split("_", 1)[0]
        match = _STEP_FILE.match(stem)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_playbooks(folder: Path, warnings: list[str]) -> list[PlaybookSnapshot]:
    """Snapshots ``playbook/step-N.txt`` (global) and ``step-N.json`` (key -> text, per example)."""
    snapshots: dict[int, PlaybookSnapshot] = {}
    bad = 0
    for step, path in _numbered(folder, "step-*"):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            bad += 1
            continue
        if path.suffix == ".txt":
            snapshots[step] = PlaybookSnapshot(step, {"": text.rstrip("\n")}, per_example=False)
        elif path.suffix == ".json":
            try:
                data = json.loads(text)
            except ValueError:
                bad += 1
                continue
            if not isinstance(data, dict):
                bad += 1
                continue
            texts = {str(k): v if isinstance(v, str) else str(v) for k, v in data.items()}
            snapshots[step] = PlaybookSnapshot(step, texts, per_example=True)
    if bad:
        warnings.append(f"playbook/: {bad} unreadable snapshot(s) skipped")
    return [snapshots[s] for s in sorted(snapshots)]


def read_evals(folder: Path, warnings: list[str]) -> list[EvalSummary]:
    """Every ``eval/*_summary.json``, step-numbered ones first in step order."""
    found = []
    for path in sorted(folder.glob("*_summary.json")) if folder.is_dir() else []:
        prefix = path.name[: -len("_summary.json")]
        try:
            data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except (ValueError, OSError):
            warnings.append(f"eval/{path.name} cannot be parsed")
            continue
        if not isinstance(data, dict):
            warnings.append(f"eval/{path.name} is not a JSON object")
            continue
        summary = {str(k): n for k, v in data.items() if (n := as_number(v)) is not None}
        match = _STEP_FILE.match(prefix)
        samples = folder / f"{prefix}_samples.jsonl"
        origin = data.get("provenance")
        found.append(EvalSummary(prefix, int(match.group(1)) if match else None, summary,
                                 samples if samples.is_file() else None, origin if isinstance(origin, dict) else {}))
    return sorted(found, key=lambda e: (e.step is None, e.step or 0, e.name))


def read_best(run: RunDir, warnings: list[str]) -> dict[str, Any] | None:
    try:
        return run.load_best()
    except ValueError as e:
        warnings.append(str(e).replace(f"{run.best}: ", "best.json: "))
        return None


def load_run(path: str | Path) -> RunData:
    """Read a run directory; never raises for missing or damaged files (see ``warnings``)."""
    run = RunDir(path)
    warnings: list[str] = []
    config = read_config(run.config, warnings)
    metric_rows = read_jsonl(run.metrics, warnings)
    if not run.metrics.is_file():
        warnings.append("metrics.jsonl is missing")
    metrics = merge_metrics(metric_rows, warnings)
    samples = [s for s in read_jsonl(run.samples, warnings) if _step_of(s.get("step")) is not None]
    checkpoints = run.checkpoint_steps()
    return RunData(
        path=run.root,
        config=config,
        metrics=metrics,
        samples=samples,
        playbooks=read_playbooks(run.playbook_dir, warnings),
        evals=read_evals(run.eval_dir, warnings),
        best=read_best(run, warnings),
        checkpoints=checkpoints,
        warnings=warnings,
    )


def assign_labels(runs: list[RunData]) -> None:
    """Give every run a distinct legend label: its name, with the directory added where names repeat."""
    names = [r.name for r in runs]
    for run in runs:
        run.label = run.name if names.count(run.name) == 1 else f"{run.name} ({run.path.name})"
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):
        if labels.count(run.label) > 1:
            run.label = f"{run.label} #{i + 1}"
