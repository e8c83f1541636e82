"""The training loop (:class:`Trainer`) and its parts: policy, rollouts, learner, schedule."""

from __future__ import annotations

from typing import Any

from resd.config import Config
from resd.trainer.trainer import Trainer


def build_trainer(config: Config, **kwargs: Any) -> Trainer:
    """The trainer for a configuration (the algorithm and the schedule come from it)."""
    return Trainer(config, **kwargs)


__all__ = ["Trainer", "build_trainer"]
