"""Self-distillation: the divergence between the student and its self-teacher on the response tokens.

The math follows SDPO (arXiv 2601.20802; ``compute_self_distillation_loss`` in lasgroup/SDPO,
``verl/trainer/ppo/core_algos.py``) and RESD's additions (teacher floor and ceiling, the paper's
epsilon_min / epsilon_max; per-sequence success-rate weights, arXiv 2605.12741 App. B; code in
horizon-llm/RESD, ``selfevolve/resd/trainer/ppo/``). Every function here works in float32 whatever
the input dtype, and never materializes more than ``chunk_size x vocab`` log-probabilities at a time.

The trainer's forms apply the LM head chunk by chunk too: :func:`token_terms` (per-token terms; the
backward recomputes each chunk, or, ``fused=True`` with a frozen head, uses gradient rows computed in
the forward) and :func:`fused_token_loss` (a per-token-separable loss of those terms, with its
gradients with respect to the hidden states and the head computed in the forward: no recompute).
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


def _topk_bins(logp: torch.Tensor, spec: DistillationSpec) -> torch.Tensor:
    """The compared bins from the log-probabilities [N, k] of the top-k ids: plus a tail bin, or renormalized."""
    if spec.add_tail:
        return torch.cat([logp, _tail_bin(logp)], dim=-1)
    return logp - torch.logsumexp(logp, -1, keepdim=True)


def _to_bins(logits: torch.Tensor, lse: torch.Tensor, idx: torch.Tensor | None, spec: DistillationSpec) -> torch.Tensor:
    """Log-probabilities over the compared bins, [N, bins]: the full vocabulary (``idx`` None), or the
    ids ``idx`` (the student's top-k) plus a tail bin or renormalized over them."""
    if idx is None:
        return logits - lse
    return _topk_bins(logits.gather(-1, idx) - lse, spec)


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


def _logsumexp_(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.logsumexp(x, -1, keepdim=True)`` by the same operations (so the same values) and the
    sum of ``exp(x - max)``, which overwrites ``x``: no temporary of ``x``'s size."""
    m = x.amax(-1, keepdim=True)
    m.masked_fill_(m.abs() == math.inf, 0.0)
    s = x.sub_(m).exp_().sum(-1, keepdim=True)
    return s.log().add_(m), s


def _teacher_values(
    teacher_logits_fn: LogitsFn, rows: slice, ids: torch.Tensor, idx: torch.Tensor | None, spec: DistillationSpec
) -> torch.Tensor:
    """The teacher's log-probabilities over the bins ``idx`` of ``rows`` (or of the sampled ``ids`` for
    the sampled-token estimator), without gradient."""
    with torch.no_grad():
        t_logits = teacher_logits_fn(rows).float()
        if spec.full_logit and idx is None:
            return _to_bins(t_logits, torch.logsumexp(t_logits, dim=-1, keepdim=True), None, spec)
        picked = t_logits.gather(-1, ids[:, None] if not spec.full_logit else idx)
        if getattr(teacher_logits_fn, "heads_and_hidden", None) is not None:  # fresh logits (logits_fn): reuse them
            t_lse, _ = _logsumexp_(t_logits)
        else:
            t_lse = torch.logsumexp(t_logits, dim=-1, keepdim=True)
        del t_logits
        if not spec.full_logit:
            return (picked - t_lse).squeeze(-1)
        return _topk_bins(picked - t_lse, spec)


def token_terms(
    student_logits_fn: LogitsFn,
    teacher_logits_fn: LogitsFn | None,
    ids: torch.Tensor,
    spec: DistillationSpec | None,
    chunk_size: int | None = None,
    recompute: bool = True,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled-token log-probs and per-token divergences for N flattened response tokens.

    ``student_logits_fn(slice)`` returns the student's logits [n, V] of those rows (with grad);
    ``teacher_logits_fn(slice)`` the teacher's (called under no_grad). Rows are processed in chunks;
    with ``recompute`` each chunk's student logits are recomputed in backward (activation
    checkpointing), so the extra memory stays at about ``chunk_size x V`` floats whatever N is. The
    teacher's side of a chunk (top-k ids and values, [n, k+1]) is computed once and kept; only the
    full-vocabulary mode recomputes it.

    ``fused``: when the student is one frozen ``nn.Linear`` head over hidden states with grad (a
    :func:`resd.trainer.forward.logits_fn` of one pair; LoRA training, whose head gets no gradient),
    the forward also computes each token's gradient rows d logp[t]/d hidden[t] and d div[t]/d hidden[t]
    ([N, H] each) and the backward combines them with the incoming per-token gradients: exact for any
    per-token weighting, no recompute. Otherwise (a trainable head, several heads, a plain callable)
    the checkpointed path runs; a trainable head's fused form is :func:`fused_token_loss`.
    """
    n = ids.shape[0]
    chunk = n if not chunk_size else max(1, chunk_size)
    parts = _fusable(student_logits_fn) if fused and n > 0 else None
    if parts is not None:
        hidden, head, temperature = parts
        return _FusedTerms.apply(hidden, lambda: _run_fused_terms(
            hidden, head.weight, head.bias, teacher_logits_fn, ids, spec, chunk, temperature))
    cache: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
    keep = spec is not None and (spec.topk is not None or not spec.full_logit)

    def teacher_side(rows: slice) -> TeacherSide:
        def get(student_topk: Callable[[], torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor]:
            if rows.start in cache:
                return cache[rows.start]
            idx = student_topk()
            value = _teacher_values(teacher_logits_fn, rows, ids[rows], idx, spec)
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


# ---------------------------------------------------------------- fused LM head + loss (no recompute)
#
# A chunk's sampled-token log-prob and divergence depend on its student logits z [c, V] only through
# a few "leaves": lse = logsumexp(z) [c, 1], z at the sampled ids [c, 1] and, with top-k bins, z at
# the student's top-k ids [c, k]. So d(anything)/dz = g_lse * softmax(z) + scatter(g_y at y) +
# scatter(g_k at idx), with the g's the gradients with respect to the leaves, which a local autograd
# call over the tiny leaf tensors gives exactly (the same functions as ``_chunk_terms``). Only the
# full-vocabulary divergence depends on all of z; there the local autograd call runs on z itself.


_TEACHER_BLOCK = 512


def _teacher_blocks(teacher_fn: LogitsFn, rows: slice, ids: torch.Tensor, idx: torch.Tensor | None,
                    spec: DistillationSpec) -> torch.Tensor:
    """:func:`_teacher_values` of ``rows`` computed ``_TEACHER_BLOCK`` rows at a time (the values are
    per row): the teacher's logits then need at most a [512, V] buffer beside the student's."""
    n = rows.stop - rows.start
    if n <= _TEACHER_BLOCK:
        return _teacher_values(teacher_fn, rows, ids, idx, spec)
    return torch.cat([
        _teacher_values(teacher_fn, slice(rows.start + a, rows.start + min(n, a + _TEACHER_BLOCK)),
                        ids[a : a + _TEACHER_BLOCK], None if idx is None else idx[a : a + _TEACHER_BLOCK], spec)
        for a in range(0, n, _TEACHER_BLOCK)
    ])


def _student_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """What :func:`resd.trainer.forward.logits_fn` computes for one head: ``head(hidden).float() / T``."""
    z = torch.nn.functional.linear(hidden, weight, bias).float()
    return z / temperature if temperature != 1.0 else z


class _ChunkTerms:
    """(log p(y), divergence) of one chunk as functions of the leaves of its student logits ``z``.

    ``z`` (float32, no history, not shared) is overwritten: it holds ``exp(z - max)`` after the
    constructor, the softmax after :meth:`softmax`, d/dz after :meth:`dlogits`.
    """

    def __init__(self, z: torch.Tensor, teacher_fn: LogitsFn | None, rows: slice, ids: torch.Tensor,
                 spec: DistillationSpec | None) -> None:
        self.z, self.ids, self.idx = z, ids, None
        if teacher_fn is None or spec is None:
            spec = None
        self.dense = spec is not None and spec.full_logit and spec.topk is None
        if self.dense:
            self.leaves = [z.requires_grad_()]
            with torch.enable_grad():
                self.logp, self.div = _chunk_terms(
                    z, lambda _: (None, _teacher_values(teacher_fn, rows, ids, None, spec)), ids, spec)
            return
        z_y = z.gather(-1, ids[:, None])
        if spec is not None and spec.full_logit:
            self.idx = z.topk(min(spec.topk, z.shape[-1]), dim=-1).indices
            z_k = z.gather(-1, self.idx)
        self.lse, self.sum_exp = _logsumexp_(z)  # z now holds exp(z - max)
        self.leaves = [self.lse.requires_grad_(), z_y.requires_grad_()]
        with torch.enable_grad():
            self.logp = z_y.squeeze(-1) - self.lse.squeeze(-1)
            if spec is None:
                self.div = torch.zeros_like(self.logp.detach())
            elif not spec.full_logit:
                t = _clip_teacher(self.logp, _teacher_blocks(teacher_fn, rows, ids, None, spec), spec)
                self.div = (self.logp - t).detach() * self.logp
            else:
                t = _teacher_blocks(teacher_fn, rows, ids, self.idx, spec)
                self.leaves.append(z_k.requires_grad_())
                s = _topk_bins(z_k - self.lse, spec)
                self.div = divergence(s, _clip_teacher(s, t, spec), spec.alpha)

    def leaf_grads(self, out: torch.Tensor) -> list[torch.Tensor | None]:
        """d(out)/d(leaf) for every leaf (None where ``out`` does not depend on it)."""
        if not out.requires_grad:
            return [None] * len(self.leaves)
        return list(torch.autograd.grad(out, self.leaves, retain_graph=True, allow_unused=True))

    def softmax(self) -> torch.Tensor:
        """softmax(z) [c, V], computed in place (sparse modes only)."""
        return self.z.div_(self.sum_exp)

    def dlogits(self, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """d/dz [c, V] from the leaf gradients; consumes ``z``."""
        if self.dense:
            return grads[0] if grads[0] is not None else torch.zeros_like(self.z.detach())
        dz = self.z.mul_(grads[0] / self.sum_exp) if grads[0] is not None else self.z.zero_()  # g_lse * softmax
        if grads[1] is not None:
            dz.scatter_add_(-1, self.ids[:, None], grads[1])
        if self.idx is not None and grads[2] is not None:
            dz.scatter_add_(-1, self.idx, grads[2])
        return dz


def _run_fused_loss(hidden, weight, bias, teacher_fn, ids, spec, token_loss, chunk, temperature, need_h, need_w, need_b):
    """The body of :class:`_FusedLoss`: the loss, the per-token terms and the gradients (unscaled)."""
    n = ids.shape[0]
    dh = torch.empty_like(hidden) if need_h else None
    dw = (torch.empty_like(weight) if n else torch.zeros_like(weight)) if need_w else None  # the one head-sized
    # gradient buffer: the first chunk writes it, the others add to it in place
    db = torch.zeros_like(bias) if need_b else None
    loss = hidden.new_zeros((), dtype=torch.float32)
    logps, divs = [hidden.new_zeros(0, dtype=torch.float32)], [hidden.new_zeros(0, dtype=torch.float32)]
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        h = hidden[rows]
        terms = _ChunkTerms(_student_logits(h, weight, bias, temperature), teacher_fn, rows, ids[rows], spec)
        with torch.enable_grad():
            value = token_loss(terms.logp, terms.div, rows)
        loss = loss + value.detach()
        logps.append(terms.logp.detach())
        divs.append(terms.div.detach())
        if not (need_h or need_w or need_b):
            continue
        dz = terms.dlogits(terms.leaf_grads(value))
        del terms, value  # the chunk's local graph
        if temperature != 1.0:
            dz.div_(temperature)
        dz = dz.to(weight.dtype)
        if need_h:
            dh[rows] = dz @ weight
        if need_w:
            torch.mm(dz.T, h, out=dw) if start == 0 else dw.addmm_(dz.T, h)
        if need_b:
            db.add_(dz.sum(0))
        del dz
    return loss, torch.cat(logps), torch.cat(divs), dh, dw, db


class _FusedLoss(torch.autograd.Function):
    """Scalar loss whose gradients with respect to hidden, head weight and bias are computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, run):  # noqa: D102 (see fused_token_loss)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        loss, logp, div, ctx.dh, ctx.dw, ctx.db = run(need_h, need_w, need_b)
        ctx.mark_non_differentiable(logp, div)
        return loss, logp, div

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_logp, _grad_div):  # noqa: D102
        if getattr(ctx, "used", False):
            raise RuntimeError("the fused loss's backward can run only once (its gradient buffers are handed over)")
        ctx.used = True
        grads = []
        for name in ("dh", "dw", "db"):
            g = getattr(ctx, name)
            setattr(ctx, name, None)  # hand the buffer over: autograd can keep it as .grad without a copy
            grads.append(g.mul_(grad_loss) if g is not None else None)
        return *grads, None


