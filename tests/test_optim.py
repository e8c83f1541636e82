"""The optimizer's memory modes (issue 22): exact and lean updates of bf16 weights, the EMA teacher,
checkpoints, and the persistent-bytes accounting."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from resd.teacher import UPDATES_KEY, Teacher
from resd.trainer.optim import (
    ChunkedAdamW,
    MasterWeightAdamW,
    SplitFloat32,
    chunk_elements,
    persistent_bytes,
    persistent_bytes_per_param,
)

CHUNK = chunk_elements(torch.device("cpu"))


class Net(torch.nn.Module):
    """Odd sizes (not multiples of a vector width) and one tensor of more than one chunk."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        shapes = {"a": (37, 29), "b": (29,), "big": (CHUNK // 500 + 7, 503), "c": (11, 13)}
        self.w = torch.nn.ParameterDict({n: torch.nn.Parameter((torch.randn(s, generator=gen) * 0.5).to(dtype))
                                         for n, s in shapes.items()})


def _grads(model: torch.nn.Module, step: int, scale: float = 1e-2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return [(torch.randn(p.shape, generator=gen) * scale).to(p.dtype) for p in model.parameters()]


class PreviousImplementation:
    """The optimizer and EMA before issue 22: float32 master copies, torch.optim.AdamW (its CPU
    default: the single-tensor loop), clip_grad_norm_, and a float32 shadow beside the bf16 teacher."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, rate: float) -> None:
        self.params = list(model.parameters())
        self.master = [p.detach().float().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.master, lr=lr, weight_decay=weight_decay, foreach=False)
        self.teacher = [p.detach().clone() for p in self.params]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.rate = rate

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], max_norm: float | None) -> float:
        for m, g in zip(self.master, grads, strict=True):
            m.grad = g.float()
        norm = torch.nn.utils.clip_grad_norm_(self.master, max_norm if max_norm is not None else float("inf"))
        self.opt.step()
        for p, m, t, s in zip(self.params, self.master, self.teacher, self.shadow, strict=True):
            p.copy_(m)
            s.mul_(1.0 - self.rate).add_(m, alpha=self.rate)
            t.copy_(s)
        return float(norm)


def _new(model: torch.nn.Module, memory: str, lr: float = 1e-3, weight_decay: float = 0.01, rate: float = 0.1,
         seed: int = 0, kind: str = "ema", fused: bool = True):
    teacher = Teacher(model, kind, rate, memory=memory, seed=seed)
    opt = MasterWeightAdamW(list(model.named_parameters()), lr=lr, weight_decay=weight_decay, memory=memory, seed=seed,
                            fused=fused)
    return opt, teacher


def _train(model, opt, teacher, steps: range, max_norm: float | None = None, scale: float = 1e-2) -> list[float]:
    norms = []
    for step in steps:
        for p, g in zip(model.parameters(), _grads(model, step, scale), strict=True):
            p.grad = g
        norms.append(opt.clip_and_check(max_norm))
        opt.step()
        teacher.update(opt.master_state())
        opt.zero_grad()
    return norms


def _ties(x: torch.Tensor) -> torch.Tensor:
    """Where float32 ``x`` lies exactly halfway between two bf16 values."""
    return (x.view(torch.int32) & 0xFFFF) == 0x8000


def _check_rounding(hi: torch.Tensor, full: torch.Tensor, previous_bf16: torch.Tensor) -> None:
    """bf16 weights equal the previous implementation's (round to nearest even) except at exact ties,
    where ours rounds away from zero."""
    differ = hi != previous_bf16
    assert not (differ & ~_ties(full)).any()
    away, even = hi[differ].float().abs(), previous_bf16[differ].float().abs()
    assert torch.equal(away - full[differ].abs(), full[differ].abs() - even)  # one half-step either side


def test_split_float32_is_lossless_and_rounds_to_nearest():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100_003, generator=gen) * 10.0 ** torch.randint(-30, 30, (100_003,), generator=gen),
                   torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40, 3.0e38, torch.finfo(torch.float32).tiny])])
    x[:5000] = (x[:5000].view(torch.int32) & ~0xFFFF | 0x8000).view(torch.float32)  # many exact ties
    split = SplitFloat32(torch.empty(x.shape, dtype=torch.bfloat16), torch.empty(x.shape, dtype=torch.int16))
    split.assign(x)
    assert torch.equal(split.float().view(torch.int32), x.view(torch.int32))  # bit for bit, -0.0 and subnormals too
    _check_rounding(split.hi, x, x.bfloat16())
    assert (split.hi != x.bfloat16()).any()  # ties to even vs away from zero differ on about half the ties


def test_exact_mode_unfused_matches_the_previous_implementation_bit_for_bit():
    """With ``fused=False`` float32 masters, moments and the teacher's float32 EMA equal the previous
    implementation's bit for bit (the same operations in the same order); bf16 weights too, except at
    exact ties."""
    model = Net()
    old = PreviousImplementation(copy.deepcopy(model), lr=1e-3, weight_decay=0.01, rate=0.1)
    opt, teacher = _new(model, "exact", fused=False)
    norms = _train(model, opt, teacher, range(6), max_norm=None)
    for step in range(6):
        old.step(_grads(model, step), None)
    teacher_params = dict(teacher.module.named_parameters())
    for i, (name, p) in enumerate(model.named_parameters()):
        master = opt.master_state()[name].float()
        assert torch.equal(master, old.master[i]), name
        _check_rounding(p.detach(), master, old.params[i].detach())
        st = opt.optimizer.state[p]
        ost = old.opt.state[old.master[i]]
        assert torch.equal(st["exp_avg"], ost["exp_avg"]) and torch.equal(st["exp_avg_sq"], ost["exp_avg_sq"])
        ema = SplitFloat32(teacher_params[name].detach(), teacher.residual[name]).float()
        assert torch.equal(ema, old.shadow[i]), name
        _check_rounding(teacher_params[name].detach(), ema, old.teacher[i])
        assert torch.equal(teacher.state_dict()[name], old.shadow[i])  # checkpoints hold the float32 EMA
    assert norms[0] > 0


def test_exact_mode_fused_matches_the_previous_implementation_to_float32_rounding():
    """The default (torch's fused AdamW kernel) rounds a few elements differently from the single-tensor
    loop: after 6 steps masters and the teacher's EMA are within a few float32 rounding steps (1e-6
    relative) of the previous implementation's (here with clipping active, whose norm is also summed
    differently)."""
    model = Net()
    old = PreviousImplementation(copy.deepcopy(model), lr=1e-3, weight_decay=0.01, rate=0.1)
    opt, teacher = _new(model, "exact")
    _train(model, opt, teacher, range(6), max_norm=1.0)
    for step in range(6):
        old.step(_grads(model, step), 1.0)
    teacher_params = dict(teacher.module.named_parameters())
    for i, (name, _) in enumerate(model.named_parameters()):
        torch.testing.assert_close(opt.master_state()[name].float(), old.master[i], rtol=1e-6, atol=1e-7)
        ema = SplitFloat32(teacher_params[name].detach(), teacher.residual[name]).float()
        torch.testing.assert_close(ema, old.shadow[i], rtol=1e-6, atol=1e-7)


def test_exact_mode_unfused_with_float32_weights_is_the_previous_implementation_with_clipping():
    model = Net(torch.float32)
    old = PreviousImplementation(copy.deepcopy(model), lr=1e-3, weight_decay=0.01, rate=0.1)
    opt, teacher = _new(model, "exact", fused=False)
    norms = _train(model, opt, teacher, range(5), max_norm=0.5)  # clipping active
    old_norms = [old.step(_grads(model, step), 0.5) for step in range(5)]
    assert norms == old_norms
    for i, (name, p) in enumerate(model.named_parameters()):
        assert torch.equal(p.detach(), old.params[i].detach()), name
        assert torch.equal(dict(teacher.module.named_parameters())[name].detach(), old.shadow[i]), name


def test_exact_mode_clipping_bf16_gradients_uses_an_accurate_norm():
    """bf16 gradients are not copied to float32 for the norm: it is summed chunk by chunk in float64,
    which is more accurate than torch's float32 norm (the previous implementation), so with active
    clipping the factor, and the weights, differ from the previous ones in the last bits only."""
    model = Net()
    old = PreviousImplementation(copy.deepcopy(model), lr=1e-3, weight_decay=0.01, rate=0.1)
    opt, teacher = _new(model, "exact", fused=False)
    norms = _train(model, opt, teacher, range(4), max_norm=0.5)
    old_norms = [old.step(_grads(model, step), 0.5) for step in range(4)]
    grads = [g.double() for g in _grads(model, 0)]
    exact = float(torch.sqrt(sum((g * g).sum() for g in grads)))
    assert abs(norms[0] - exact) <= 1e-6 * exact
    assert norms == pytest.approx(old_norms, rel=1e-4)
    for i, (name, _) in enumerate(model.named_parameters()):
        torch.testing.assert_close(opt.master_state()[name].float(), old.master[i], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("memory", ["exact", "lean"])
def test_small_updates_are_not_lost(memory):
    """Updates of 1e-4 relative size for 100 steps: plain bf16 AdamW and EMA lose them (1 - 1e-4 rounds
    back to 1), both modes follow a float64 reference (exact: to float32 precision; lean: on average
    over many weights, by stochastic rounding)."""
    n, steps, lr = 20_000, 100, 1e-4
    start = torch.ones(n) + torch.rand(n, generator=torch.Generator().manual_seed(0)) * 0.5  # in [1, 1.5]
    start = start.bfloat16()

    def adamw(p: torch.Tensor, opt_factory):
        param = torch.nn.Parameter(p.clone())
        opt = opt_factory(param)
        for _ in range(steps):
            param.grad = torch.ones_like(param)  # a constant gradient: Adam moves every weight by lr a step
            if isinstance(opt, MasterWeightAdamW):
                opt.clip_and_check(None)
            opt.step()
            opt.zero_grad()
        return opt, param

    _, ref = adamw(start.double(), lambda q: torch.optim.AdamW([q], lr=lr, weight_decay=0.0))
    _, plain = adamw(start, lambda q: torch.optim.AdamW([q], lr=lr, weight_decay=0.0))
    opt, ours = adamw(start, lambda q: MasterWeightAdamW([("w", q)], lr=lr, weight_decay=0.0, memory=memory, seed=3))
    moved = (start.double() - ref.detach())
    assert float(moved.mean()) == pytest.approx(steps * lr, rel=1e-3)  # about 1e-4 relative a step
    assert torch.equal(plain.detach(), start)  # plain bf16 loses every update
    if memory == "exact":
        # float32 rounding over 100 steps stays far below one step's update (1e-4)
        torch.testing.assert_close(opt.master_state()["w"].float().double(), ref.detach(), rtol=0, atol=1e-5)
        assert (ours.detach().double() - ref.detach()).abs().max() <= 2.0**-8 + 1e-5  # the master rounded to nearest
    else:
        ours_moved = start.double() - ours.detach().double()
        assert float(ours_moved.mean()) == pytest.approx(float(moved.mean()), rel=0.03)

    # the EMA: teacher <- (1 - tau) teacher + tau student moves the teacher by 1e-4 relative a step
    student = torch.nn.Module()
    student.w = torch.nn.Parameter(start.clone(), requires_grad=False)
    target = (start.double() + 0.02).bfloat16()
    tau = 0.005
    teacher = Teacher(student, "ema", tau, memory=memory, seed=3)
    plain_teacher = start.clone()
    reference = start.double()
    for _ in range(steps):
        teacher.update({"w": target})
        plain_teacher.copy_(plain_teacher.float().lerp(target.float(), tau))  # float32 math, one bf16 rounding
        reference = reference * (1 - tau) + target.double() * tau
    assert torch.equal(plain_teacher, start)
    got = teacher.module.w.detach()
    if memory == "exact":
        ema = SplitFloat32(got, teacher.residual["w"]).float().double()
        torch.testing.assert_close(ema, reference, rtol=0, atol=1e-5)
    else:
        assert float((got.double() - start.double()).mean()) == pytest.approx(
            float((reference - start.double()).mean()), rel=0.03)


def test_lean_rounding_is_seeded():
    runs = []
    for seed in (5, 5, 6):
        model = Net(seed=0)
        opt, teacher = _new(model, "lean", seed=seed)
        _train(model, opt, teacher, range(3))
        weights = [*model.parameters(), *teacher.module.parameters()]
        runs.append(torch.cat([p.detach().float().view(-1) for p in weights]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def _round_trip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("memory", ["exact", "lean"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_checkpoints_resume_exactly(memory, dtype):
    """state_dict / load_state_dict into fresh objects (what a resumed run builds), then the same next
    steps give the same weights, teacher and optimizer state bit for bit."""
    model = Net(dtype)
    opt, teacher = _new(model, memory, seed=11)
    _train(model, opt, teacher, range(3))
    saved = (_round_trip({n: p.detach().clone() for n, p in model.named_parameters()}), _round_trip(opt.state_dict()),
             _round_trip(teacher.state_dict()))
    if memory == "lean" and dtype == torch.bfloat16:
        assert int(saved[2][UPDATES_KEY][0]) == 3
    _train(model, opt, teacher, range(3, 6))

    resumed = Net(dtype, seed=99)
    opt2, teacher2 = _new(resumed, memory, seed=11)
    with torch.no_grad():
        for n, p in resumed.named_parameters():
            p.copy_(saved[0][n])
    teacher2.load_state_dict(saved[2])
    opt2.load_state_dict(saved[1])
    _train(resumed, opt2, teacher2, range(3, 6))
    for (n, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    for (n, a), (_, b) in zip(teacher.state_dict().items(), teacher2.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    for a, b in zip(opt.optimizer.state.values(), opt2.optimizer.state.values(), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_the_previous_implementation_loads_into_exact_mode():
    model = Net()
    old = PreviousImplementation(copy.deepcopy(model), lr=1e-3, weight_decay=0.01, rate=0.1)
    for step in range(2):
        old.step(_grads(model, step), None)
    names = [n for n, _ in model.named_parameters()]
    state = {"optimizer": old.opt.state_dict(), "master": dict(zip(names, old.master, strict=True))}
    opt, teacher = _new(model, "exact", fused=False)
    with torch.no_grad():
        for p, q in zip(model.parameters(), old.params, strict=True):
            p.copy_(q)
    opt.load_state_dict(_round_trip(state))
    teacher.load_state_dict(dict(zip(names, old.shadow, strict=True)))
    _train(model, opt, teacher, range(2, 4))
    for step in range(2, 4):
        old.step(_grads(model, step), None)
    for i, name in enumerate(names):
        assert torch.equal(opt.master_state()[name].float(), old.master[i]), name


def test_gradients_of_several_backwards_are_summed_in_float32():
    model = Net()
    opt = MasterWeightAdamW(list(model.named_parameters()), lr=1e-3)
    x = torch.randn(5, 37, dtype=torch.bfloat16)
    grads = []
    for k in range(3):  # three micro-batches
        loss = ((x * (k + 1)) @ model.w["a"]).float().pow(2).sum()
        loss.backward()
        assert model.w["a"].grad is None  # taken out of p.grad by the hook after each backward
        grads.append(torch.autograd.grad(((x * (k + 1)) @ model.w["a"]).float().pow(2).sum(), model.w["a"])[0])
    held = opt.optimizer.grad(0)  # parameters in order: a, b, big, c
    assert held.dtype == torch.float32
    assert torch.equal(held, grads[0].float() + grads[1].float() + grads[2].float())
    assert opt.optimizer.grad(1) is None  # "b" got no gradient
    opt.fill_zero_grads()
    assert torch.equal(opt.optimizer.grad(1), torch.zeros(29, dtype=torch.bfloat16))
    opt.zero_grad()
    assert all(opt.optimizer.grad(i) is None for i in range(4))


@pytest.mark.parametrize(("dtype", "memory", "kind", "expected"), [
    (torch.bfloat16, "exact", "ema", {"weights": 2, "masters": 2, "moments": 8, "teacher": 4, "total": 16}),
    (torch.bfloat16, "exact", "frozen", {"weights": 2, "masters": 2, "moments": 8, "teacher": 2, "total": 14}),
    (torch.bfloat16, "lean", "ema", {"weights": 2, "masters": 0, "moments": 4, "teacher": 2, "total": 8}),
    (torch.float32, "exact", "ema", {"weights": 4, "masters": 0, "moments": 8, "teacher": 4, "total": 16}),
    (torch.float32, "lean", "ema", {"weights": 4, "masters": 0, "moments": 4, "teacher": 4, "total": 12}),
    # the fallback for dtypes the chunked path does not take: float32 copies of weights and teacher
    (torch.float16, "exact", "ema", {"weights": 2, "masters": 4, "moments": 8, "teacher": 6, "total": 20}),
])
def test_persistent_bytes_per_param_measures_the_tensors(dtype, memory, kind, expected):
    model = Net(dtype)
    opt, teacher = _new(model, memory, kind=kind)
    _train(model, opt, teacher, range(1))
    per_param = persistent_bytes_per_param(model, opt, teacher)
    steps = 4 * len(list(model.parameters())) / sum(p.numel() for p in model.parameters())
    for key, value in expected.items():
        assert per_param[key] == pytest.approx(value + (steps if key == "total" else 0), abs=1e-12), key
    assert per_param["gradients"] == 0 and per_param["other"] == pytest.approx(steps)  # step counters
    # measured, not computed: gradients alive and tied (shared) tensors are seen as they are
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    alive = persistent_bytes(model, opt, teacher)
    assert alive["gradients"] == sum(p.grad.untyped_storage().nbytes() for p in model.parameters())
    model.w["c"] = model.w["a"]  # a tied parameter is one storage
    assert persistent_bytes(model)["weights"] == sum(p.untyped_storage().nbytes() for p in model.parameters())


def test_float32_parameters_need_no_hook_and_other_tensors_fall_back():
    model = Net(torch.float32)
    opt = MasterWeightAdamW(list(model.named_parameters()), lr=1e-3)
    assert opt.fast and not opt.optimizer._hooks
    with pytest.raises(ValueError, match="contiguous float32/bfloat16"):
        ChunkedAdamW([torch.nn.Parameter(torch.ones(3, 4).t())])
    fallback = MasterWeightAdamW([("w", torch.nn.Parameter(torch.ones(3, 4).t()))], lr=1e-3)
    assert not fallback.fast


@pytest.mark.parametrize("memory", ["exact", "lean"])
def test_bf16_training_resumes_exactly_in_each_mode(tiny_config, tmp_path, memory):
    """Through the trainer and its checkpoint files: a bf16 run stopped after 1 step and resumed ends
    with the weights, teacher and optimizer state of an uninterrupted 2-step run."""
    from resd.trainer.trainer import Trainer

    common = ("model.precision=bf16", f"train.memory={memory}", "train.batch_size=2", "logging.save_every=1",
              "train.warmup_steps=2", "train.rollout_is_threshold=null")
    straight = Trainer(tiny_config("train.steps=2", f"logging.run_dir={tmp_path / 'a'}", *common))
    assert next(straight.model.parameters()).dtype == torch.bfloat16
    start = {n: p.detach().clone() for n, p in straight.model.named_parameters()}
    straight.train()
    first = Trainer(tiny_config("train.steps=1", f"logging.run_dir={tmp_path / 'b'}", *common))
    first.train()
    resumed = Trainer(tiny_config("train.steps=2", f"logging.run_dir={tmp_path / 'b'}", *common))
    assert resumed.resume() and resumed.step == 1
    resumed.train()
    assert any(not torch.equal(start[n], p) for n, p in straight.model.named_parameters())
    for (n, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    a_teacher, b_teacher = straight.teacher.state_dict(), resumed.teacher.state_dict()
    assert a_teacher.keys() == b_teacher.keys() and (UPDATES_KEY in a_teacher) == (memory == "lean")
    assert all(torch.equal(a_teacher[n], b_teacher[n]) for n in a_teacher)
    a_opt = straight.learner.optimizer.optimizer.state
    b_opt = resumed.learner.optimizer.optimizer.state
    for a, b in zip(a_opt.values(), b_opt.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert int(next(iter(b_opt.values()))["step"]) == 2
    expected = {"exact": 16, "lean": 8}[memory]
    per_param = persistent_bytes_per_param(resumed.model, resumed.learner.optimizer, resumed.teacher)
    assert per_param["total"] == pytest.approx(expected, abs=0.01)
