"""Loss functions (pure, float32 math, fully masked).

- :func:`self_distillation_loss`: SDPO/RESD distillation of a self-teacher into the student.
- :func:`grpo_loss`, :func:`group_advantages`: the GRPO (PPO-clip) baseline.
- :func:`token_weights`: every aggregation as per-token weights.
- :func:`token_terms`: the chunked core used by the trainer (bounded memory).
- :func:`objective`, :class:`ObjectiveSpec`: one micro-batch's mixed distillation + policy-gradient loss.
"""

from resd.losses.aggregation import AGGREGATIONS, success_rate_weights, token_weights
from resd.losses.distillation import (
    DistillationSpec,
    divergence,
    is_ratio,
    self_distillation_loss,
    token_terms,
)
from resd.losses.objective import ObjectiveSpec, objective
from resd.losses.policy_gradient import group_advantages, grpo_loss, ppo_clip_token_loss

__all__ = [
    "AGGREGATIONS",
    "DistillationSpec",
    "ObjectiveSpec",
    "divergence",
    "group_advantages",
    "grpo_loss",
    "is_ratio",
    "objective",
    "ppo_clip_token_loss",
    "self_distillation_loss",
    "success_rate_weights",
    "token_terms",
    "token_weights",
]
