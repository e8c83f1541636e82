"""Training loops. :func:`build_trainer` picks the trainer class for ``config.algorithm``."""

from __future__ import annotations

from typing import Any

from resd.config import Config
from resd.trainer.trainer import Trainer


def build_trainer(config: Config, **kwargs: Any) -> Trainer:
    """The trainer for the configured algorithm (``grpo`` and ``sdpo`` share :class:`Trainer`)."""
    return Trainer(config, **kwargs)


__all__ = ["Trainer", "build_trainer"]
