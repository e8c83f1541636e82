"""The GRPO baseline: group-relative advantages and the PPO-clip policy-gradient loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from resd.losses.aggregation import token_weights


def group_advantages(
    rewards: torch.Tensor, group_ids: Sequence[object], normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO outcome advantages: ``r - mean(group)``, divided by ``std(group) + eps`` when asked.

    The standard deviation is the unbiased (Bessel-corrected) one. A group with a single member has
    mean 0 and std 1, so its advantage is its reward (veRL's convention).
    """
    rewards = rewards.double()
    adv = torch.empty_like(rewards)
    groups: dict[object, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    for members in groups.values():
        r = rewards[members]
        if len(members) == 1:
            mean, std = torch.zeros((), dtype=r.dtype), torch.ones((), dtype=r.dtype)
        else:
            mean, std = r.mean(), r.std()
        adv[members] = (r - mean) / (std + eps) if normalize_std else r - mean
    return adv.float()


def ppo_clip_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss ``max(-A r, -A clip(r, 1-low, 1+high))`` and the clipped-token indicator.

    With ``dual_clip`` c, tokens with negative advantage are additionally capped at ``-A c``
    (veRL's dual-clip PPO). All inputs are broadcast together; ``advantages`` is detached. The math
    is done in ``logp``'s dtype, at least float32.
    """
    dtype = torch.promote_types(logp.dtype, torch.float32)
    adv = advantages.detach().to(dtype)
    ratio = torch.exp((logp.to(dtype) - old_logp.detach().to(dtype)).clamp(-20.0, 20.0))
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss1, loss2)
    clipped = (loss2 > loss1).to(dtype)
    if dual_clip is not None:
        capped = torch.minimum(loss, -adv * dual_clip)
        loss = torch.where(adv < 0, capped, loss)
    return loss, clipped


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 3.0,
    aggregation: str = "token-mean",
    norm_length: int | None = None,
    rollout_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip loss on [B, T] sampled-token log-probs with per-sequence advantages [B].

    ``old_logp`` None means on-policy (old = current, detached, so the ratio is 1).
    """
    old = logp.detach() if old_logp is None else old_logp
    per_tok, clipped = ppo_clip_token_loss(logp, old, advantages[:, None], clip_low, clip_high, dual_clip)
    w = token_weights(mask, None, aggregation, norm_length)
    if rollout_weights is not None:
        w = w * rollout_weights.float()
    loss = (w * per_tok).sum()
    m = mask.float()
    metrics = {
        "loss": float(loss.detach()),
        "clip_fraction": float((clipped * m).sum() / m.sum().clamp(min=1)),
    }
    return loss, metrics
