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
      (masked-out sequences still count in B; SDPO.md §1.7).
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
