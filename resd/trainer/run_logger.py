"""Run directory logging: ``metrics.jsonl`` (one line per step), samples, and optional trackers."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from resd.fileio import atomic_write_text
from resd.run_dir import RunDir

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class RunLogger:
    """Appends metrics to ``metrics.jsonl`` and forwards them to W&B / TensorBoard / trackio if asked."""

    def __init__(self, run: RunDir, config: dict[str, Any], wandb: bool = False, tensorboard: bool = False,
                 trackio: bool = False, project: str = "resd", name: str = "run", enabled: bool = True) -> None:
        self.enabled = enabled  # False on every rank but the first
        self.run = run
        self.metrics_path = run.metrics
        self.samples_path = run.samples
        self._trackers: list[Any] = []
        if wandb:
            self._trackers.append(self._optional("wandb", lambda m: m.init(project=project, name=name, config=config)))
        if trackio:
            self._trackers.append(self._optional("trackio", lambda m: (m.init(project=project, name=name, config=config), m)[1]))
        if tensorboard:
            def make(_m):
                from torch.utils.tensorboard import SummaryWriter
                return SummaryWriter(str(run.tensorboard))
            self._trackers.append(self._optional("tensorboard", make))
        self._trackers = [t for t in self._trackers if t is not None]

    @staticmethod
    def _optional(module: str, make):
        try:
            mod = __import__(module)
            return make(mod)
        except ImportError:
            raise RuntimeError(f"logging.{module}=true but {module} is not installed (pip install 'resd[{module}]')") from None

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
        for tracker in self._trackers:
            if hasattr(tracker, "add_scalar"):
                for k, v in numeric.items():
                    tracker.add_scalar(k, v, step)
            else:
                tracker.log(numeric, step=step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if not samples or not self.enabled:
            return
        with self.samples_path.open("a", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}) + "\n")

    def close(self) -> None:
        for tracker in self._trackers:
            for method in ("finish", "close"):
                if hasattr(tracker, method):
                    try:
                        getattr(tracker, method)()
                    except Exception as e:  # a tracker failing at exit must not lose the run
                        log.warning("closing tracker failed: %s", e)
                    break
