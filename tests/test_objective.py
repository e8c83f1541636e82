"""resd.losses.objective: against a plain float64 loop, and against the trainer's own arithmetic."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from resd.losses import ObjectiveSpec, is_ratio, objective, ppo_clip_token_loss

TOL = dict(rtol=1e-10, atol=1e-10)
SEEDS, SIZES = (0, 1, 2), (1, 8, 37)
GRID = list(itertools.product((0.0, 0.3, 1.0), (False, True), (False, True), (None, 3.0)))
GRID_IDS = [f"pg{w}-{'off' if o else 'on'}-{'tis' if t else 'notis'}-dual{d}" for w, o, t, d in GRID]


# ---------------------------------------------------------------- inputs
def _inputs(seed: int, n: int, *, off_policy: bool, with_tis: bool) -> dict[str, torch.Tensor | None]:
    """Per-token float64 inputs; a few tokens push the log-ratios past the [-20, 20] clamp."""
    g = torch.Generator().manual_seed(seed * 1000 + n)

    def rand() -> torch.Tensor:
        return torch.rand(n, generator=g, dtype=torch.float64)

    def randn() -> torch.Tensor:
        return torch.randn(n, generator=g, dtype=torch.float64)

    logp = -3.0 * rand() - 1e-3
    div = 2.0 * rand()
    old = None
    if off_policy:
        old = logp + 0.4 * randn()
        if n >= 3:
            old[0], old[1] = logp[0] - 25.0, logp[1] + 25.0
    rollout = None
    if with_tis:
        base = logp if old is None else old
        rollout = base + 0.4 * randn()
        if n >= 3:
            rollout[2] = base[2] - 30.0
    seq = torch.sort(torch.randint(0, max(1, n // 4), (n,), generator=g)).values  # sequence id of each token
    adv_seq = torch.randn(int(seq.max()) + 1, generator=g, dtype=torch.float64)
    adv_seq[0] = 0.0 if n > 8 else adv_seq[0]  # a zero-advantage sequence
    w_sd = rand() * (rand() > 0.3)
    w_pg = rand() * (rand() > 0.2)
    return dict(logp=logp, div=div, old=old, rollout=rollout, adv=adv_seq[seq], w_sd=w_sd, w_pg=w_pg)


def _spec(seed: int, pg_weight: float, dual_clip: float | None) -> ObjectiveSpec:
    clip_low, clip_high = ((0.2, 0.28), (0.1, 0.5), (0.3, 0.3))[seed % 3]
    return ObjectiveSpec(pg_weight=pg_weight, is_clip=2.0 if seed % 2 == 0 else None, rollout_is_threshold=1.5,
                         clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)


# ---------------------------------------------------------------- independent reference (float64)
def _bounded_exp(x: float) -> float:
    return math.exp(min(20.0, max(-20.0, x)))


def _reference(x: dict, spec: ObjectiveSpec, logp: torch.Tensor, div: torch.Tensor):
    """Token by token, with Python floats for every constant factor and plain branches for the clips."""
    lam = spec.pg_weight
    old, rollout, adv, w_sd, w_pg = x["old"], x["rollout"], x["adv"], x["w_sd"], x["w_pg"]
    distill = pg = torch.zeros((), dtype=torch.float64)
    div_sum = div_tokens = ratio_sum = clipped = tis_sum = 0.0
    for t in range(logp.shape[0]):
        lp, lpv = logp[t], float(logp[t].detach())
        o = lpv if old is None else float(old[t])
        tis = 1.0
        if rollout is not None and spec.rollout_is_threshold is not None:
            tis = min(_bounded_exp(o - float(rollout[t])), spec.rollout_is_threshold)
        tis_sum += tis
        if lam < 1:
            rho = 1.0
            if old is not None and spec.is_clip is not None:
                rho = min(_bounded_exp(lpv - o), spec.is_clip)
            distill = distill + float(w_sd[t]) * rho * tis * div[t]
            if w_sd[t] > 0:
                div_sum, div_tokens, ratio_sum = div_sum + float(div[t].detach()), div_tokens + 1, ratio_sum + rho
        if lam > 0:
            a, d = float(adv[t]), lp - o
            r = torch.exp(d) if -20.0 <= d.item() <= 20.0 else torch.tensor(_bounded_exp(d.item()), dtype=torch.float64)
            if a > 0 and r.item() > 1 + spec.clip_high:  # clipped branch: a constant
                loss_t, clipped = torch.tensor(-a * (1 + spec.clip_high), dtype=torch.float64), clipped + 1
            elif a < 0 and r.item() < 1 - spec.clip_low:
                loss_t, clipped = torch.tensor(-a * (1 - spec.clip_low), dtype=torch.float64), clipped + 1
            else:
                loss_t = -a * r
            if spec.dual_clip is not None and a < 0 and loss_t.item() > -spec.dual_clip * a:
                loss_t = torch.tensor(-spec.dual_clip * a, dtype=torch.float64)
            pg = pg + float(w_pg[t]) * tis * loss_t
    loss = torch.zeros((), dtype=torch.float64)
    stats = {}
    if lam < 1:
        loss = loss + (1 - lam) * distill
        stats.update(distill=distill.item(), div_sum=div_sum, div_tokens=div_tokens, ratio_sum=ratio_sum)
    if lam > 0:
        loss = loss + lam * pg
        stats.update(pg=pg.item(), clipped=clipped)
    stats.update(tis_sum=tis_sum, tokens=float(logp.shape[0]))
    return loss, stats


# ---------------------------------------------------------------- helpers
def _leaves(x: dict, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return x["logp"].to(dtype).requires_grad_(True), x["div"].to(dtype).requires_grad_(True)


def _ours(x: dict, spec: ObjectiveSpec, logp: torch.Tensor, div: torch.Tensor, dtype=torch.float64):
    def cast(v):
        return None if v is None else v.to(dtype)

    return objective(logp, div if spec.pg_weight < 1 else None, old=cast(x["old"]), rollout_logprobs=cast(x["rollout"]),
                     advantages=cast(x["adv"]), w_sd=cast(x["w_sd"]), w_pg=cast(x["w_pg"]), spec=spec)


def _grads(loss: torch.Tensor, logp: torch.Tensor, div: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if not loss.requires_grad:  # (the reference of a token whose every branch is a constant)
        return torch.zeros_like(logp), torch.zeros_like(div)
    return torch.autograd.grad(loss, [logp, div], allow_unused=True, materialize_grads=True)


def _cases():
    for seed, n in itertools.product(SEEDS, SIZES):
        yield seed, n


# ---------------------------------------------------------------- 1. values and gradients
@pytest.mark.parametrize("pg_weight,off_policy,with_tis,dual_clip", GRID, ids=GRID_IDS)
def test_objective_matches_dense_float64(pg_weight, off_policy, with_tis, dual_clip):
    for seed, n in _cases():
        x = _inputs(seed, n, off_policy=off_policy, with_tis=with_tis)
        spec = _spec(seed, pg_weight, dual_clip)
        logp, div = _leaves(x)
        loss, _ = _ours(x, spec, logp, div)
        assert loss.dtype == torch.float64 and loss.shape == ()
        rlogp, rdiv = _leaves(x)
        ref, _ = _reference(x, spec, rlogp, rdiv)
        torch.testing.assert_close(loss, ref, **TOL, msg=lambda m: f"seed {seed}, n {n}: {m}")
        for ours, theirs, name in zip(_grads(loss, logp, div), _grads(ref, rlogp, rdiv), ("logp", "div")):
            torch.testing.assert_close(ours, theirs, **TOL, msg=lambda m: f"d/d{name}, seed {seed}, n {n}: {m}")


# ---------------------------------------------------------------- 2. statistics
@pytest.mark.parametrize("pg_weight,off_policy,with_tis,dual_clip", GRID, ids=GRID_IDS)
def test_objective_stats_match_dense_float64(pg_weight, off_policy, with_tis, dual_clip):
    for seed, n in _cases():
        x = _inputs(seed, n, off_policy=off_policy, with_tis=with_tis)
        spec = _spec(seed, pg_weight, dual_clip)
        _, stats = _ours(x, spec, *_leaves(x))
        _, ref = _reference(x, spec, *_leaves(x))
        assert set(stats) == set(ref)
        assert all(isinstance(v, float) for v in stats.values())
        for key, value in ref.items():
            assert math.isclose(stats[key], value, rel_tol=1e-10, abs_tol=1e-10), (key, seed, n, stats[key], value)


# ---------------------------------------------------------------- the trainer's arithmetic, bit for bit
def _micro_loss_copy(logp, div, old_logprobs, rollout_logprobs, adv, w_sd, w_pg, pg_weight, is_clip,
                     rollout_is_threshold, clip_low, clip_high, dual_clip):
    """The tensor part of Trainer._micro_loss (resd/trainer/trainer.py, before objective existed)."""
    off_policy = old_logprobs is not None
    if off_policy:
        old = old_logprobs
    else:
        old = logp.detach()
    tis = torch.ones_like(logp)
    if rollout_is_threshold is not None and rollout_logprobs is not None:
        rollout = rollout_logprobs
        tis = torch.exp((old - rollout).clamp(-20, 20)).clamp(max=rollout_is_threshold)
    loss = logp.new_zeros(())
    stats: dict[str, float] = {}
    if pg_weight < 1.0:
        weights = w_sd
        ratio = is_ratio(logp, old if off_policy else None, is_clip)
        distill = (weights * ratio * tis * div).sum()
        loss = loss + (1.0 - pg_weight) * distill
        on = weights > 0
        stats.update(distill=float(distill.detach()), div_sum=float(div.detach()[on].sum()), div_tokens=float(on.sum()),
                     ratio_sum=float(ratio[on].sum()))
    if pg_weight > 0.0:
        per_tok, clipped = ppo_clip_token_loss(logp, old, adv, clip_low, clip_high, dual_clip)
        pg = (w_pg * tis * per_tok).sum()
        loss = loss + pg_weight * pg
        stats.update(pg=float(pg.detach()), clipped=float(clipped.sum()))
    stats.update(tis_sum=float(tis.sum()), tokens=float(logp.numel()))
    return loss, stats


@pytest.mark.parametrize("pg_weight,off_policy,with_tis,dual_clip", GRID, ids=GRID_IDS)
def test_objective_equals_trainer_micro_loss_float32(pg_weight, off_policy, with_tis, dual_clip):
    for seed, n in _cases():
        x64 = _inputs(seed, n, off_policy=off_policy, with_tis=with_tis)
        x = {k: None if v is None else v.float() for k, v in x64.items()}
        spec = _spec(seed, pg_weight, dual_clip)
        logp, div = _leaves(x, torch.float32)
        loss, stats = _ours(x, spec, logp, div, torch.float32)
        tlogp, tdiv = _leaves(x, torch.float32)
        want, want_stats = _micro_loss_copy(tlogp, tdiv, x["old"], x["rollout"], x["adv"], x["w_sd"], x["w_pg"],
                                            **dataclasses.asdict(spec))
        assert loss.dtype == torch.float32
        assert torch.equal(loss, want), (seed, n, loss.item(), want.item())
        assert stats == want_stats
        for ours, theirs in zip(_grads(loss, logp, div), _grads(want, tlogp, tdiv)):
            assert torch.equal(ours, theirs), (seed, n)


# ---------------------------------------------------------------- 3. edge cases
@pytest.mark.parametrize("pg_weight", (0.0, 0.3, 1.0))
@pytest.mark.parametrize("off_policy", (False, True))
def test_all_weights_zero_gives_exact_zero_loss_and_gradient(pg_weight, off_policy):
    x = _inputs(3, 16, off_policy=off_policy, with_tis=True)
    x["w_sd"], x["w_pg"] = torch.zeros(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    spec = ObjectiveSpec(pg_weight=pg_weight, dual_clip=None)
    logp, div = _leaves(x)
    loss, stats = _ours(x, spec, logp, div)
    assert loss.item() == 0.0
    for g in _grads(loss, logp, div):
        assert torch.equal(g, torch.zeros_like(g))
    if pg_weight < 1:
        assert stats["distill"] == 0.0 and stats["div_tokens"] == 0.0 and stats["ratio_sum"] == 0.0
    if pg_weight > 0:
        assert stats["pg"] == 0.0


def test_empty_micro_batch():
    empty = torch.zeros(0, dtype=torch.float64)
    logp = empty.clone().requires_grad_(True)
    loss, stats = objective(logp, empty, old=None, rollout_logprobs=None, advantages=empty, w_sd=empty, w_pg=empty,
                            spec=ObjectiveSpec(pg_weight=0.5))
    assert loss.item() == 0.0 and stats["tokens"] == 0.0 and stats["tis_sum"] == 0.0
    (g,) = torch.autograd.grad(loss, [logp], allow_unused=True, materialize_grads=True)
    assert g.shape == (0,)


def test_pure_terms_leave_out_the_other_terms_keys_and_inputs():
    x = _inputs(0, 8, off_policy=True, with_tis=True)
    _, pg_only = objective(x["logp"], None, old=x["old"], rollout_logprobs=x["rollout"], advantages=x["adv"],
                           w_sd=None, w_pg=x["w_pg"], spec=ObjectiveSpec(pg_weight=1.0))
    assert set(pg_only) == {"pg", "clipped", "tis_sum", "tokens"}
    _, sd_only = objective(x["logp"], x["div"], old=x["old"], rollout_logprobs=x["rollout"], advantages=None,
                           w_sd=x["w_sd"], w_pg=None, spec=ObjectiveSpec(pg_weight=0.0))
    assert set(sd_only) == {"distill", "div_sum", "div_tokens", "ratio_sum", "tis_sum", "tokens"}


def test_on_policy_pg_gradient_is_minus_weighted_advantage():
    """On-policy the ratio is 1 with gradient 1, so d/dlogp = -pg_weight * w_pg * A (no clipping)."""
    x = _inputs(1, 8, off_policy=False, with_tis=False)
    logp = x["logp"].clone().requires_grad_(True)
    loss, stats = objective(logp, x["div"], old=None, rollout_logprobs=None, advantages=x["adv"], w_sd=x["w_sd"],
                            w_pg=x["w_pg"], spec=ObjectiveSpec(pg_weight=0.3))
    (g,) = torch.autograd.grad(loss, [logp])
    torch.testing.assert_close(g, -0.3 * x["w_pg"] * x["adv"], **TOL)
    assert stats["clipped"] == 0.0 and stats["ratio_sum"] == stats["div_tokens"]


@pytest.mark.parametrize("field,value", [
    ("pg_weight", -0.1), ("pg_weight", 1.5), ("pg_weight", float("nan")),
    ("is_clip", 0.0), ("is_clip", -1.0),
    ("rollout_is_threshold", 0.0), ("rollout_is_threshold", float("nan")),
    ("clip_low", -0.1), ("clip_high", -0.01),
    ("dual_clip", 1.0), ("dual_clip", 0.5),
])
def test_spec_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ObjectiveSpec(**{field: value})


def test_spec_is_frozen_with_config_defaults():
    from resd.config import LossConfig, TrainConfig

    spec = ObjectiveSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.pg_weight = 0.5  # type: ignore[misc]
    loss, train = LossConfig(), TrainConfig()
    assert spec == ObjectiveSpec(loss.pg_weight, loss.is_clip, train.rollout_is_threshold, loss.clip_low,
                                 loss.clip_high, loss.dual_clip)
    ObjectiveSpec(is_clip=None, rollout_is_threshold=None, dual_clip=None, pg_weight=1.0)  # every option off


def test_missing_or_misshapen_inputs_are_named():
    x = _inputs(0, 8, off_policy=True, with_tis=False)
    common = dict(old=x["old"], rollout_logprobs=None, advantages=x["adv"], w_sd=x["w_sd"], w_pg=x["w_pg"])
    with pytest.raises(ValueError, match="div"):
        objective(x["logp"], None, **common, spec=ObjectiveSpec(pg_weight=0.5))
    with pytest.raises(ValueError, match="advantages"):
        objective(x["logp"], x["div"], **{**common, "advantages": None}, spec=ObjectiveSpec(pg_weight=0.5))
    with pytest.raises(ValueError, match="w_sd"):
        objective(x["logp"], x["div"], **{**common, "w_sd": x["w_sd"][:, None]}, spec=ObjectiveSpec(pg_weight=0.5))
