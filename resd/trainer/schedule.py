"""Which prompts each training step uses, and when training ends; the same for every algorithm.

* :class:`StandardSchedule`: a fresh batch every step, epochs reshuffled, ``train.steps`` steps.
* :class:`StreamSchedule` (the RESD paper's stream loop, arXiv 2605.12741, Algorithm 1): one pass over the
  data; each outer batch is trained on for up to ``stream.inner_steps`` steps (fresh rollouts each
  time), ending early when, after ``stream.min_inner_steps``, the fraction of prompts whose mean
  score rose since the previous inner step falls below ``stream.early_exit_threshold``.

In both, ``train.steps`` counts training steps (one batch of rollouts and its update); the stream
schedule also accepts ``null`` (the whole split, or ``stream.num_batches``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resd.config import Config
from resd.sample import Sample
from resd.trainer.data_stream import DataStream


class StandardSchedule:
    """A new batch of ``train.batch_size`` prompts every step."""

    single_pass = False

    def __init__(self, config: Config, data: DataStream) -> None:
        self.config = config
        self.data = data

    def planned_steps(self) -> int:
        return self.config.train.steps

    def finished(self, step: int) -> bool:
        return step >= self.config.train.steps or self.data.exhausted(self.config.train.batch_size)

    def next_batch(self) -> list[dict[str, Any]]:
        return self.data.next_batch(self.config.train.batch_size)

    def after_step(self, samples: list[Sample]) -> dict[str, float]:
        return {}

    def due(self, step: int) -> tuple[bool, bool]:
        """(validate, save) due after ``step`` by this schedule's own rules (besides ``eval``/``logging``)."""
        return False, False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StreamSchedule(StandardSchedule):
    """One pass over the data, up to K inner steps per outer batch, with an early exit."""

    single_pass = True

    def __init__(self, config: Config, data: DataStream) -> None:
        super().__init__(config, data)
        self.batch: list[dict[str, Any]] | None = None
        self.batch_start: dict[str, int] = data.state_dict()
        self.inner = 0
        self.outer = 0
        self.prev_scores: list[float] | None = None

    def planned_batches(self) -> int:
        available = len(self.data.examples) // self.config.train.batch_size
        wanted = self.config.stream.num_batches
        return min(available, wanted) if wanted else available

    def planned_steps(self) -> int:
        """Inner steps of the planned outer batches, capped by ``train.steps``."""
        planned = self.planned_batches() * self.config.stream.inner_steps
        cap = self.config.train.steps
        return planned if cap is None else min(planned, cap)

    def finished(self, step: int) -> bool:
        if self.config.train.steps is not None and step >= self.config.train.steps:
            return True  # possibly inside an outer batch: a resumed run with more steps goes on from there
        return self.batch is None and (
            self.outer >= self.planned_batches() or self.data.exhausted(self.config.train.batch_size)
        )

    def next_batch(self) -> list[dict[str, Any]]:
        if self.batch is None:
            self.batch_start = self.data.state_dict()
            self.batch = self.data.next_batch(self.config.train.batch_size)
            self.inner = 0
            self.prev_scores = None
        return self.batch

    def after_step(self, samples: list[Sample]) -> dict[str, float]:
        """Count the inner step and decide whether the outer batch ends (the early exit)."""
        cfg = self.config.stream
        assert self.batch is not None
        scores = [float(np.mean([s.feedback.score for s in samples if s.group == g] or [0.0]))
                  for g in range(len(self.batch))]
        self.inner += 1
        metrics: dict[str, float] = {}
        improved = None
        if self.prev_scores is not None:
            improved = float(np.mean([a > b for a, b in zip(scores, self.prev_scores, strict=True)]))
            metrics["stream/improved_fraction"] = improved
        self.prev_scores = scores
        end = self.inner >= cfg.inner_steps or (
            self.inner >= cfg.min_inner_steps and improved is not None and improved < cfg.early_exit_threshold
        )
        metrics.update({"stream/outer_batch": float(self.outer), "stream/inner_step": float(self.inner - 1),
                        "stream/early_exit": float(end and self.inner < cfg.inner_steps)})
        if end:
            self.outer += 1
            self.batch = None
        return metrics

    def due(self, step: int) -> tuple[bool, bool]:
        """At the end of an outer batch: validate every ``stream.val_every_batches`` (and after the
        last), checkpoint every ``stream.save_every_batches``."""
        if self.batch is not None:
            return False, False
        cfg = self.config.stream
        validate = bool(cfg.val_every_batches) and (self.outer % cfg.val_every_batches == 0 or self.finished(step))
        save = bool(cfg.save_every_batches) and self.outer % cfg.save_every_batches == 0
        return validate, save

    def state_dict(self) -> dict[str, Any]:
        return {"outer": self.outer, "inner": self.inner, "in_batch": self.batch is not None,
                "batch_start": self.batch_start, "prev_scores": self.prev_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; a checkpoint inside an outer batch re-draws that batch from its start."""
        self.outer = int(state["outer"])
        self.inner = int(state["inner"])
        self.prev_scores = state["prev_scores"]
        self.batch_start = state["batch_start"]
        self.batch = None
        if state["in_batch"]:
            position = self.data.state_dict()
            self.data.load_state_dict(self.batch_start)
            self.batch = self.data.next_batch(self.config.train.batch_size)
            if self.data.state_dict() != position:
                raise RuntimeError("checkpoint data position does not match its outer batch")


def build_schedule(config: Config, data_rows: list[dict[str, Any]]) -> StandardSchedule:
    """The schedule ``config`` asks for (``stream.enabled``, else the algorithm's default) over ``data_rows``."""
    cls = StreamSchedule if config.uses_stream else StandardSchedule
    data = DataStream(data_rows, seed=config.seed, shuffle=config.data.shuffle, single_pass=cls.single_pass)
    return cls(config, data)
