"""Test-time self-distillation on one hard problem, and the baselines that share its sampler.

SDPO's test-time setting (arXiv 2601.20802, test-time self-distillation): sample a few attempts at a single problem; if none
succeeds, build the teacher context from the feedback and take one self-distillation step on that
problem; repeat until an attempt succeeds or the attempt budget is spent. The metric is
discovery@k: whether the problem is solved within k attempts. Baselines with the same sampler:

- ``best-of-k``: independent attempts, no learning;
- ``multiturn-feedback``: one user message with the question and every past feedback (the oldest
  feedback is dropped when the prompt would exceed the context limit);
- ``multiturn-attempts``: a real chat with past attempts as assistant turns and their feedback as
  user turns (the oldest exchanges are dropped when too long).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from resd.models import chat_prompt_ids
from resd.rollout.base import SamplingParams

METHODS = ("sdpo", "resd", "best-of-k", "multiturn-feedback", "multiturn-attempts")
FEEDBACK_HEADER = "The following is feedback from your unsuccessful earlier attempts:"
CLOSING = "Correctly solve the original question."


@dataclasses.dataclass
class SolveResult:
    """How one attempt sequence went. ``first_success`` is the 1-based attempt index, or None."""

    method: str
    budget: int
    attempts: int
    first_success: int | None
    scores: list[float]
    seconds: float
    solution: str | None = None

    @property
    def solved(self) -> bool:
        return self.first_success is not None

    def discovered_within(self, k: int) -> bool:
        return self.first_success is not None and self.first_success <= k

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "solved": self.solved}


def discovery_at_k(results: Sequence[SolveResult], ks: Sequence[int]) -> dict[int, float]:
    """discovery@k = the fraction of runs (problems x seeds) solved within k attempts."""
    return {k: sum(r.discovered_within(k) for r in results) / max(1, len(results)) for k in ks}


def feedback_only_messages(prompt: Sequence[dict[str, str]], feedbacks: Sequence[str]) -> list[dict[str, str]]:
    """The feedback-only multi-turn prompt: question + header + all past feedbacks + closing line."""
    system, question = list(prompt[:-1]), prompt[-1]["content"]
    if not feedbacks:
        return [*system, {"role": "user", "content": question}]
    text = f"{question}\n\n{FEEDBACK_HEADER}\n\n" + "\n\n".join(feedbacks) + f"\n\n{CLOSING}"
    return [*system, {"role": "user", "content": text}]


def attempts_messages(prompt: Sequence[dict[str, str]], history: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The attempt-and-feedback chat: question, then (attempt, feedback) exchanges."""
    messages = [dict(m) for m in prompt]
    for attempt, feedback in history:
        messages.append({"role": "assistant", "content": attempt})
        messages.append({"role": "user", "content": f"{feedback}\n\n{CLOSING}" if feedback else CLOSING})
    return messages


def fit_context(tokenizer, build, items: list[Any], max_tokens: int, chat_template_kwargs=None) -> list[int]:
    """Token ids of ``build(items)``, dropping the oldest items until the prompt fits ``max_tokens``."""
    items = list(items)
    while True:
        ids, _ = chat_prompt_ids(tokenizer, build(items), None, "right", chat_template_kwargs)
        if len(ids) <= max_tokens or not items:
            return ids[-max_tokens:]
        items.pop(0)


def _sample(generator, tokenizer, ids: list[int], n: int, sampling: SamplingParams):
    rollouts = generator.generate([ids], n, sampling)
    return rollouts, tokenizer.batch_decode([r.response_ids for r in rollouts], skip_special_tokens=True)


def solve_without_training(method: str, env, example: dict[str, Any], generator, tokenizer, sampling: SamplingParams,
                           budget: int, per_round: int = 4, success_threshold: float = 1.0,
                           max_context: int = 32000, chat_template_kwargs: dict[str, Any] | None = None) -> SolveResult:
    """best-of-k and the two multi-turn baselines."""
    if method not in ("best-of-k", "multiturn-feedback", "multiturn-attempts"):
        raise ValueError(f"unknown baseline {method!r}")
    start = time.perf_counter()
    prompt = env.prompt_messages(example)
    scores: list[float] = []
    feedbacks: list[str] = []
    history: list[tuple[str, str]] = []
    while len(scores) < budget:
        n = per_round if method == "best-of-k" else 1  # a retry conditions on the previous attempt
        n = min(n, budget - len(scores))
        if method == "multiturn-feedback":
            ids = fit_context(tokenizer, lambda f: feedback_only_messages(prompt, f), feedbacks, max_context, chat_template_kwargs)
        elif method == "multiturn-attempts":
            ids = fit_context(tokenizer, lambda h: attempts_messages(prompt, h), history, max_context, chat_template_kwargs)
        else:
            ids = chat_prompt_ids(tokenizer, prompt, None, "right", chat_template_kwargs)[0]
        rollouts, texts = _sample(generator, tokenizer, ids, n, sampling)
        for r, text in zip(rollouts, texts, strict=True):
            fb = env.score(text, example, truncated=not r.finished)
            scores.append(float(fb.score))
            if fb.score >= success_threshold:
                return SolveResult(method, budget, len(scores), len(scores), scores, time.perf_counter() - start, text)
            feedbacks.append(fb.feedback or "Your answer was incorrect.")
            history.append((text, fb.feedback or "Your answer was incorrect."))
    return SolveResult(method, budget, len(scores), None, scores, time.perf_counter() - start)


def solve_with_self_distillation(trainer, example: dict[str, Any], budget: int, success_threshold: float = 1.0) -> SolveResult:
    """SDPO (or RESD) at test time: ``trainer`` was built on a dataset holding only ``example``.

    Each round samples ``train.batch_size x rollout.n`` attempts; the first success ends the run,
    otherwise one training step distils the feedback-conditioned teacher into the policy.
    """
    start = time.perf_counter()
    method = trainer.config.algorithm
    scores: list[float] = []
    while len(scores) < budget:
        samples, _ = trainer.sample([example] * trainer.config.train.batch_size)
        for s in samples:
            if len(scores) >= budget:
                break
            scores.append(float(s.feedback.score))
            if s.feedback.score >= success_threshold:
                return SolveResult(method, budget, len(scores), len(scores), scores, time.perf_counter() - start, s.text)
        if len(scores) >= budget:
            break
        trainer.logger.log(trainer.step + 1, trainer.learn(samples))
    return SolveResult(method, budget, len(scores), None, scores, time.perf_counter() - start)
