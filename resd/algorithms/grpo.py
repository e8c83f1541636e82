"""GRPO: PPO-clip on group-relative advantages, the baseline of both papers (no teacher)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resd.algorithms.base import Algorithm, assign_group_advantages
from resd.sample import Sample

if TYPE_CHECKING:
    from resd.config import Config


class GRPO(Algorithm):
    """Advantages only: each sample's score minus its group's mean (``loss.norm_adv_by_std``)."""

    summary = "PPO-clip with group-relative advantages (no teacher)"

    @classmethod
    def configure(cls, config: Config) -> None:
        config.loss.pg_weight = 1.0  # so that the saved config says what the learner does

    @property
    def pg_weight(self) -> float:
        return 1.0

    def prepare(self, samples: list[Sample], step: int) -> dict[str, float]:
        assign_group_advantages(samples, self.config.loss.norm_adv_by_std)
        return {}
