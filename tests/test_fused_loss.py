"""The fused LM head + loss (``fused_token_loss``, ``token_terms(..., fused=True)``) against the
checkpointed path and the dense float64 reference of ``test_losses`` (values, and gradients with
respect to the hidden states and the head), for every setting the loss supports."""

from __future__ import annotations

import pytest
import torch
from test_losses import CASES, _materialize, _ref_loss, B, T, V  # the float64 reference and its cases

from resd.losses import ObjectiveSpec, is_ratio, objective, token_terms, token_weights
from resd.losses.distillation import DistillationSpec, fused_token_loss
from resd.trainer.forward import logits_fn

H = 12
TEMPERATURES = {"topk-tail-jsd": 0.7, "sampled-token-floor": 1.3, "full-jsd": 0.6}  # a few cases with T != 1


def _heads(seed: int = 0, bias: bool = False, dtype=torch.float32):
    """Student hidden states [B, T, H] and head, teacher hidden states and head (a related model)."""
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(B, T, H, generator=g, dtype=dtype)
    h_t = h_s + 0.5 * torch.randn(B, T, H, generator=g, dtype=dtype)
    student = torch.nn.Linear(H, V, bias=bias, dtype=dtype)
    teacher = torch.nn.Linear(H, V, bias=bias, dtype=dtype)
    with torch.no_grad():
        student.weight.copy_(torch.randn(V, H, generator=g) * 0.9)
        teacher.weight.copy_(student.weight + 0.6 * torch.randn(V, H, generator=g))
        if bias:
            student.bias.copy_(torch.randn(V, generator=g))
            teacher.bias.copy_(student.bias + 0.3 * torch.randn(V, generator=g))
    teacher.requires_grad_(False)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[0, 4:] = 0  # a shorter response
    mask[2] = 0  # a sequence without a teacher still counts in B
    return h_s, h_t, student, teacher, ids, mask


def _spec(kw) -> DistillationSpec:
    return DistillationSpec(kw.get("alpha", 0.5), kw.get("topk", 100), kw.get("add_tail", True),
                            kw.get("full_logit", True), kw.get("rmin"), kw.get("rmax"))


def _flat(kw, mask, ids):
    """The selected rows, their ids, weights (aggregation x rollout weights) and old log-probs."""
    sel = (mask != 0).flatten().nonzero().squeeze(-1)
    w = token_weights(mask, kw.get("seq_weights"), kw.get("aggregation", "seq-mean-token-mean"))
    if kw.get("rollout_weights") is not None:
        w = w * kw["rollout_weights"].float()
    old = kw["old"].flatten()[sel] if kw.get("old") is not None else None
    return sel, ids.flatten()[sel], w.flatten()[sel], old


def _token_loss(w, old, is_clip):
    """The distillation objective (as self_distillation_loss computes it) of the rows ``rows``."""
    def loss(logp, div, rows):
        return (w[rows] * is_ratio(logp, None if old is None else old[rows], is_clip) * div).sum()

    return loss


def _reference(kw, temperature, frozen_head=False):
    """Dense float64: loss, grad wrt hidden [B, T, H], grad wrt the head weight."""
    h_s, h_t, student, teacher, ids, mask = _heads()
    h = h_s.double().requires_grad_(True)
    w = student.weight.detach().double().requires_grad_(not frozen_head)
    s = (h @ w.T) / temperature
    t = (h_t.double() @ teacher.weight.double().T) / temperature
    ref = _ref_loss(s, t, ids, mask, **kw)
    ref.backward()
    return ref, h.grad, None if frozen_head else w.grad


def _kw(name):
    h_s, _, student, _, ids, _ = _heads()
    logits = (h_s @ student.weight.detach().T) / TEMPERATURES.get(name, 1.0)
    return _materialize(CASES[name], logits, ids)


