"""Every loss variant against an independent dense float64 implementation (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from resd.losses import (
    group_advantages,
    grpo_loss,
    self_distillation_loss,
    token_terms,
    token_weights,
)
from resd.losses.distillation import DistillationSpec

B, T, V = 3, 6, 40


# ---------------------------------------------------------------- independent reference (float64)
def _log_softmax64(x: torch.Tensor) -> torch.Tensor:
    m = x.max()
    return x - (m + torch.log(torch.exp(x - m).sum()))


def _ref_token(s_logits, t_logits, y, alpha, topk, add_tail, full_logit, rmin, rmax):
    """One token, written out plainly: returns (per-token loss, student log p(y))."""
    lp = _log_softmax64(s_logits)
    lq = _log_softmax64(t_logits)
    if not full_logit:
        q_y = lq[y]
        if rmin is not None:
            q_y = torch.maximum(q_y, lp[y].detach() + math.log(rmin))
        if rmax is not None:
            q_y = torch.minimum(q_y, lp[y].detach() + math.log(rmax))
        return (lp[y] - q_y).detach() * lp[y], lp[y]
    if topk is None:
        a, b = lp, lq
    else:
        order = sorted(range(len(s_logits)), key=lambda i: -float(s_logits[i].detach()))[:topk]
        a = torch.stack([lp[i] for i in order])
        b = torch.stack([lq[i] for i in order])
        if add_tail:
            def tail(v):
                log_sum = torch.log(torch.exp(v).sum())
                log_sum = torch.clamp(log_sum, max=-1e-7)
                return torch.log(1 - torch.exp(log_sum)).reshape(1)

            a, b = torch.cat([a, tail(a)]), torch.cat([b, tail(b)])
        else:
            a = a - torch.log(torch.exp(a).sum())
            b = b - torch.log(torch.exp(b).sum())
    if rmin is not None:
        b = torch.maximum(b, a.detach() + math.log(rmin))
    if rmax is not None:
        b = torch.minimum(b, a.detach() + math.log(rmax))
    pa, pb = torch.exp(a), torch.exp(b)
    if alpha == 0:
        val = (pb * (b - a)).sum()
    elif alpha == 1:
        val = (pa * (a - b)).sum()
    else:
        mix = torch.log((1 - alpha) * pa + alpha * pb)
        val = (1 - alpha) * (pa * (a - mix)).sum() + alpha * (pb * (b - mix)).sum()
    return val, lp[y]


def _ref_loss(s, t, ids, mask, *, alpha=0.5, topk=100, add_tail=True, full_logit=True, old=None,
              is_clip=2.0, rmin=None, rmax=None, seq_weights=None, aggregation="seq-mean-token-mean",
              rollout_weights=None):
    s, t = s.double(), t.double()
    total = torch.zeros((), dtype=torch.float64)
    n_tok = float(mask.sum())
    for i in range(s.shape[0]):
        seq_sum = torch.zeros((), dtype=torch.float64)
        for j in range(s.shape[1]):
            if mask[i, j] == 0:
                continue
            val, lp_y = _ref_token(s[i, j], t[i, j], int(ids[i, j]), alpha, topk, add_tail, full_logit, rmin, rmax)
            ratio = 1.0
            if old is not None and is_clip is not None:
                ratio = min(math.exp(float(lp_y) - float(old[i, j])), is_clip)
            w = float(rollout_weights[i, j]) if rollout_weights is not None else 1.0
            seq_sum = seq_sum + val * ratio * w * float(mask[i, j])
        sw = float(seq_weights[i]) if seq_weights is not None else 1.0
        if aggregation == "seq-mean-token-mean":
            total = total + sw * seq_sum / max(1.0, float(mask[i].sum())) / s.shape[0]
        else:
            total = total + sw * seq_sum / max(1.0, n_tok)
    return total


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, V, generator=g) * 3
    t = s + torch.randn(B, T, V, generator=g) * 2  # a related but different teacher
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[0, 4:] = 0  # a shorter response
    mask[2] = 0  # a sequence without a teacher (sd_mask = 0) still counts in B
    return s, t, ids, mask


CASES = {
    "full-jsd": dict(topk=None, alpha=0.5),
    "full-forward-kl": dict(topk=None, alpha=0.0),
    "full-reverse-kl": dict(topk=None, alpha=1.0),
    "full-alpha0.3": dict(topk=None, alpha=0.3),
    "topk-tail-jsd": dict(topk=8, add_tail=True, alpha=0.5),
    "topk-tail-fkl": dict(topk=8, add_tail=True, alpha=0.0),
    "topk-tail-rkl": dict(topk=8, add_tail=True, alpha=1.0),
    "topk-tail-alpha0.7": dict(topk=8, add_tail=True, alpha=0.7),
    "topk-renorm-jsd": dict(topk=8, add_tail=False, alpha=0.5),
    "topk-renorm-rkl": dict(topk=8, add_tail=False, alpha=1.0),
    "topk-larger-than-vocab": dict(topk=1000, add_tail=True, alpha=0.5),
    "sampled-token": dict(full_logit=False, alpha=1.0),
    "sampled-token-floor": dict(full_logit=False, alpha=1.0, rmin=0.2),
    "floor": dict(topk=8, alpha=1.0, rmin=0.2),
    "floor-ceiling": dict(topk=8, alpha=0.5, rmin=0.2, rmax=5.0),
    "floor-full-vocab": dict(topk=None, alpha=0.0, rmin=0.2),
    "token-mean": dict(topk=8, alpha=0.5, aggregation="token-mean"),
    "seq-weights": dict(topk=8, alpha=1.0, seq_weights=True),
    "seq-weights-token-mean": dict(topk=8, alpha=0.5, seq_weights=True, aggregation="token-mean"),
    "is-clip": dict(topk=8, alpha=0.5, old=True, is_clip=2.0),
    "is-clip-small": dict(topk=8, alpha=1.0, old=True, is_clip=1.1),
    "is-off-with-old": dict(topk=8, alpha=0.5, old=True, is_clip=None),
    "rollout-weights": dict(topk=8, alpha=0.5, rollout_weights=True),
}


def _materialize(kw, s, ids):
    kw = dict(kw)
    g = torch.Generator().manual_seed(1)
    if kw.pop("seq_weights", False):
        kw["seq_weights"] = torch.tensor([1.5, 0.5, 1.0])
    if kw.pop("old", False):
        logp = torch.log_softmax(s.double(), -1).gather(-1, ids[..., None]).squeeze(-1)
        kw["old"] = (logp + torch.randn(B, T, generator=g, dtype=torch.float64)).float()
    if kw.pop("rollout_weights", False):
        kw["rollout_weights"] = torch.rand(B, T, generator=g) * 2
    return kw


def _ours(s, t, ids, mask, kw, chunk_size=None):
    kw = dict(kw)
    kw["teacher_min_ratio"] = kw.pop("rmin", None)
    kw["teacher_max_ratio"] = kw.pop("rmax", None)
    kw["old_logprobs"] = kw.pop("old", None)
    return self_distillation_loss(s, t, ids, mask, chunk_size=chunk_size, **kw)


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradient_match_dense_float64(name):
    s, t, ids, mask = _inputs()
    kw = _materialize(CASES[name], s, ids)

    s_ours = s.clone().requires_grad_(True)
    loss, metrics = _ours(s_ours, t, ids, mask, kw, chunk_size=5)
    loss.backward()

    s_ref = s.double().clone().requires_grad_(True)
    ref = _ref_loss(s_ref, t, ids, mask, **kw)
    ref.backward()

    assert torch.isfinite(loss)
    assert float(ref) != 0.0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(s_ours.grad.double(), s_ref.grad, rtol=1e-3, atol=1e-7)
    assert metrics["loss"] == pytest.approx(loss.item())
    # rows of the masked-out sequence get no gradient
    assert s_ours.grad[2].abs().max() == 0


def test_teacher_gets_no_gradient():
    s, t, ids, mask = _inputs()
    t = t.clone().requires_grad_(True)
    loss, _ = self_distillation_loss(s.requires_grad_(True), t, ids, mask)
    loss.backward()
    assert t.grad is None or t.grad.abs().max() == 0


def test_chunking_does_not_change_the_result():
    s, t, ids, mask = _inputs(3)
    ref, _ = self_distillation_loss(s, t, ids, mask, chunk_size=None, topk=8)
    for chunk in (1, 2, 7, 1000):
        val, _ = self_distillation_loss(s, t, ids, mask, chunk_size=chunk, topk=8)
        assert val.item() == pytest.approx(ref.item(), rel=1e-6)


def test_identical_teacher_gives_zero_loss():
    s, _, ids, mask = _inputs()
    for kw in (dict(alpha=0.0), dict(alpha=0.5), dict(alpha=1.0, topk=None), dict(topk=5, add_tail=False)):
        loss, _ = self_distillation_loss(s, s.clone(), ids, mask, **kw)
        assert abs(loss.item()) < 1e-5


def test_all_masked_gives_zero_with_a_graph():
    s, t, ids, _ = _inputs()
    s = s.requires_grad_(True)
    loss, _ = self_distillation_loss(s, t, ids, torch.zeros(B, T))
    loss.backward()
    assert loss.item() == 0.0 and s.grad.abs().max() == 0


def test_bad_arguments_are_rejected():
    s, t, ids, mask = _inputs()
    with pytest.raises(ValueError, match="alpha"):
        self_distillation_loss(s, t, ids, mask, alpha=1.5)
    with pytest.raises(ValueError, match="sampled-token"):
        self_distillation_loss(s, t, ids, mask, full_logit=False, alpha=0.5)
    with pytest.raises(ValueError, match="aggregation"):
        self_distillation_loss(s, t, ids, mask, aggregation="sum")
    with pytest.raises(ValueError, match="differ"):
        self_distillation_loss(s, t[:, :2], ids, mask)


def test_bf16_inputs_are_upcast():
    s, t, ids, mask = _inputs()
    lo, _ = self_distillation_loss(s.bfloat16(), t.bfloat16(), ids, mask, topk=8)
    hi, _ = self_distillation_loss(s.bfloat16().float(), t.bfloat16().float(), ids, mask, topk=8)
    assert lo.dtype == torch.float32
    assert lo.item() == pytest.approx(hi.item(), rel=1e-6)


@pytest.mark.parametrize("spec_kw", [dict(topk=8), dict(topk=None, alpha=1.0), dict(full_logit=False, alpha=1.0)])
def test_chunked_hidden_state_path_equals_the_reference_function(spec_kw):
    """The trainer's path: logits recomputed per chunk from hidden states with checkpointing."""
    g = torch.Generator().manual_seed(5)
    n, hidden = 23, 16
    h_s = torch.randn(n, hidden, generator=g, requires_grad=True)
    h_t = torch.randn(n, hidden, generator=g)
    w_s = torch.randn(V, hidden, generator=g, requires_grad=True)
    w_t = w_s.detach() + 0.3 * torch.randn(V, hidden, generator=g)
    ids = torch.randint(0, V, (n,), generator=g)
    spec = DistillationSpec(**spec_kw)

    logp, div = token_terms(lambda r: h_s[r] @ w_s.T, lambda r: h_t[r] @ w_t.T, ids, spec, chunk_size=4, recompute=True)
    ours = div.mean()
    ours.backward()
    grads = (h_s.grad.clone(), w_s.grad.clone())
    h_s.grad = None
    w_s.grad = None

    full_s = (h_s @ w_s.T)[None]
    full_t = (h_t @ w_t.T)[None]
    ref, _ = self_distillation_loss(
        full_s, full_t, ids[None], torch.ones(1, n), chunk_size=None, is_clip=None,
        alpha=spec.alpha, topk=spec.topk, full_logit=spec.full_logit,
    )
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grads[0], h_s.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1], w_s.grad, rtol=1e-4, atol=1e-6)
    ref_logp = torch.log_softmax((h_s @ w_s.T).double(), -1).gather(-1, ids[:, None]).squeeze(-1)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- aggregation
