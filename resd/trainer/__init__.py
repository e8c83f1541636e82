"""Training loops. :func:`build_trainer` picks the trainer class for ``config.algorithm``."""

from __future__ import annotations

from typing import Any

from resd.config import Config
from resd.trainer.stream import StreamTrainer
from resd.trainer.trainer import Trainer


def build_trainer(config: Config, **kwargs: Any) -> Trainer:
    """The trainer for the configuration: the stream loop for ``resd`` or ``stream.enabled``."""
    return StreamTrainer(config, **kwargs) if config.uses_stream else Trainer(config, **kwargs)


__all__ = ["StreamTrainer", "Trainer", "build_trainer"]
