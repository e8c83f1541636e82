"""SDPO (arXiv 2601.20802): the policy, shown a successful sibling and/or the feedback, teaches itself.

A sample's teacher context is its prompt plus a demonstration (a successful response to the same
prompt, never the sample itself by default) and/or the environment's feedback
(:func:`resd.context.reprompt.build_teacher_contexts`). ``sdpo+ss`` is the RESD paper's
"SDPO+ss" baseline (arXiv 2605.12741): a successful sample may be its own demonstration.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from resd.algorithms.base import Algorithm, Services, assign_group_advantages
from resd.context.reprompt import RepromptConfig, build_teacher_contexts
from resd.sample import Sample

if TYPE_CHECKING:
    from resd.config import Config


class SDPO(Algorithm):
    """Teacher contexts by reprompting; advantages too when ``loss.pg_weight > 0``."""

    summary = "self-distillation from a successful sibling and/or the feedback"
    #: whether a successful sample may be its own demonstration
    self_success: bool = False

    def __init__(self, config: Config, services: Services) -> None:
        super().__init__(config, services)
        fields = {f.name: getattr(config.reprompt, f.name) for f in dataclasses.fields(RepromptConfig)}
        self.reprompt = RepromptConfig(**fields)
        if self.self_success:
            self.reprompt = dataclasses.replace(self.reprompt, dont_reprompt_on_self_success=False)

    def prepare(self, samples: list[Sample], step: int) -> dict[str, float]:
        if self.pg_weight > 0.0:
            assign_group_advantages(samples, self.config.loss.norm_adv_by_std)
        contexts, metrics = build_teacher_contexts(
            [s.prompt_messages for s in samples],
            [s.text for s in samples],
            [s.feedback.score for s in samples],
            [s.feedback.feedback for s in samples],
            [s.group for s in samples],
            self.reprompt,
        )
        for sample, ctx in zip(samples, contexts, strict=True):
            sample.teacher_messages = ctx.messages
            sample.sd_mask = ctx.sd_mask
        return metrics


class SDPOSelfSuccess(SDPO):
    """SDPO whose successful sample may be its own demonstration (the RESD paper's SDPO+ss)."""

    summary = "SDPO where a success may be its own demonstration (RESD paper's SDPO+ss)"
    self_success = True