def test_token_weights_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    w = token_weights(mask, aggregation="seq-mean-token-mean")
    torch.testing.assert_close(w, torch.tensor([[1 / 6, 1 / 6, 0], [1 / 3, 0, 0], [0, 0, 0]]))
    w = token_weights(mask, aggregation="token-mean")
    torch.testing.assert_close(w, mask / 3)
    w = token_weights(mask, aggregation="seq-mean-token-sum-norm", norm_length=10)
    torch.testing.assert_close(w, mask / 30)


# ---------------------------------------------------------------- GRPO
def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0])
    groups = ["a", "a", "a", "a", "b"]
    adv = group_advantages(r, groups, normalize_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 5.0]))
    adv = group_advantages(r, groups, normalize_std=True)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased
    torch.testing.assert_close(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6))
    assert adv[4].item() == pytest.approx(5.0)  # a lone member: mean 0, std 1
    all_same = group_advantages(torch.ones(4), [0, 0, 0, 0])
    assert torch.all(all_same == 0)


def _ref_grpo(logp, old, adv, mask, lo, hi, c, aggregation, norm_len):
    logp, old = logp.double(), old.double()
    tot = torch.zeros((), dtype=torch.float64)
    for i in range(logp.shape[0]):
        s = torch.zeros((), dtype=torch.float64)
        for j in range(logp.shape[1]):
            if not mask[i, j]:
                continue
            r = torch.exp(logp[i, j] - old[i, j])
            a = float(adv[i])
            unclipped = -a * r
            clipped = -a * torch.clamp(r, 1 - lo, 1 + hi)
            val = torch.maximum(unclipped, clipped)
            if c is not None and a < 0:
                val = torch.minimum(val, torch.tensor(-a * c, dtype=torch.float64))
            s = s + val
        if aggregation == "seq-mean-token-mean":
            tot = tot + s / max(1.0, float(mask[i].sum())) / logp.shape[0]
        elif aggregation == "token-mean":
            tot = tot + s / float(mask.sum())
        else:
            tot = tot + s / (logp.shape[0] * norm_len)
    return tot


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_grpo_loss_matches_dense_float64(aggregation, dual_clip):
    g = torch.Generator().manual_seed(2)
    logp = (torch.randn(4, 5, generator=g) - 2).requires_grad_(True)
    old = logp.detach() + torch.randn(4, 5, generator=g) * 0.8  # ratios well outside the clip range
    adv = torch.tensor([1.0, -2.0, 0.5, -0.1])
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0
    loss, m = grpo_loss(logp, old, adv, mask, 0.2, 0.28, dual_clip, aggregation, norm_length=8)
    loss.backward()
    lref = logp.detach().double().requires_grad_(True)
    ref = _ref_grpo(lref, old, adv, mask, 0.2, 0.28, dual_clip, aggregation, 8)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(logp.grad.double(), lref.grad, rtol=1e-4, atol=1e-7)
    assert 0 < m["clip_fraction"] < 1


def test_grpo_on_policy_gradient_is_advantage_weighted_logprob():
    logp = torch.randn(2, 3).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0])
    loss, _ = grpo_loss(logp, None, adv, torch.ones(2, 3), aggregation="token-mean")
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv[:, None].expand(2, 3) / 6)
