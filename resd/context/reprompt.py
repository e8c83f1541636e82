"""SDPO's teacher context ("reprompt"): the student's prompt plus a successful sibling and/or feedback.

Implements ``_maybe_build_self_distillation_batch`` of lasgroup/SDPO
(``verl/trainer/ppo/ray_trainer.py``; templates from ``verl/trainer/config/actor/actor.yaml``)
exactly: success threshold, first successful sibling as the demonstration (optionally excluding
the sample itself), ``<think>`` stripping, feedback only without a solution, the three templates,
system messages kept, and the per-sequence mask.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable, Sequence

from resd.textscan import search_end

Message = dict[str, str]

REPROMPT_TEMPLATE = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}"
FEEDBACK_TEMPLATE = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}"

_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class RepromptConfig:
    """The ``self_distillation`` keys of SDPO that shape the teacher context (effective defaults)."""

    success_reward_threshold: float = 0.5
    dont_reprompt_on_self_success: bool = True
    remove_thinking_from_demonstration: bool = True
    include_environment_feedback: bool = True
    environment_feedback_only_without_solution: bool = True
    reprompt_template: str = REPROMPT_TEMPLATE
    solution_template: str = SOLUTION_TEMPLATE
    feedback_template: str = FEEDBACK_TEMPLATE


@dataclasses.dataclass
class TeacherContext:
    """The teacher's chat messages for one sample and why it gets (or not) a distillation target."""

    messages: list[Message]
    solution: str | None
    feedback_used: bool

    @property
    def sd_mask(self) -> bool:
        return self.solution is not None or self.feedback_used


def remove_thinking(text: str) -> str:
    """Drop ``<think>...</think>`` blocks (and the whitespace after them)."""
    cut = search_end(text, "</think>", then_spaces=True)  # linear: no block ends after this
    return _THINK.sub("", text[:cut]) + text[cut:]


def split_prompt(messages: Sequence[Message]) -> tuple[list[Message], str]:
    """(system and earlier messages, the text of the last message) of a chat prompt."""
    if not messages:
        raise ValueError("a prompt needs at least one message")
    return [dict(m) for m in messages[:-1]], str(messages[-1]["content"])


def build_teacher_contexts(
    prompts: Sequence[Sequence[Message]],
    responses: Sequence[str],
    scores: Sequence[float],
    feedbacks: Sequence[str | None],
    group_ids: Sequence[Hashable],
    config: RepromptConfig = RepromptConfig(),
) -> tuple[list[TeacherContext], dict[str, float]]:
    """Teacher contexts for a batch of rollouts, in batch order, plus SDPO's logged fractions.

    ``group_ids`` identifies samples of the same prompt (SDPO's uid). The demonstration of sample i is
    the first successful sample of its group in batch order (not i itself when
    ``dont_reprompt_on_self_success``).
    """
    n = len(responses)
    if not (len(prompts) == len(scores) == len(feedbacks) == len(group_ids) == n):
        raise ValueError("prompts, responses, scores, feedbacks and group_ids must have the same length")
    success = [float(s) >= config.success_reward_threshold for s in scores]
    successes_by_group: dict[Hashable, list[int]] = {}
    for i, g in enumerate(group_ids):
        if success[i]:
            successes_by_group.setdefault(g, []).append(i)

    contexts: list[TeacherContext] = []
    feedback_available = 0
    for i in range(n):
        candidates = successes_by_group.get(group_ids[i], [])
        if config.dont_reprompt_on_self_success:
            candidates = [j for j in candidates if j != i]
        demo = responses[candidates[0]] if candidates else None
        if demo is not None and config.remove_thinking_from_demonstration:
            demo = remove_thinking(demo)

        fb = feedbacks[i] if config.include_environment_feedback else None
        has_feedback = isinstance(fb, str) and fb.strip() != ""
        feedback_available += has_feedback
        use_feedback = has_feedback and (not config.environment_feedback_only_without_solution or demo is None)

        system, prompt_text = split_prompt(prompts[i])
        if demo is not None or use_feedback:
            solution_section = config.solution_template.format(successful_previous_attempt=demo) if demo is not None else ""
            feedback_section = config.feedback_template.format(feedback_raw=fb) if use_feedback else ""
            text = config.reprompt_template.format(prompt=prompt_text, solution=solution_section, feedback=feedback_section)
        else:
            text = prompt_text
        contexts.append(TeacherContext(system + [{"role": "user", "content": text}], demo, use_feedback))

    groups = set(group_ids)
    metrics = {
        "self_distillation/success_group_fraction": len(successes_by_group) / max(1, len(groups)),
        # as SDPO's and TRL's code: samples given a demonstration / batch (not successes / batch, which the
        # trainer logs as reward/success_fraction)
        "self_distillation/success_sample_fraction": sum(c.solution is not None for c in contexts) / max(1, n),
        "self_distillation/feedback_available_fraction": feedback_available / max(1, n),
        "self_distillation/feedback_used_fraction": sum(c.feedback_used for c in contexts) / max(1, n),
        "self_distillation/reprompt_sample_fraction": sum(c.sd_mask for c in contexts) / max(1, n),
    }
    return contexts, metrics
