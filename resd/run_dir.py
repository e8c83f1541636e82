"""The layout of a run directory: the one place that knows where a run keeps what.

::

    RUN/
      config.yaml          the full configuration (resumes and evaluations read it)
      metrics.jsonl        one line per logged step ({"step": N, ...})
      samples.jsonl        a few rollouts per step
      curation.jsonl       RESD: every curator call (raw output, parsed operations)
      best.json            {"step", "metric", "value"} of the best validation
      checkpoints/step-NNNNNN/   verified checkpoints (manifest, safetensors, objects)
      eval/<name>_summary.json, <name>_samples.jsonl   evaluations (step-NNNNNN_* during training)
      playbook/step-NNNNNN.txt (global) or .json (per example)   RESD playbook snapshots
      tensorboard/         TensorBoard events when logging.tensorboard is on

The trainer, the CLI (``resd eval|solve|playbook --run``), the report and the evaluation go through
:class:`RunDir` for every path and for choosing a checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_STEP = re.compile(r"^step-(\d+)$")


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

    def is_run(self) -> bool:
        return self.config.is_file()

    @staticmethod
    def step_name(step: int) -> str:
        """``step-NNNNNN``: the name of a checkpoint, and the prefix of evaluations and snapshots of a step."""
        return f"step-{step:06d}"

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
            if not self.best.is_file():
                raise CheckpointError(f"{self.root} has no best.json (no validation ran)")
            try:
                step = int(json.loads(self.best.read_text(encoding="utf-8"))["step"])
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{self.best}: unreadable ({e})") from None
            path = self.checkpoints / self.step_name(step)
        else:
            try:
                path = self.checkpoints / self.step_name(int(which))
            except ValueError:
                raise CheckpointError(f"checkpoint {which!r}: use 'latest', 'best' or a step number") from None
        if path is None or not path.is_dir():
            raise CheckpointError(f"no checkpoint {which!r} in {self.checkpoints}")
        return path
