"""How per-token losses are reduced to one number: expressed as per-token weights.

Writing every reduction as ``sum(weights * per_token_loss)`` lets the trainer split a batch into
micro-batches (or ranks) and still compute exactly the full-batch objective.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def token_weights(
    mask: torch.Tensor,
    seq_weights: torch.Tensor | None = None,
    aggregation: str = "seq-mean-token-mean",
    norm_length: int | None = None,
) -> torch.Tensor:
    """[B, T] weights w such that the aggregated loss is ``sum(w * per_token_loss)``.

    - ``seq-mean-token-mean``: each sequence's masked token mean, averaged over ALL B sequences
      (masked-out sequences still count in B, as in lasgroup/SDPO, whose configs use micro-batches
      of one sequence with veRL's token mean).
    - ``token-mean``: one mean over all masked tokens of the batch.
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): token sums divided by ``B * norm_length`` (a constant,
      the maximum response length; defaults to T).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    mask = mask.float()
    batch = max(1, mask.shape[0])
    if aggregation == "seq-mean-token-mean":
        w = mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / batch
    elif aggregation == "token-mean":
        w = mask / mask.sum().clamp(min=1.0)
    else:
        w = mask / (batch * (norm_length or mask.shape[-1]))
    if seq_weights is not None:
        w = w * seq_weights.float()[:, None]
    return w


def success_rate_weights(successes: list[bool], alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """RESD's per-sequence rebalancing (arXiv 2605.12741, App. B).

    With s the batch success rate clipped to [1/B, 1 - 1/B], a success gets ``(1 - s)**alpha`` and a
    failure ``s**beta``; the weights are then scaled to mean 1 (all ones if the mean is below 1e-8).
    """
    n = len(successes)
    if n == 0:
        return torch.ones(0)
    s = sum(successes) / n
    s = min(max(s, 1.0 / n), 1.0 - 1.0 / n) if n > 1 else s
    raw = torch.tensor([(1.0 - s) ** alpha if ok else s**beta for ok in successes], dtype=torch.float64)
    mean = raw.mean()
    if mean < 1e-8:
        return torch.ones(n)
    return (raw / mean).float()
