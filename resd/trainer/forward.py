"""Forward passes that return only what the loss needs: hidden states at the response positions.

Full-vocabulary logits are never built for a whole sequence: the LM head is applied later, chunk by
chunk, inside :func:`resd.losses.token_terms`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch


@dataclasses.dataclass
class PackedRows:
    """Right-padded rows ``context ⊕ response`` and the flat positions that predict response tokens."""

    input_ids: torch.Tensor  # [b, L]
    attention_mask: torch.Tensor  # [b, L]
    positions: torch.Tensor  # [N] flat indices into b*L, one per response token, in row order
    prefix: int = 0  # leading tokens that every row shares: response_hidden computes them once


def pack_rows(contexts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
              share_prefix: bool = False) -> PackedRows:
    """Concatenate each context with its response; position ``len(context) - 1 + t`` predicts token t.

    ``share_prefix``: mark the contexts' common prefix (at least ``PREFIX_CACHE_MIN_TOKENS``, leaving
    every context one token of its own) for :func:`response_hidden` to compute once: the task
    instructions of every teacher prompt, a whole prompt within a GRPO group.
    """
    if len(contexts) != len(responses):
        raise ValueError("contexts and responses differ in length")
    width = max((len(c) + len(r) for c, r in zip(contexts, responses, strict=True)), default=1)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(contexts), width), dtype=torch.long)
    positions = []
    cost = RowsCost(share_prefix)
    for row, (ctx, resp) in enumerate(zip(contexts, responses, strict=True)):
        if not ctx:
            raise ValueError("a context must have at least one token")
        cost = cost.add(ctx, resp)
        seq = list(ctx) + list(resp)
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
        start = row * width + len(ctx) - 1
        positions.extend(range(start, start + len(resp)))
    return PackedRows(ids, attention, torch.tensor(positions, dtype=torch.long), cost.prefix)


@dataclasses.dataclass(frozen=True)
class RowsCost:
    """The tokens that one forward of a growing set of rows computes (as :func:`pack_rows` and
    :func:`response_hidden` lay them out): every row padded to the widest, and with ``share_prefix``
    the rows' common context prefix once. Grows one row at a time in time linear in the prefix."""

    share_prefix: bool
    first: tuple[int, ...] = ()
    common: int = 0  # leading tokens every context shares with the first
    shortest: int = 0  # the shortest context
    width: int = 0  # the widest context + response
    rows: int = 0

    def add(self, context: Sequence[int], response: Sequence[int]) -> RowsCost:
        context = tuple(context)
        if not self.rows:
            return dataclasses.replace(self, first=context, common=len(context), shortest=len(context),
                                       width=len(context) + len(response), rows=1)
        common = 0
        limit = min(self.common, len(context))
        while common < limit and context[common] == self.first[common]:
            common += 1
        return dataclasses.replace(self, common=common, shortest=min(self.shortest, len(context)),
                                   width=max(self.width, len(context) + len(response)), rows=self.rows + 1)

    @property
    def prefix(self) -> int:
        """The prefix :func:`pack_rows` would mark (0 when not shared)."""
        from resd.rollout.hf import PREFIX_CACHE_MIN_TOKENS

        if not self.share_prefix or self.rows < 2:
            return 0
        prefix = min(self.common, self.shortest - 1)
        return prefix if prefix >= PREFIX_CACHE_MIN_TOKENS else 0

    @property
    def tokens(self) -> int:
        return self.prefix + self.rows * (self.width - self.prefix)


def lm_head(model: torch.nn.Module) -> torch.nn.Module:
    """The output projection; refuses models whose logits need extra transforms we do not apply."""
    config = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, attr, None) not in (None, 1.0):
            raise NotImplementedError(f"models with {attr} are not supported by the chunked loss yet")
    return model.get_output_embeddings()


def response_hidden(model: torch.nn.Module, rows: PackedRows) -> torch.Tensor:
    """Final hidden states [N, H] at the positions that predict the response tokens.

    The whole model's forward runs (so that FSDP's hooks on the root module fire) with the LM head
    applied to one position only; the decoder's output is captured with a forward hook.

    With ``rows.prefix`` the shared prefix runs once, its KV cache is copied to every row, and the
    rows' own tokens run over it; autograd carries each row's gradient back through the one prefix.
    (Not with gradient checkpointing: recomputing a layer would append to the cache again.)
    """
    device = next(model.parameters()).device
    ids, attention = rows.input_ids.to(device), rows.attention_mask.to(device)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _args, output) -> None:
        captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    positions = rows.positions.to(device)
    handle = model.get_decoder().register_forward_hook(keep)
    try:
        if rows.prefix:
            from transformers import DynamicCache

            from resd.models.loading import cache_kwargs

            p, (b, width) = rows.prefix, ids.shape
            cache = cache_kwargs(model, DynamicCache(config=model.config))
            model(input_ids=ids[:1, :p], attention_mask=attention[:1, :p], use_cache=True, logits_to_keep=1, **cache)
            next(iter(cache.values())).batch_repeat_interleave(b)
            model(input_ids=ids[:, p:], attention_mask=attention, use_cache=True, logits_to_keep=1, **cache,
                  position_ids=torch.arange(p, width, device=device).expand(b, -1))
            # flat index row * width + column of the full rows -> row * (width - p) + column - p
            positions = positions - (positions // width + 1) * p
        else:
            model(input_ids=ids, attention_mask=attention, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    hidden = captured["hidden"]
    return hidden.reshape(-1, hidden.shape[-1])[positions]


class HeadLogits:
    """``rows -> sum_k weight_k * head_k(hidden_k[rows]) / temperature`` in float32 (see :func:`logits_fn`).

    The pairs and the temperature stay readable (``heads_and_hidden``, ``temperature``) so that the
    loss can fuse a single head with its gradient (``resd.losses.token_terms(..., fused=True)``).
    """

    def __init__(self, heads_and_hidden: Sequence[tuple[torch.nn.Module, torch.Tensor, float]], temperature: float) -> None:
        self.heads_and_hidden = list(heads_and_hidden)
        self.temperature = temperature

    def __call__(self, rows: slice) -> torch.Tensor:
        total = None
        for head, hidden, weight in self.heads_and_hidden:
            logits = head(hidden[rows]).float()
            if weight != 1.0:
                logits = logits * weight
            total = logits if total is None else total + logits
        return total / self.temperature if self.temperature != 1.0 else total


def logits_fn(heads_and_hidden: Sequence[tuple[torch.nn.Module, torch.Tensor, float]], temperature: float = 1.0) -> HeadLogits:
    """``rows -> sum_k weight_k * head_k(hidden_k[rows]) / temperature`` in float32.

    One pair is a plain model; two pairs give the trust-region teacher's logit mix.
    """
    return HeadLogits(heads_and_hidden, temperature)
