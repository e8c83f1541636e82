"""What an algorithm is to the trainer: scored samples in, learning targets out.

The trainer is the same loop for every algorithm (schedule, rollouts, scoring, update, logging).
Between scoring and the update it hands the samples to the run's :class:`Algorithm`, which fills
what the learner reads from each :class:`~resd.sample.Sample`:

* ``advantage``: the policy-gradient advantage (weighted by ``pg_weight``);
* ``teacher_messages`` and ``sd_mask``: the self-teacher's context and whether the sample is
  distilled (weighted by ``1 - pg_weight``);
* ``seq_weight``: a per-sample weight of the distillation term.

An algorithm owns its own state (RESD: playbook, solution buffer, reflector) and says what of it
goes into checkpoints. Add one by subclassing :class:`Algorithm` and decorating it with
:func:`resd.algorithms.register_algorithm`; ``algorithm=NAME`` then selects it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from resd.losses import group_advantages
from resd.run_dir import RunDir
from resd.sample import Sample

if TYPE_CHECKING:
    from resd.config import Config
    from resd.distributed import DistInfo
    from resd.envs.base import Environment


@dataclasses.dataclass
class Services:
    """What the trainer offers an algorithm: the task, the policy's sampler and the run's place.

    Attributes:
        env: the environment (prompts, scores, feedback, example ids).
        generator: the policy's rollout backend (an algorithm may sample text with it, e.g. RESD's
            reflections written by the policy itself).
        tokenizer: the policy's tokenizer.
        seeds: ``seeds(purpose, count)``: per-sequence sampling seeds for this step (None when
            sampling is not seeded).
        dist: the process group (an algorithm's state must be the same on every rank).
        run: the run directory (:class:`resd.run_dir.RunDir`; algorithms write their files where it says).
    """

    env: Environment
    generator: Any
    tokenizer: Any
    seeds: Callable[[str, int], list[int] | None]
    dist: DistInfo
    run: RunDir


class Algorithm:
    """Turns scored samples into the learner's targets; subclasses implement :meth:`prepare`."""

    #: the name ``algorithm=`` selects it by (set by :func:`resd.algorithms.register_algorithm`)
    name: ClassVar[str] = ""
    #: ``standard`` (one batch per step) or ``stream`` (K inner steps per batch): the schedule used
    #: when ``stream.enabled`` is not set
    default_schedule: ClassVar[str] = "standard"
    #: one line for ``resd algorithms`` and the docs
    summary: ClassVar[str] = ""

    def __init__(self, config: Config, services: Services) -> None:
        self.config = config
        self.services = services

    @classmethod
    def configure(cls, config: Config) -> None:
        """Adjust or check a configuration for this algorithm (called when the config is validated)."""

    @property
    def pg_weight(self) -> float:
        """Weight of the policy-gradient term; the distillation term has ``1 - pg_weight``."""
        return self.config.loss.pg_weight

    @property
    def uses_teacher(self) -> bool:
        """Whether the learner needs a self-teacher (there is a distillation term)."""
        return self.pg_weight < 1.0

    def prepare(self, samples: list[Sample], step: int) -> dict[str, float]:
        """Fill the learning targets of this step's samples; returns metrics. ``step``: the step
        being made (1-based)."""
        raise NotImplementedError

    def after_update(self, samples: list[Sample], step: int) -> dict[str, float]:
        """Called after the learner's update of step ``step``; returns metrics."""
        return {}

    def sample_record(self, sample: Sample) -> dict[str, Any]:
        """Extra fields of a sample in ``samples.jsonl``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def assign_group_advantages(samples: list[Sample], norm_by_std: bool) -> None:
    """GRPO's advantages: each score minus its prompt group's mean (optionally over its std)."""
    if not samples:
        return
    scores = torch.tensor([s.feedback.score for s in samples])
    advantages = group_advantages(scores, [s.group for s in samples], norm_by_std)
    for s, a in zip(samples, advantages.tolist(), strict=True):
        s.advantage = a
