"""The training objective of one micro-batch: self-distillation and PPO-clip policy gradient, mixed.

Given per-token tensors (the student's sampled-token log-probs and divergences, the old policy's and
the rollout engine's log-probs, advantages and aggregation weights), :func:`objective` returns the
scalar loss and its statistics. It is pure: no model, no config, no device handling.
"""

from __future__ import annotations

import dataclasses

import torch

from resd.losses.distillation import is_ratio
from resd.losses.policy_gradient import ppo_clip_token_loss

_EXP_CLAMP = 20.0  # every log-ratio is clamped to [-20, 20] before exp


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """How the per-token terms are weighted and clipped (defaults: those of ``resd.config.LossConfig``)."""

    pg_weight: float = 0.0
    """lambda in ``(1 - lambda) * distillation + lambda * policy_gradient``, in [0, 1]: 0 is pure
    self-distillation (SDPO, arXiv 2601.20802), 1 is pure PPO-clip policy gradient (GRPO, arXiv
    2402.03300); in between, a convex mix of the two (``loss.pg_weight`` in the config)."""

    is_clip: float | None = 2.0
    """Upper clip c of the detached importance ratio ``min(pi_theta / pi_old, c)`` that reweights the
    distillation term of off-policy mini-batches (SDPO, arXiv 2601.20802: ``is_clip`` of
    ``compute_self_distillation_loss`` in lasgroup/SDPO); None: ratio 1. Must be > 0."""

    rollout_is_threshold: float | None = 2.0
    """Upper clip C of the truncated importance weight ``min(pi_old / pi_rollout, C)`` that corrects
    the mismatch between the rollout engine and the trainer (token-level truncated importance sampling,
    Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"; veRL's
    ``rollout_is_threshold``, which SDPO's code passes to its loss as ``rollout_is_weights``); it
    multiplies both terms. None: weight 1. Must be > 0."""

    clip_low: float = 0.2
    """epsilon_low of the PPO-clip surrogate, ratio clipped below at 1 - epsilon_low (PPO, arXiv
    1707.06347; GRPO, arXiv 2402.03300). Must be >= 0."""

    clip_high: float = 0.28
    """epsilon_high, ratio clipped above at 1 + epsilon_high; larger than epsilon_low is DAPO's
    clip-higher (arXiv 2503.14476). Must be >= 0."""

    dual_clip: float | None = 3.0
    """c of dual-clip PPO (Ye et al., arXiv 1912.09729): a token with negative advantage A has its
    loss capped at ``-c * A``; None: off. Must be > 1."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.pg_weight <= 1.0:
            raise ValueError(f"pg_weight must be in [0, 1], got {self.pg_weight}")
        for name in ("is_clip", "rollout_is_threshold"):
            value = getattr(self, name)
            if value is not None and not value > 0.0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"dual_clip must be > 1 or None, got {self.dual_clip}")


def objective(
    logp: torch.Tensor,
    div: torch.Tensor | None,
    *,
    old: torch.Tensor | None,
    rollout_logprobs: torch.Tensor | None,
    advantages: torch.Tensor | None,
    w_sd: torch.Tensor | None,
    w_pg: torch.Tensor | None,
    spec: ObjectiveSpec,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one micro-batch of N response tokens, and its statistics.

    With lambda = ``spec.pg_weight``, every tensor of shape [N] (one entry per response token)::

        L = (1 - lambda) * sum_t w_sd[t] * rho[t] * tis[t] * div[t]
            + lambda     * sum_t w_pg[t] * tis[t] * l_clip[t]

        rho[t]    = min(exp(sg(logp[t]) - old[t]), is_clip)         (1 when old or is_clip is None)
        tis[t]    = min(exp(old[t] - rollout_logprobs[t]), C)       (1 when rollout_logprobs or C is None)
        r[t]      = exp(logp[t] - old[t])
        l_clip[t] = max(-A[t] r[t], -A[t] clip(r[t], 1 - clip_low, 1 + clip_high)),
                    then min(l_clip[t], -dual_clip * A[t]) where A[t] < 0 (when dual_clip is set)

    where C = ``spec.rollout_is_threshold``, A = ``advantages``, ``old`` None means on-policy
    (old = sg(logp), so r = 1 and rho = 1), and every log-ratio is clamped to [-20, 20] before exp.
    Gradients flow through ``logp`` and ``div`` only: every other input is detached.
    With lambda = 1 the distillation term is skipped (``div`` and ``w_sd`` may be None), with
    lambda = 0 the policy-gradient term (``advantages`` and ``w_pg`` may be None); the statistics of
    a skipped term are absent.

    The math is done in ``logp``'s dtype (at least float32), so float64 inputs give float64 results;
    the ratio and the clipped surrogate are :func:`resd.losses.is_ratio` and
    :func:`resd.losses.ppo_clip_token_loss`.

    Returns:
        ``(loss, stats)``: the scalar loss, and detached floats: ``distill`` (the unweighted distillation
        sum), ``div_sum``, ``div_tokens`` and ``ratio_sum`` (sums of div and rho, and the count, over the
        tokens with ``w_sd > 0``) when lambda < 1; ``pg`` (the unweighted policy-gradient sum) and
        ``clipped`` (tokens whose clipped branch is active) when lambda > 0; always ``tis_sum`` and
        ``tokens`` (N).
    """
    dtype = torch.promote_types(logp.dtype, torch.float32)
    logp = logp.to(dtype)

    def given(name: str, value: torch.Tensor | None, needed: bool) -> torch.Tensor | None:
        if value is None:
            if needed:
                raise ValueError(f"{name} is needed when pg_weight is {spec.pg_weight}")
            return None
        if value.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, logp {tuple(logp.shape)}")
        return value.to(dtype)

    off_policy = old is not None
    old = given("old", old, False)
    old = old.detach() if off_policy else logp.detach()
    rollout_logprobs = given("rollout_logprobs", rollout_logprobs, False)
    tis = torch.ones_like(logp)
    if spec.rollout_is_threshold is not None and rollout_logprobs is not None:
        tis = torch.exp((old - rollout_logprobs.detach()).clamp(-_EXP_CLAMP, _EXP_CLAMP)).clamp(
            max=spec.rollout_is_threshold
        )

    loss = logp.new_zeros(())
    stats: dict[str, float] = {}
    if spec.pg_weight < 1.0:
        div = given("div", div, True)
        weights = given("w_sd", w_sd, True).detach()
        ratio = is_ratio(logp, old if off_policy else None, spec.is_clip)
        distill = (weights * ratio * tis * div).sum()
        loss = loss + (1.0 - spec.pg_weight) * distill
        on = weights > 0
        stats.update(distill=float(distill.detach()), div_sum=float(div.detach()[on].sum()),
                     div_tokens=float(on.sum()), ratio_sum=float(ratio[on].sum()))
    if spec.pg_weight > 0.0:
        adv = given("advantages", advantages, True).detach()
        weights = given("w_pg", w_pg, True).detach()
        per_tok, clipped = ppo_clip_token_loss(logp, old, adv, spec.clip_low, spec.clip_high, spec.dual_clip)
        pg = (weights * tis * per_tok).sum()
        loss = loss + spec.pg_weight * pg
        stats.update(pg=float(pg.detach()), clipped=float(clipped.sum()))
    stats.update(tis_sum=float(tis.sum()), tokens=float(logp.numel()))
    return loss, stats
