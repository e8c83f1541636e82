"""Self-distillation: the divergence between the student and its self-teacher on the response tokens.

The math follows SDPO (arXiv 2601.20802; ``compute_self_distillation_loss`` in lasgroup/SDPO,
``verl/trainer/ppo/core_algos.py``) and RESD's additions (teacher floor and ceiling, the paper's
epsilon_min / epsilon_max; per-sequence success-rate weights, arXiv 2605.12741 App. B; code in
horizon-llm/RESD, ``selfevolve/resd/trainer/ppo/``). Every function here works in float32 whatever
the input dtype, and never materializes more than ``chunk_size x vocab`` log-probabilities at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from resd.losses.aggregation import token_weights

LogitsFn = Callable[[slice], torch.Tensor]

@dataclasses.dataclass(frozen=True)
class DistillationSpec:
    """Which distributions are compared and how (SDPO's options plus RESD's teacher bounds; see above)."""

    alpha: float = 0.5
    topk: int | None = 100
    add_tail: bool = True
    full_logit: bool = True
    teacher_min_ratio: float | None = None
    teacher_max_ratio: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.full_logit and self.alpha != 1.0:
            raise ValueError("the sampled-token estimator (full_logit=False) needs alpha=1.0 (reverse KL)")
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"topk must be >= 1 or None, got {self.topk}")
        for name in ("teacher_min_ratio", "teacher_max_ratio"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.teacher_min_ratio is not None and self.teacher_min_ratio > 1:
            raise ValueError(f"teacher_min_ratio must lie in (0, 1], got {self.teacher_min_ratio}")
        if None not in (self.teacher_min_ratio, self.teacher_max_ratio) and self.teacher_min_ratio > self.teacher_max_ratio:
            raise ValueError(f"teacher_min_ratio ({self.teacher_min_ratio}) must not exceed "
                             f"teacher_max_ratio ({self.teacher_max_ratio})")


def _tail_bin(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(logp))) over the last dim, with the sum's log clamped at -1e-7."""
    log_sum = torch.logsumexp(logp, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.log(-torch.expm1(log_sum))


def _to_bins(logits: torch.Tensor, lse: torch.Tensor, idx: torch.Tensor | None, spec: DistillationSpec) -> torch.Tensor:
    """Log-probabilities over the compared bins, [N, bins]: the full vocabulary (``idx`` None), or the
    ids ``idx`` (the student's top-k) plus a tail bin or renormalized over them."""
    if idx is None:
        return logits - lse
    logp = logits.gather(-1, idx) - lse
    if spec.add_tail:
        return torch.cat([logp, _tail_bin(logp)], dim=-1)
    return logp - torch.logsumexp(logp, -1, keepdim=True)


def _clip_teacher(s: torch.Tensor, t: torch.Tensor, spec: DistillationSpec) -> torch.Tensor:
    """RESD's floor ``max(t, sg(s) + log r_min)`` and optional ceiling, element-wise, not renormalized."""
    if spec.teacher_min_ratio is not None:
        t = torch.maximum(t, s.detach() + math.log(spec.teacher_min_ratio))
    if spec.teacher_max_ratio is not None:
        t = torch.minimum(t, s.detach() + math.log(spec.teacher_max_ratio))
    return t


def divergence(s: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-row divergence between log-probabilities ``s`` (student) and ``t`` (teacher), summed over bins.

    alpha=0: KL(T||S); alpha=1: KL(S||T); otherwise the generalized JSD
    (1-alpha) KL(S||M) + alpha KL(T||M) with M = (1-alpha) S + alpha T.
    """
    if alpha == 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if alpha == 1.0:
        return (s.exp() * (s - t)).sum(-1)
    log_m = torch.logsumexp(torch.stack([s + math.log(1 - alpha), t + math.log(alpha)]), dim=0)
    kl_s = (s.exp() * (s - log_m)).sum(-1)
    kl_t = (t.exp() * (t - log_m)).sum(-1)
    return (1 - alpha) * kl_s + alpha * kl_t


TeacherSide = Callable[[Callable[[], torch.Tensor | None]], tuple[torch.Tensor | None, torch.Tensor]]


def _chunk_terms(
    student_logits: torch.Tensor, teacher: TeacherSide | None, ids: torch.Tensor, spec: DistillationSpec | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(y_t), per-token divergence) for one chunk of rows. Divergence is zeros without a teacher.

    ``teacher(student_topk)`` returns ``(ids, teacher_values)``: the bin ids to use and the teacher's
    log-probabilities over them (or of the sampled tokens for the sampled-token estimator). It calls
    ``student_topk()`` only on the first pass over the rows; the recompute in backward reuses the
    cached ids, so the student's top-k runs once per chunk.
    """
    s_logits = student_logits.float()
    s_lse = torch.logsumexp(s_logits, dim=-1, keepdim=True)
    logp = s_logits.gather(-1, ids[:, None]).squeeze(-1) - s_lse.squeeze(-1)
    if teacher is None or spec is None:
        return logp, torch.zeros_like(logp)
    if not spec.full_logit:
        _, t_logp = teacher(lambda: None)
        t_logp = _clip_teacher(logp, t_logp, spec)
        return logp, (logp - t_logp).detach() * logp
    def student_topk() -> torch.Tensor | None:  # only run when the teacher's side is not cached yet
        return None if spec.topk is None else s_logits.detach().topk(min(spec.topk, s_logits.shape[-1]), dim=-1).indices

    idx, t = teacher(student_topk)
    s = _to_bins(s_logits, s_lse, idx, spec)
    return logp, divergence(s, _clip_teacher(s, t, spec), spec.alpha)


def token_terms(
    student_logits_fn: LogitsFn,
    teacher_logits_fn: LogitsFn | None,
    ids: torch.Tensor,
    spec: DistillationSpec | None,
    chunk_size: int | None = None,
    recompute: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled-token log-probs and per-token divergences for N flattened response tokens.

    ``student_logits_fn(slice)`` returns the student's logits [n, V] of those rows (with grad);
    ``teacher_logits_fn(slice)`` the teacher's (called under no_grad). Rows are processed in chunks;
    with ``recompute`` each chunk's student logits are recomputed in backward (activation
    checkpointing), so the extra memory stays at about ``chunk_size x V`` floats whatever N is. The
    teacher's side of a chunk (top-k ids and values, [n, k+1]) is computed once and kept; only the
    full-vocabulary mode recomputes it.
    """
    n = ids.shape[0]
    chunk = n if not chunk_size else max(1, chunk_size)
    cache: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
    keep = spec is not None and (spec.topk is not None or not spec.full_logit)

    def teacher_side(rows: slice) -> TeacherSide:
        def get(student_topk: Callable[[], torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor]:
            if rows.start in cache:
                return cache[rows.start]
            idx = student_topk()
            with torch.no_grad():
                t_logits = teacher_logits_fn(rows).float()
                t_lse = torch.logsumexp(t_logits, dim=-1, keepdim=True)
                if not spec.full_logit:
                    value = t_logits.gather(-1, ids[rows][:, None]).squeeze(-1) - t_lse.squeeze(-1)
                else:
                    value = _to_bins(t_logits, t_lse, idx, spec)
            if keep:
                cache[rows.start] = (idx, value)
            return idx, value

        return get

    logps, divs = [], []
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))

        def run(rows: slice = rows) -> tuple[torch.Tensor, torch.Tensor]:
            teacher = teacher_side(rows) if teacher_logits_fn is not None else None
            return _chunk_terms(student_logits_fn(rows), teacher, ids[rows], spec)

        if recompute and torch.is_grad_enabled() and n > 0:
            logp, div = checkpoint(run, use_reentrant=False)
        else:
            logp, div = run()
        logps.append(logp)
        divs.append(div)
    if not logps:
        empty = ids.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(divs)


def is_ratio(logp: torch.Tensor, old_logp: torch.Tensor | None, clip: float | None) -> torch.Tensor:
    """Detached upper-clipped importance ratio min(exp(logp - old), clip); 1 when off (in ``logp``'s dtype,
    at least float32)."""
    if old_logp is None or clip is None:
        return torch.ones_like(logp)
    dtype = torch.promote_types(logp.dtype, torch.float32)
    return torch.exp((logp.detach().to(dtype) - old_logp.to(dtype)).clamp(-20.0, 20.0)).clamp(max=clip)


def self_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    alpha: float = 0.5,
    topk: int | None = 100,
    add_tail: bool = True,
    full_logit: bool = True,
    old_logprobs: torch.Tensor | None = None,
    is_clip: float | None = 2.0,
    teacher_min_ratio: float | None = None,
    teacher_max_ratio: float | None = None,
    seq_weights: torch.Tensor | None = None,
    aggregation: str = "seq-mean-token-mean",
    rollout_weights: torch.Tensor | None = None,
    chunk_size: int | None = 1024,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SDPO/RESD self-distillation loss on logits already computed for the response positions.

    Args:
        student_logits: [B, T, V]; row t predicts ``response_ids[:, t]``.
        teacher_logits: [B, T, V]; used as a constant.
        response_ids: [B, T] sampled response tokens.
        mask: [B, T] response mask times the per-sequence self-distillation mask.
        alpha: 0 forward KL(teacher||student), 1 reverse KL(student||teacher), else generalized JSD.
        topk: None for the full vocabulary, else the student's top-k ids (teacher gathered there).
        add_tail: add the tail bin log(1 - sum p) on both sides; False renormalizes over the k ids.
        full_logit: False uses the sampled-token estimator sg(log p - log q) * log p (alpha must be 1).
        old_logprobs: [B, T] log-probs of the sampling policy for the IS ratio; None means ratio 1.
        is_clip: upper clip of exp(log p - log p_old); None disables the ratio.
        teacher_min_ratio / teacher_max_ratio: RESD floor/ceiling q' = max(q, sg(s) + log r_min).
        seq_weights: [B] per-sequence weights (RESD success-rate rebalancing).
        aggregation: "seq-mean-token-mean" or "token-mean".
        rollout_weights: [B, T] extra detached per-token weights (rollout truncated IS).
        chunk_size: tokens per chunk for the log-softmax work (None: one chunk).

    Returns:
        (loss, metrics) where metrics holds detached floats.
    """
    spec = DistillationSpec(alpha, topk, add_tail, full_logit, teacher_min_ratio, teacher_max_ratio)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ")
    if response_ids.shape != student_logits.shape[:2] or mask.shape != response_ids.shape:
        raise ValueError("response_ids and mask must be [B, T] matching the logits")
    weights = token_weights(mask, seq_weights, aggregation)
    if rollout_weights is not None:
        weights = weights * rollout_weights.float()
    sel = (mask != 0).flatten().nonzero().squeeze(-1)
    vocab = student_logits.shape[-1]
    s_flat, t_flat = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    logp, div = token_terms(
        lambda rows: s_flat[sel[rows]],
        lambda rows: t_flat[sel[rows]],
        response_ids.flatten()[sel],
        spec,
        chunk_size=chunk_size,
        recompute=False,  # the logits already exist; chunking only bounds the log-softmax work
    )
    old = old_logprobs.flatten()[sel] if old_logprobs is not None else None
    ratio = is_ratio(logp, old, is_clip)
    w = weights.flatten()[sel]
    if sel.numel():
        loss = (w * ratio * div).sum()
    else:  # nothing to distil: a zero that still backpropagates (to zero gradients)
        loss = student_logits.sum() * 0.0
    metrics = {
        "loss": float(loss.detach()),
        "divergence_mean": float(div.detach().mean()) if div.numel() else 0.0,
        "mask_fraction": float((mask != 0).float().mean()) if mask.numel() else 0.0,
        "is_ratio_mean": float(ratio.mean()) if ratio.numel() else 1.0,
    }
    return loss, metrics