def _run(name, kw, fused: bool, chunk_size=5, frozen_head=False):
    """Our loss on the selected rows through the fused or the checkpointed path; grads on [B, T, H] and W."""
    temperature = TEMPERATURES.get(name, 1.0)
    h_s, h_t, student, teacher, ids, mask = _heads()
    student.requires_grad_(not frozen_head)
    sel, flat_ids, w, old = _flat(kw, mask, ids)
    h_all = h_s.clone().requires_grad_(True)
    hidden = h_all.reshape(-1, H)[sel]
    t_fn = logits_fn([(teacher, h_t.reshape(-1, H)[sel], 1.0)], temperature)
    token_loss = _token_loss(w, old, kw.get("is_clip", 2.0))
    spec = _spec(kw)
    if frozen_head:  # per-token outputs, the learner's objective applied to all of them
        logp, div = token_terms(logits_fn([(student, hidden, 1.0)], temperature), t_fn, flat_ids, spec, chunk_size,
                                fused=fused)
        if fused:
            assert type(logp.grad_fn).__name__.startswith("_FusedTerms")
        loss = token_loss(logp, div, slice(0, len(sel)))
    elif fused:
        loss, logp, div = fused_token_loss(hidden, student, t_fn, flat_ids, spec, token_loss, chunk_size, temperature)
        assert not logp.requires_grad and not div.requires_grad
    else:
        logp, div = token_terms(logits_fn([(student, hidden, 1.0)], temperature), t_fn, flat_ids, spec, chunk_size)
        loss = token_loss(logp, div, slice(0, len(sel)))
    loss.backward()
    return loss.detach(), logp.detach(), div.detach(), h_all.grad, student.weight.grad


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_loss_matches_checkpointed_path_and_dense_float64(name):
    kw = _kw(name)
    loss, logp, div, g_h, g_w = _run(name, kw, fused=True)
    ref, ref_h, ref_w = _reference(kw, TEMPERATURES.get(name, 1.0))
    assert ref.item() != 0.0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(g_h.double(), ref_h, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(g_w.double(), ref_w, rtol=1e-3, atol=1e-7)
    assert g_h[2].abs().max() == 0  # the masked-out sequence

    c_loss, c_logp, c_div, c_h, c_w = _run(name, kw, fused=False)
    assert loss.item() == pytest.approx(c_loss.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(logp, c_logp, rtol=0, atol=0)  # the same float32 operations
    torch.testing.assert_close(div, c_div, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_h, c_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_w, c_w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_per_token_terms_with_a_frozen_head_match(name):
    """token_terms(fused=True): per-token outputs, exact for any per-token weighting applied afterwards."""
    kw = _kw(name)
    loss, logp, div, g_h, g_w = _run(name, kw, fused=True, frozen_head=True)
    assert g_w is None
    ref, ref_h, _ = _reference(kw, TEMPERATURES.get(name, 1.0), frozen_head=True)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(g_h.double(), ref_h, rtol=1e-3, atol=1e-7)
    c_loss, c_logp, c_div, c_h, _ = _run(name, kw, fused=False, frozen_head=True)
    assert loss.item() == pytest.approx(c_loss.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(logp, c_logp, rtol=0, atol=0)
    torch.testing.assert_close(div, c_div, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_h, c_h, rtol=1e-4, atol=1e-6)


def _objective_inputs(n, seed=3):
    g = torch.Generator().manual_seed(seed)
    old = -3.0 * torch.rand(n, generator=g)
    rollout = old + 0.4 * torch.randn(n, generator=g)
    adv = torch.randn(n, generator=g)
    w_sd = torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.3)
    w_pg = torch.rand(n, generator=g)
    return old, rollout, adv, w_sd, w_pg


@pytest.mark.parametrize("pg_weight", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("off_policy", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_objective_matches_the_learners_path(pg_weight, off_policy, bias):
    """How the learner calls it: resd.losses.objective on each chunk's rows (PPO-clip, IS ratio, TIS)."""
    h_s, h_t, student, teacher, ids, _ = _heads(seed=7, bias=bias)
    n = B * T
    hidden0, ids = h_s.reshape(n, H), ids.flatten()
    old, rollout, adv, w_sd, w_pg = _objective_inputs(n)
    old = old if off_policy else None
    spec = ObjectiveSpec(pg_weight=pg_weight, is_clip=2.0, rollout_is_threshold=1.5, dual_clip=3.0)
    dspec = None if pg_weight == 1.0 else DistillationSpec(alpha=0.5, topk=8)
    t_fn = None if dspec is None else logits_fn([(teacher, h_t.reshape(n, H), 1.0)], 0.8)

    def cut(x, rows):
        return None if x is None else x[rows]

    def chunk_loss(logp, div, rows):
        return objective(logp, div, old=cut(old, rows), rollout_logprobs=rollout[rows], advantages=adv[rows],
                         w_sd=w_sd[rows], w_pg=w_pg[rows], spec=spec)[0]

    hidden = hidden0.clone().requires_grad_(True)
    loss, logp, div = fused_token_loss(hidden, student, t_fn, ids, dspec, chunk_loss, chunk_size=4, temperature=0.8)
    (loss * 2).backward()  # the learner scales by the world size
    _, stats = objective(logp, div, old=old, rollout_logprobs=rollout, advantages=adv, w_sd=w_sd, w_pg=w_pg, spec=spec)
    fused = (loss.detach(), hidden.grad, *(p.grad for p in student.parameters()))
    student.zero_grad()

    hidden = hidden0.clone().requires_grad_(True)
    c_logp, c_div = token_terms(logits_fn([(student, hidden, 1.0)], 0.8), t_fn, ids, dspec, 4)
    c_loss, c_stats = objective(c_logp, c_div, old=old, rollout_logprobs=rollout, advantages=adv, w_sd=w_sd,
                                w_pg=w_pg, spec=spec)
    (c_loss * 2).backward()
    assert fused[0].item() == pytest.approx(c_loss.item(), rel=1e-5, abs=1e-7)
    for ours, theirs in zip(fused[1:], (hidden.grad, *(p.grad for p in student.parameters())), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert stats.keys() == c_stats.keys()
    for k in stats:
        assert stats[k] == pytest.approx(c_stats[k], rel=1e-5, abs=1e-7)


def _simple(chunk_size=3, fused=True, grad=True):
    h_s, h_t, student, teacher, ids, _ = _heads(seed=4)
    hidden = h_s.reshape(-1, H).clone().requires_grad_(grad)
    w = torch.rand(hidden.shape[0], generator=torch.Generator().manual_seed(8))
    t_fn = logits_fn([(teacher, h_t.reshape(-1, H), 1.0)])
    spec = DistillationSpec(alpha=0.5, topk=8)
    if fused:
        loss, _, _ = fused_token_loss(hidden, student, t_fn, ids.flatten(), spec,
                                      lambda logp, div, rows: (w[rows] * div).sum(), chunk_size)
    else:
        _, div = token_terms(logits_fn([(student, hidden, 1.0)]), t_fn, ids.flatten(), spec, chunk_size)
        loss = (w * div).sum()
    return loss, hidden, student


def test_chunk_size_does_not_change_the_fused_result():
    ref, _, _ = _simple(chunk_size=None, fused=False)
    first = None  # the gradients with chunk 1, compared with those of one chunk
    for chunk in (1, 2, 7, None, 1000):
        loss, hidden, student = _simple(chunk_size=chunk)
        loss.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
        if chunk in (1, None):
            grads = (hidden.grad, student.weight.grad)
            if first is None:
                first = grads
            else:
                torch.testing.assert_close(grads, first, rtol=1e-5, atol=1e-6)


def test_gradients_accumulate_over_micro_batches_and_shared_weights():
    """.grad accumulates over micro-batches; a head weight also used elsewhere (tied embedding) gets the sum."""
    h_s, h_t, student, teacher, ids, _ = _heads(seed=4)
    hidden, ids = h_s.reshape(-1, H), ids.flatten()
    t_fn = logits_fn([(teacher, h_t.reshape(-1, H), 1.0)])
    spec = DistillationSpec(alpha=0.5, topk=8)

    def fused():
        return fused_token_loss(hidden, student, t_fn, ids, spec, lambda lp, d, rows: d.sum(), 3)[0]

    def checkpointed():
        return token_terms(logits_fn([(student, hidden, 1.0)]), t_fn, ids, spec, 3)[1].sum()

    grads = []
    for loss_fn in (checkpointed, fused):
        student.zero_grad()
        (loss_fn() + (student.weight ** 2).sum()).backward()
        (loss_fn() * 0.5).backward()  # a second micro-batch
        grads.append(student.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_backward_runs_once():
    loss, _, _ = _simple()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_without_grad_and_without_tokens():
    with torch.no_grad():
        loss, hidden, student = _simple()
        ref, _, _ = _simple(fused=False)
    assert loss.grad_fn is None and loss.item() == pytest.approx(ref.item(), rel=1e-6)
    _, _, student, teacher, _, _ = _heads()
    hidden = torch.zeros(0, H, requires_grad=True)
    loss, logp, div = fused_token_loss(hidden, student, None, torch.zeros(0, dtype=torch.long), None,
                                       lambda lp, d, rows: (lp * 2).sum(), 4)
    loss.backward()  # a zero that still backpropagates (zero gradients), as a dummy micro-batch needs
    assert loss.item() == 0.0 and logp.shape == (0,) and div.shape == (0,)
    assert student.weight.grad.abs().max() == 0


def test_a_head_that_is_not_a_plain_linear_takes_the_checkpointed_path():
    class Wrapped(torch.nn.Module):  # e.g. a LoRA-wrapped head: weight alone is not the whole map
        def __init__(self, inner):
            super().__init__()
            self.inner, self.extra = inner, torch.nn.Parameter(torch.full((V,), 0.25))

        def forward(self, x):
            return self.inner(x) + self.extra

    h_s, h_t, student, teacher, ids, _ = _heads(seed=2)
    hidden0, ids = h_s.reshape(-1, H), ids.flatten()
    head = Wrapped(student)
    t_fn = logits_fn([(teacher, h_t.reshape(-1, H), 1.0)])
    spec = DistillationSpec(alpha=1.0, topk=8)
    hidden = hidden0.clone().requires_grad_(True)
    loss, _, _ = fused_token_loss(hidden, head, t_fn, ids, spec, lambda lp, d, rows: d.sum(), 4, 0.9)
    loss.backward()
    got = (hidden.grad, head.extra.grad.clone(), student.weight.grad.clone())
    head.zero_grad()
    hidden = hidden0.clone().requires_grad_(True)
    _, div = token_terms(logits_fn([(head, hidden, 1.0)], 0.9), t_fn, ids, spec, 4)
    div.sum().backward()
    assert loss.item() == pytest.approx(div.sum().item(), rel=1e-6)
    for a, b in zip(got, (hidden.grad, head.extra.grad, student.weight.grad), strict=True):
        torch.testing.assert_close(a, b)


def test_fused_terms_fall_back_with_a_trainable_head():
    h_s, h_t, student, teacher, ids, _ = _heads(seed=2)
    hidden = h_s.reshape(-1, H).requires_grad_(True)
    t_fn = logits_fn([(teacher, h_t.reshape(-1, H), 1.0)])
    logp, div = token_terms(logits_fn([(student, hidden, 1.0)]), t_fn, ids.flatten(), DistillationSpec(topk=8), 4,
                            fused=True)
    assert "Fused" not in type(div.grad_fn).__name__  # the checkpointed path: it also trains the head
    div.sum().backward()
    assert student.weight.grad is not None


def test_bf16_fused_is_close_to_the_checkpointed_path():
    h_s, h_t, student, teacher, ids, _ = _heads(seed=6, dtype=torch.bfloat16)
    hidden0, ids = h_s.reshape(-1, H), ids.flatten()
    t_fn = logits_fn([(teacher, h_t.reshape(-1, H), 1.0)])
    spec = DistillationSpec(alpha=0.5, topk=8)
    hidden = hidden0.clone().requires_grad_(True)
    loss, _, _ = fused_token_loss(hidden, student, t_fn, ids, spec, lambda lp, d, rows: d.sum(), 4)
    loss.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == torch.bfloat16
    assert student.weight.grad.dtype == torch.bfloat16
    got = (hidden.grad.float(), student.weight.grad.float())
    student.zero_grad()
    hidden = hidden0.clone().requires_grad_(True)
    _, div = token_terms(logits_fn([(student, hidden, 1.0)]), t_fn, ids, spec, 4)
    div.sum().backward()
    assert loss.item() == pytest.approx(div.sum().item(), rel=1e-5)
    torch.testing.assert_close(got[0], hidden.grad.float(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(got[1], student.weight.grad.float(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("spec_kw", [dict(topk=8, rmin=0.2), dict(full_logit=False, alpha=1.0, rmin=0.3)])
def test_teacher_blocks_inside_a_chunk(monkeypatch, spec_kw):
    """A chunk's teacher logits are computed a few rows at a time: the same terms (up to rounding)."""
    import resd.losses.distillation as distillation

    monkeypatch.setattr(distillation, "_TEACHER_BLOCK", 2)
    kw = dict(spec_kw)
    spec = DistillationSpec(kw.get("alpha", 0.5), kw.get("topk", 100), True, kw.get("full_logit", True), kw["rmin"])
    h_s, h_t, student, teacher, ids, _ = _heads(seed=9)
    hidden0, ids = h_s.reshape(-1, H), ids.flatten()
    t_fn = logits_fn([(teacher, h_t.reshape(-1, H), 1.0)])
    hidden = hidden0.clone().requires_grad_(True)
    loss, _, div = fused_token_loss(hidden, student, t_fn, ids, spec, lambda lp, d, rows: d.sum(), 7)
    loss.backward()
    got = (hidden.grad, student.weight.grad.clone())
    student.zero_grad()
    hidden = hidden0.clone().requires_grad_(True)
    _, c_div = token_terms(logits_fn([(student, hidden, 1.0)]), t_fn, ids, spec, 7)
    c_div.sum().backward()
    torch.testing.assert_close(div, c_div.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[1], student.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pg_weight, off_policy", [(0.0, False), (0.3, True)])
def test_the_learners_recipe_on_a_tiny_model_with_a_tied_head(pg_weight, off_policy):
    """The call the learner makes (see fused_token_loss), on a Qwen2 whose head is its input embedding:
    every parameter's gradient equals the one of token_terms + objective."""
    import copy

    from resd.models.loading import build_tiny_model
    from resd.trainer.forward import lm_head, pack_rows, response_hidden

    vocab = 300
    model = build_tiny_model(vocab, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64)
    teacher = copy.deepcopy(model).requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    assert lm_head(model).weight is model.get_input_embeddings().weight

    def tokens(*lengths):
        return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]

    prompts, teacher_prompts, responses = tokens(5, 9, 3), tokens(7, 4, 6), tokens(6, 11, 4)
    n = sum(map(len, responses))
    ids = torch.tensor([t for r in responses for t in r])
    old = -5 + torch.randn(n, generator=g) if off_policy else None
    rollout, adv = -5 + torch.randn(n, generator=g), torch.randn(n, generator=g)
    w_sd, w_pg = torch.rand(n, generator=g), torch.rand(n, generator=g)
    spec, dspec, temperature = ObjectiveSpec(pg_weight=pg_weight), DistillationSpec(alpha=0.5, topk=20), 0.9

    def run(fused: bool):
        model.zero_grad()
        hidden = response_hidden(model, pack_rows(prompts, responses, 0))
        with torch.no_grad():
            t_hidden = response_hidden(teacher, pack_rows(teacher_prompts, responses, 0))
        t_fn = logits_fn([(lm_head(teacher), t_hidden, 1.0)], temperature)
        if fused:
            def chunk_loss(logp, div, rows):
                return objective(logp, div, old=None if old is None else old[rows], rollout_logprobs=rollout[rows],
                                 advantages=adv[rows], w_sd=w_sd[rows], w_pg=w_pg[rows], spec=spec)[0]

            loss, logp, div = fused_token_loss(hidden, lm_head(model), t_fn, ids, dspec, chunk_loss, 8, temperature)
        else:
            logp, div = token_terms(logits_fn([(lm_head(model), hidden, 1.0)], temperature), t_fn, ids, dspec, 8)
        full, stats = objective(logp, div, old=old, rollout_logprobs=rollout, advantages=adv, w_sd=w_sd, w_pg=w_pg,
                                spec=spec)
        (loss if fused else full).backward()
        return (loss if fused else full).item(), stats, {k: p.grad.clone() for k, p in model.named_parameters()}

    loss, stats, grads = run(fused=True)
    c_loss, c_stats, c_grads = run(fused=False)
    assert loss == pytest.approx(c_loss, rel=1e-5)
    assert stats == pytest.approx(c_stats, rel=1e-5)
    for name, grad in c_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
