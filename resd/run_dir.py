"""The layout of a run directory: the one place that knows where a run keeps what.

::

    RUN/
      config.yaml          the full configuration (resumes and evaluations read it)
      metrics.jsonl        one line per logged step ({"step": N, ...})
      samples.jsonl        a few rollouts per step
      curation.jsonl       RESD: every curator call (raw output, parsed operations)
      best.json            {"step", "best_metric", "metric", "k", "value"} of the best validation
                           (best_metric as eval.best_metric; metric: the summary key, with @k)
      checkpoints/step-NNNNNN/   verified checkpoints (manifest, safetensors, objects)
      eval/<name>_summary.json, <name>_samples.jsonl   evaluations: step-NNNNNN_* during training,
                           <env>-<split>-step<N>-k<k>_* from ``resd eval --run`` (see :meth:`RunDir.eval_name`)
      playbook/step-NNNNNN.txt (global) or .json (per example)   RESD playbook snapshots
      trackers.json        run ids of the experiment trackers ({"wandb": "..."}), reused on resume
      tensorboard/         TensorBoard events when logging.report_to has tensorboard
      wandb/               W&B's local files when logging.report_to has wandb

The trainer, the CLI (``resd eval|solve|playbook --run``), the report and the evaluation go through
:class:`RunDir` for every path and for choosing a checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_STEP = re.compile(r"^step-(\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RunDir:
    """Paths of one run directory (nothing is created until something is written)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    samples = property(lambda self: self.root / "samples.jsonl")
    curation = property(lambda self: self.root / "curation.jsonl")
    best = property(lambda self: self.root / "best.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    eval_dir = property(lambda self: self.root / "eval")
    playbook_dir = property(lambda self: self.root / "playbook")
    tensorboard = property(lambda self: self.root / "tensorboard")
    trackers = property(lambda self: self.root / "trackers.json")
    wandb_dir = property(lambda self: self.root / "wandb")

    def is_run(self) -> bool:
        return self.config.is_file()

    @staticmethod
    def step_name(step: int) -> str:
        """``step-NNNNNN``: the name of a checkpoint, and the prefix of evaluations and snapshots of a step."""
        return f"step-{step:06d}"

    @staticmethod
    def eval_name(env: str, split: str, step: int | None, k: int) -> str:
        """The name of one evaluation's files: ``<env>-<split>-step<N>-k<k>`` (``<env>-<split>-k<k>`` for a
        model outside a run), so evaluations of different checkpoints, splits or k never overwrite each other."""
        env = _UNSAFE.sub("_", env).strip("_") or "env"  # e.g. data.env=my_envs:MyEnv
        split = _UNSAFE.sub("_", split).strip("_") or "split"
        return f"{env}-{split}" + (f"-step{step}" if step is not None else "") + f"-k{k}"

    def load_best(self) -> dict[str, Any] | None:
        """``best.json`` with both names of the metric, also for files written before ``best_metric`` was
        (those have only ``metric``, the summary key with ``@k``); None when there is none. Raises
        ValueError naming the file when it cannot be read or names no step."""
        if not self.best.is_file():
            return None
        try:
            data = json.loads(self.best.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.best}: unreadable ({e})") from None
        step = data.get("step") if isinstance(data, dict) else None
        if isinstance(step, bool) or not isinstance(step, int | float) or not float(step).is_integer():
            raise ValueError(f"{self.best}: unreadable (no step)")
        return normalize_best({**data, "step": int(step)})

    def tracker_id(self, tracker: str) -> str | None:
        """The run id a tracker (``wandb``) was given in this run directory, if any."""
        try:
            value = json.loads(self.trackers.read_text(encoding="utf-8")).get(tracker)
        except (OSError, ValueError, AttributeError):
            return None
        return str(value) if value else None

    def save_tracker_id(self, tracker: str, run_id: str) -> None:
        """Remember a tracker's run id, so that a resumed run continues the same tracker run."""
        from resd.fileio import atomic_write_text

        try:
            ids = json.loads(self.trackers.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            ids = {}
        ids = ids if isinstance(ids, dict) else {}
        ids[tracker] = run_id
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.trackers, json.dumps(ids, indent=1))

    def playbook_snapshot(self, step: int, per_example: bool) -> Path:
        return self.playbook_dir / (self.step_name(step) + (".json" if per_example else ".txt"))

    def playbook_snapshots(self) -> dict[int, Path]:
        """Step -> snapshot file, in step order."""
        found: dict[int, Path] = {}
        folder = self.playbook_dir
        for path in sorted(folder.glob("step-*.*")) if folder.is_dir() else []:
            match = _STEP.match(path.name.split(".", 1)[0])
            if match:
                found[int(match.group(1))] = path
        return dict(sorted(found.items()))

    def checkpoint_steps(self) -> list[int]:
        folder = self.checkpoints
        steps = [int(m.group(1)) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()] if folder.is_dir() else []
        return sorted(steps)

    def checkpoint(self, which: str | int = "latest") -> Path:
        """The checkpoint ``which`` (``latest`` valid one, ``best`` validation, or a step number).

        Raises :class:`resd.trainer.checkpoint.CheckpointError` naming what is missing.
        """
        from resd.trainer.checkpoint import CheckpointError, latest_valid

        which = str(which)
        if which == "latest":
            path = latest_valid(self.checkpoints)
        elif which == "best":
            try:
                best = self.load_best()
            except ValueError as e:
                raise CheckpointError(str(e)) from None
            if best is None:
                raise CheckpointError(f"{self.root} has no best.json (no validation ran)")
            path = self.checkpoints / self.step_name(best["step"])
        else:
            try:
                path = self.checkpoints / self.step_name(int(which))
            except ValueError:
                raise CheckpointError(f"checkpoint {which!r}: use 'latest', 'best' or a step number") from None
        if path is None or not path.is_dir():
            raise CheckpointError(f"no checkpoint {which!r} in {self.checkpoints}")
        return path

    def checkpoint_step(self, which: str | int = "latest") -> int:
        """The step number of the checkpoint ``which`` (``latest``, ``best`` or a number), resolved now."""
        return int(_STEP.match(self.checkpoint(which).name).group(1))


def normalize_best(best: dict[str, Any]) -> dict[str, Any]:
    """A best-validation record with ``best_metric`` (as ``eval.best_metric`` names it), ``metric`` (the summary
    key, with ``@k``) and ``k`` where they can be told; older records had only ``metric``."""
    out = dict(best)
    metric = out.get("metric")
    if isinstance(metric, str) and "@" in metric:
        base, _, k = metric.rpartition("@")
        out.setdefault("best_metric", base)
        if k.isdigit():
            out.setdefault("k", int(k))
    elif isinstance(out.get("best_metric"), str) and "metric" not in out:
        out["metric"] = out["best_metric"] + (f"@{out['k']}" if "@" not in out["best_metric"] and "k" in out else "")
    return out
