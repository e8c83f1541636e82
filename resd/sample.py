"""One rollout and everything computed about it during a training step."""

from __future__ import annotations

import dataclasses
from typing import Any

from resd.envs.base import Feedback


@dataclasses.dataclass
class Sample:
    """A sampled response to one prompt, its score, and what the algorithm made of it.

    The trainer fills the rollout fields and ``feedback``; an algorithm fills ``advantage`` (policy
    gradient), ``teacher_messages`` and ``sd_mask`` (self-distillation) and ``seq_weight``; the
    learner tokenizes the teacher messages into ``teacher_ids``.
    """

    example: dict[str, Any]
    group: int  # index of the prompt in the batch: samples of one prompt share it
    prompt_messages: list[dict[str, str]]
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float] | None
    finished: bool
    text: str = ""
    feedback: Feedback | None = None
    teacher_messages: list[dict[str, str]] | None = None
    teacher_ids: list[int] | None = None
    sd_mask: bool = False
    advantage: float = 0.0
    seq_weight: float = 1.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