def _linear_head(head: object) -> bool:
    return isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward


def fused_token_loss(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    teacher_logits_fn: LogitsFn | None,
    ids: torch.Tensor,
    spec: DistillationSpec | None,
    token_loss: Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor],
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A loss of the sampled-token log-probs and per-token divergences, fused with the student's LM head.

    ``token_loss(logp, div, rows)`` returns the loss of the rows ``rows`` given their [n] sampled-token
    log-probs and divergences (as :func:`token_terms` computes them, with gradient); it must be a sum
    over tokens (each token's term depending only on that token's ``logp``/``div`` and on detached
    inputs), so that the sum of its values over the chunks is the loss of all N tokens: any
    per-token weights, importance ratios and policy-gradient terms are fine (e.g.
    :func:`resd.losses.objective` on the rows' slices, taking only its loss).

    The student's logits are ``head(hidden[rows]).float() / temperature`` (``head`` an ``nn.Linear``),
    the teacher's ``teacher_logits_fn(rows)`` (as in :func:`token_terms`). For each chunk of rows the
    forward computes the logits, the terms, ``token_loss`` and, by a local autograd call over the
    chunk, its gradient with respect to the logits; it then projects that at once onto the hidden
    states (``dlogits @ W``) and, when the head is trainable, adds ``dlogits^T @ hidden`` to one
    head-sized buffer. The backward only multiplies those by the incoming gradient: nothing is
    recomputed, no per-chunk head-sized gradient is summed out of place, and at most one chunk's
    ``[chunk_size, V]`` logits are alive. Values and gradients equal those of :func:`token_terms`
    followed by ``token_loss`` on all rows.

    The learner's call (``Learner._micro_loss``; every per-token input sliced by ``rows``)::

        def chunk_loss(logp, div, rows):
            return objective(logp, div, old=None if old is None else old[rows],
                             rollout_logprobs=None if rollout is None else rollout[rows],
                             advantages=advantages[rows], w_sd=w_sd[rows], w_pg=w_pg[rows], spec=spec)[0]

        loss, logp, div = fused_token_loss(hidden, lm_head(model), teacher_fn, ids, distillation_spec,
                                           chunk_loss, chunk_size, temperature)
        _, stats = objective(logp, div, old=old, ...)  # detached terms: the statistics only

    Returns:
        ``(loss, logp, div)``: the scalar loss (differentiable with respect to ``hidden`` and the head's
        parameters; its backward can run once) and the detached [N] terms, for statistics. A head
        that is not a plain ``nn.Linear`` (e.g. one wrapped by LoRA) takes the checkpointed
        :func:`token_terms` path instead, with the same results.
    """
    n = ids.shape[0]
    chunk = max(1, chunk_size or n)
    if not _linear_head(head):
        def student(rows: slice) -> torch.Tensor:
            logits = head(hidden[rows]).float()
            return logits / temperature if temperature != 1.0 else logits

        logp, div = token_terms(student, teacher_logits_fn, ids, spec, chunk_size, recompute=True)
        return token_loss(logp, div, slice(0, n)), logp.detach(), div.detach()
    weight, bias = head.weight, head.bias
    if not torch.is_grad_enabled():
        loss, logp, div, *_ = _run_fused_loss(hidden, weight, bias, teacher_logits_fn, ids, spec, token_loss, chunk,
                                              temperature, False, False, False)
        return loss, logp, div

    def run(need_h: bool, need_w: bool, need_b: bool):
        return _run_fused_loss(hidden, weight, bias, teacher_logits_fn, ids, spec, token_loss, chunk, temperature,
                               need_h, need_w, need_b)

    return _FusedLoss.apply(hidden, weight, bias, run)


def _run_fused_terms(hidden, weight, bias, teacher_fn, ids, spec, chunk, temperature):
    """The body of :class:`_FusedTerms`: per-token terms and their gradient rows d(term_t)/d(hidden_t)."""
    n = ids.shape[0]
    d_logp = hidden.new_zeros(hidden.shape, dtype=torch.float32)
    d_div = hidden.new_zeros(hidden.shape, dtype=torch.float32)
    logps, divs = [hidden.new_zeros(0, dtype=torch.float32)], [hidden.new_zeros(0, dtype=torch.float32)]
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        terms = _ChunkTerms(_student_logits(hidden[rows], weight, bias, temperature), teacher_fn, rows, ids[rows], spec)
        logps.append(terms.logp.detach())
        divs.append(terms.div.detach())
        with torch.enable_grad():
            g_logp, g_div = terms.leaf_grads(terms.logp.sum()), terms.leaf_grads(terms.div.sum())
        if terms.dense:  # d(term_t)/dz_t is row t of the gradient of the sum: rows are independent
            both = torch.cat([terms.dlogits(g_logp), terms.dlogits(g_div)])
            if temperature != 1.0:
                both.div_(temperature)
            both = (both.to(weight.dtype) @ weight).float()
            d_logp[rows], d_div[rows] = both[: rows.stop - start], both[rows.stop - start :]
            continue
        # d/dz = g_lse * softmax + scatter(g_y at y) + scatter(g_k at idx), projected: softmax @ W, W[y], W[idx]
        p_w = (terms.softmax().to(weight.dtype) @ weight).float()
        w_y = torch.nn.functional.embedding(ids[rows], weight).float()
        for g, out in ((g_logp, d_logp), (g_div, d_div)):
            acc = torch.zeros_like(p_w)
            if g[0] is not None:
                acc.add_(g[0] * p_w)
            if g[1] is not None:
                acc.add_(g[1] * w_y)
            if terms.idx is not None and g[2] is not None:
                acc.add_(torch.nn.functional.embedding_bag(terms.idx, weight, mode="sum",
                                                           per_sample_weights=g[2].to(weight.dtype)).float())
            out[rows] = acc / temperature if temperature != 1.0 else acc
        del terms
    return torch.cat(logps), torch.cat(divs), d_logp, d_div


class _FusedTerms(torch.autograd.Function):
    """Per-token (logp, div) whose gradient rows with respect to the hidden states are computed in forward."""

    @staticmethod
    def forward(ctx, hidden, run):  # noqa: D102 (see token_terms, fused=True)
        logp, div, ctx.d_logp, ctx.d_div = run()
        ctx.dtype = hidden.dtype
        return logp, div

    @staticmethod
    def backward(ctx, grad_logp, grad_div):  # noqa: D102
        return (grad_logp[:, None] * ctx.d_logp + grad_div[:, None] * ctx.d_div).to(ctx.dtype), None


def _fusable(student_logits_fn: LogitsFn) -> tuple[torch.Tensor, torch.nn.Linear, float] | None:
    """(hidden, head, temperature) when ``student_logits_fn`` is one frozen ``nn.Linear`` head over
    hidden states with grad (a :func:`resd.trainer.forward.logits_fn` of one pair), else None."""
    pairs = getattr(student_logits_fn, "heads_and_hidden", None)
    if pairs is None or len(pairs) != 1 or not torch.is_grad_enabled():
        return None
    head, hidden, weight = pairs[0]
    if weight != 1.0 or not _linear_head(head) or not hidden.requires_grad:
        return None
    if any(p is not None and p.requires_grad for p in (head.weight, head.bias)):
        return None
    return hidden, head, float(getattr(student_logits_fn, "temperature", 1.0))


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
