"""AdamW for low-precision weights, gradient clipping, and the warm-up learning-rate schedule.

In ``bf16`` precision the model holds bfloat16 weights (fast on CPUs with AVX-512 BF16 and on
GPUs). With learning rates around 1e-6 a plain bfloat16 update would round to nothing, so the
optimizer keeps more than the bf16 weights. How much is the memory mode (config ``train.memory``):

- ``exact`` (default): each weight has a float32 master value, updated by AdamW in float32, so no
  update is ever lost to rounding. The master is not a second copy: it is stored as two 16-bit
  halves, the model's own bfloat16 weight ``hi`` (the master rounded to nearest, ties away from
  zero) and an int16 remainder ``lo`` (:class:`SplitFloat32`), which give the float32 value back
  bit for bit. Adam's moments are float32. The EMA teacher keeps its float32 EMA the same way (its
  bf16 weights + an int16 remainder, see :mod:`resd.teacher`). Persistent bytes per parameter:
  weights 2 + remainder 2 + moments 8 + teacher 2 + 2 = 16.
  The update is torch's fused AdamW kernel (``torch._fused_adamw_``, as in
  ``torch.optim.AdamW(fused=True)``), which rounds a few elements per step (a few in 1e4)
  differently from the single-tensor loop of ``torch.optim.AdamW`` that the previous
  implementation ran (after 6 steps within 1e-6 relative); with ``fused=False`` the loop's
  operations run in its order and the masters match it bit for bit.
- ``lean``: bfloat16 weights, bfloat16 Adam moments and a bfloat16 EMA teacher, all written with
  stochastic rounding (unbiased: a small update moves the weight by one bf16 step with the
  matching probability instead of being lost). The rounding noise is drawn from the run's seed
  and the step (:class:`_Noise`), so a resumed run draws the same noise. 2 + 4 + 2 = 8 bytes.

Float32 parameters (``model.precision: fp32``) need no master: both modes update them in place;
``lean`` still keeps bf16 moments.

Gradients: a bf16 parameter's gradient is taken out of ``p.grad`` after each backward (a
post-accumulate-grad hook). With one backward per step it stays the bf16 tensor autograd made (its
float32 value is exact); from the second backward of a step on they are summed in float32, never in
bfloat16. Gradients are freed by :meth:`MasterWeightAdamW.zero_grad` and do not persist between steps.

Speed: the update walks each tensor in chunks of :func:`chunk_elements` elements, running all of
AdamW (and the master's join and split) on a chunk while it is in the CPU cache, with a few
chunk-sized work buffers and no full-size temporaries (``benchmarks/optimizer_step.py`` compares it
with the previous implementation).

Fallback: tensors the chunked path does not handle (the DTensor shards of FSDP2, non-contiguous
tensors, dtypes other than float32/bfloat16) use the previous implementation: float32 master
copies of low-precision tensors and ``torch.optim.AdamW`` (foreach), whatever the memory mode.

:func:`persistent_bytes_per_param` measures what persists between steps on the real tensors.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import sys
import weakref
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)

MEMORY_MODES = ("exact", "lean")
_I16, _I32, _F32, _BF16 = torch.int16, torch.int32, torch.float32, torch.bfloat16


def chunk_elements(device: torch.device) -> int:
    """Elements per chunk: on CPUs the chunk's float32 work buffers stay in the L2/L3 cache (2**19:
    2 MB each; 2**18 to 2**20 timed alike on the 2-core development CPU, fewer chunks mean fewer
    parallel regions and less Python overhead); GPUs take big chunks (fewer kernel launches)."""
    return 1 << 19 if device.type == "cpu" else 1 << 24


def is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def fast_path_supports(t: torch.Tensor) -> bool:
    """Whether the chunked update handles ``t`` (else the float32-copy fallback is used)."""
    return (not is_dtensor(t) and t.dtype in (_F32, _BF16) and t.is_contiguous() and not t.is_complex()
            and sys.byteorder == "little")


# ---------------------------------------------------------------------------- bit-level helpers
def _join(hi: torch.Tensor, lo: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """``out`` (float32) <- the float32 whose bits are ``(hi bits << 16) + lo``."""
    out.copy_(hi)  # bfloat16 -> float32 is exact: the bf16 bits become the high half
    tmp.copy_(lo)
    out.view(_I32).add_(tmp)
    return out


def _split(x: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, tmp: torch.Tensor) -> None:
    """``x`` (float32) -> ``hi`` (bf16, x rounded to nearest, ties away from zero) and ``lo`` (int16).

    With L the low 16 bits of x: L < 0x8000 rounds down and lo = L; otherwise hi is one bf16 step
    up in magnitude and lo = L - 0x10000. Either way lo is L read as a signed int16.
    """
    bits = x.view(_I32)
    lo.copy_(bits)  # int32 -> int16 keeps the low 16 bits
    torch.add(bits, 0x8000, out=tmp)
    tmp.bitwise_right_shift_(16)
    hi.view(_I16).copy_(tmp)


def _round_stochastic(x: torch.Tensor, out: torch.Tensor, noise: torch.Tensor) -> None:
    """``out`` (bf16) <- ``x`` (float32, clobbered) rounded up in magnitude with probability equal to
    the dropped fraction: add uniform 16-bit noise to the low half of the bits, then truncate."""
    bits = x.view(_I32)
    bits.add_(noise)
    bits.bitwise_right_shift_(16)
    out.view(_I16).copy_(bits)


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


class _Noise:
    """Reproducible uniform noise in [0, 2**16) for stochastic rounding.

    A table of 2 x chunk integers is drawn once per (seed, counter, tag) from a seeded
    ``torch.Generator``; every chunk of every tensor reads it at its own random offset and xors a
    random 16-bit key (both from ``random.Random`` seeded by (seed, counter, tag, tensor index)), so
    the same run position always draws the same noise.
    """

    def __init__(self, seed: int, counter: int, tag: str, chunk: int, device: torch.device) -> None:
        self.seed, self.counter, self.tag, self.chunk = seed, counter, tag, chunk
        gen = torch.Generator(device=device)
        gen.manual_seed(_seed(seed, counter, tag))
        self.table = torch.randint(0, 1 << 16, (2 * chunk,), generator=gen, dtype=_I32, device=device)

    def stream(self, index: int) -> random.Random:
        return random.Random(_seed(self.seed, self.counter, self.tag, index))

    def fill(self, rng: random.Random, out: torch.Tensor) -> torch.Tensor:
        offset = rng.randrange(self.chunk)
        torch.bitwise_xor(self.table[offset : offset + out.numel()], rng.randrange(1 << 16), out=out)
        return out


class _Work:
    """Chunk-sized work buffers, made for one update (all tensors of a device) and dropped after it:
    not persistent state. ``size`` is the chunk length."""

    def __init__(self, tensors: Iterable[torch.Tensor], device: torch.device) -> None:
        self.size = min(chunk_elements(device), max((t.numel() for t in tensors), default=1))
        self.device, self.buffers = device, {}

    def get(self, name: str, dtype: torch.dtype, k: int) -> torch.Tensor:
        buf = self.buffers.get((name, dtype))
        if buf is None:
            buf = self.buffers[(name, dtype)] = torch.empty(self.size, dtype=dtype, device=self.device)
        return buf[:k]


def _works(tensors: Iterable[torch.Tensor]) -> dict[torch.device, _Work]:
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    return {d: _Work(ts, d) for d, ts in by_device.items()}


class SplitFloat32:
    """A float32 tensor stored as two 16-bit halves without loss.

    ``hi`` is the value rounded to bfloat16 (to nearest, ties away from zero; it is the model's
    weight), ``lo`` the int16 difference of the bit patterns. ``hi`` differs from
    ``value.to(torch.bfloat16)`` (ties to even) only where the low 16 bits are exactly 0x8000.
    """

    dtype = _F32

    def __init__(self, hi: torch.Tensor, lo: torch.Tensor) -> None:
        self.hi, self.lo = hi, lo

    @property
    def shape(self) -> torch.Size:
        return self.hi.shape

    @property
    def device(self) -> torch.device:
        return self.hi.device

    def numel(self) -> int:
        return self.hi.numel()

    @torch.no_grad()
    def float(self) -> torch.Tensor:
        """The float32 value (a new full-size tensor: for checkpoints and tests, not the hot path)."""
        return _join(self.hi, self.lo, torch.empty(self.shape, dtype=_F32, device=self.device),
                     torch.empty(self.shape, dtype=_I32, device=self.device))

    @torch.no_grad()
    def assign(self, value: torch.Tensor) -> None:
        """Store the float32 ``value`` (e.g. from a checkpoint) in ``hi`` and ``lo``."""
        value = value.detach().to(self.device, _F32).reshape(self.shape).contiguous()
        _split(value, self.hi, self.lo, torch.empty(self.shape, dtype=_I32, device=self.device))


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(-1)


def _load(src: torch.Tensor | SplitFloat32, s: int, e: int, work: _Work, name: str) -> torch.Tensor:
    """Elements [s, e) of ``src`` as float32 on the work device (a view when ``src`` already is one)."""
    k = e - s
    if isinstance(src, SplitFloat32):
        hi, lo = _flat(src.hi)[s:e], src.lo.view(-1)[s:e]
        if src.device != work.device:  # (an offloaded teacher: chunk-sized transfers)
            hi, lo = hi.to(work.device), lo.to(work.device)
        return _join(hi, lo, work.get(name, _F32, k), work.get("tmp", _I32, k))
    chunk = _flat(src)[s:e]
    if chunk.dtype == _F32 and chunk.device == work.device:
        return chunk
    return work.get(name, _F32, k).copy_(chunk)


# ---------------------------------------------------------------------------- the EMA
@torch.no_grad()
def ema_update_(target: torch.Tensor, source: torch.Tensor | SplitFloat32, rate: float, *,
                remainder: torch.Tensor | None = None, noise: _Noise | None = None, index: int = 0,
                work: _Work | None = None) -> None:
    """``target <- (1 - rate) target + rate source``, chunk by chunk, with the operations of
    ``target.mul_(1 - rate).add_(source, alpha=rate)`` on float32 values.

    ``remainder``: ``target`` (bf16) is the ``hi`` half of a :class:`SplitFloat32` whose ``lo`` this
    is (exact EMA). ``noise``: a bf16 ``target`` without remainder is written by stochastic
    rounding. Float32 targets are updated in place.
    """
    n = target.numel()
    work = work or _Work([target], target.device)
    flat = _flat(target)
    lo = remainder.view(-1) if remainder is not None else None
    rng = noise.stream(index) if noise is not None and lo is None and target.dtype != _F32 else None
    for s in range(0, n, work.size):
        e = min(n, s + work.size)
        k = e - s
        if lo is not None:
            t = _join(flat[s:e], lo[s:e], work.get("t", _F32, k), work.get("tmp", _I32, k))
        else:
            t = _load(target, s, e, work, "t")
        t.mul_(1.0 - rate).add_(_load(source, s, e, work, "s"), alpha=rate)
        if lo is not None:
            _split(t, flat[s:e], lo[s:e], work.get("tmp", _I32, k))
        elif t.data_ptr() != flat[s:e].data_ptr():
            if rng is not None:
                _round_stochastic(t, flat[s:e], noise.fill(rng, work.get("noise", _I32, k)))
            else:
                flat[s:e].copy_(t)


# ---------------------------------------------------------------------------- AdamW
def _grad_hook(ref: weakref.ref, index: int, param: torch.Tensor) -> None:
    opt = ref()
    if opt is not None:
        opt._take_grad(index)


class ChunkedAdamW(torch.optim.Optimizer):
    """AdamW on contiguous float32/bfloat16 tensors, chunk by chunk (see the module docstring).

    ``memory="exact"``: AdamW on float32 values, by ``torch._fused_adamw_`` (``fused=True``) or by
    the operations of ``torch.optim.AdamW``'s single-tensor loop in its order (``fused=False``: bit
    for bit ``torch.optim.AdamW(foreach=False)`` on float32 copies); a bf16 parameter's float32
    master is the parameter plus the int16 ``master_lo`` in its state. ``memory="lean"``:
    ``torch._fused_adamw_`` on float32 copies of each chunk, written back to bf16 weights and bf16
    moments with seeded stochastic rounding.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, *, memory: str = "exact", seed: int = 0,
                 fused: bool = True) -> None:
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        super().__init__(list(params), dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        # lean mode's rounding makes bitwise agreement moot: always the faster fused kernel
        self.memory, self.seed = memory, seed
        self.fused = (fused or memory == "lean") and hasattr(torch, "_fused_adamw_")
        self._params = [p for g in self.param_groups for p in g["params"]]
        for p in self._params:
            if not fast_path_supports(p):
                raise ValueError(f"ChunkedAdamW needs contiguous float32/bfloat16 tensors, got {p.dtype} "
                                 f"{type(p).__name__}; use MasterWeightAdamW, which falls back")
        self._index = {id(p): i for i, p in enumerate(self._params)}
        self._grads: list[torch.Tensor | None] = [None] * len(self._params)
        self._clip: torch.Tensor | None = None
        moment = _F32 if memory == "exact" else _BF16
        for p in self._params:
            st = self.state[p]
            st["step"] = torch.tensor(0.0, dtype=_F32, device=p.device if self.fused else "cpu")  # (as torch's)
            st["exp_avg"] = torch.zeros_like(p, dtype=moment, memory_format=torch.contiguous_format)
            st["exp_avg_sq"] = torch.zeros_like(p, dtype=moment, memory_format=torch.contiguous_format)
            if memory == "exact" and p.dtype == _BF16:
                st["master_lo"] = torch.zeros_like(p, dtype=_I16, memory_format=torch.contiguous_format)
        ref = weakref.ref(self)
        self._hooks = [p.register_post_accumulate_grad_hook(_bound_hook(ref, i))
                       for i, p in enumerate(self._params) if p.dtype != _F32 and p.requires_grad]
        weakref.finalize(self, _remove_hooks, list(self._hooks))

    # ------------------------------------------------------------ gradients
    def _take_grad(self, i: int) -> None:
        """Move a low-precision ``p.grad`` out of the parameter; a second one is summed in float32."""
        p = self._params[i]
        g, p.grad = p.grad, None
        if g is None:
            return
        held = self._grads[i]
        if held is None:
            self._grads[i] = g
        else:
            if held.dtype != _F32:
                held = held.float()
            self._grads[i] = held.add_(g)

    def _collect(self) -> None:
        for i, p in enumerate(self._params):
            if p.dtype != _F32 and p.grad is not None:  # set by hand, or no hook (e.g. requires_grad off)
                self._take_grad(i)

    def grad(self, i: int) -> torch.Tensor | None:
        p = self._params[i]
        return p.grad if p.dtype == _F32 else self._grads[i]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            p.grad = None
        self._grads = [None] * len(self._params)
        self._clip = None

    def fill_zero_grads(self) -> None:
        self._collect()
        for i, p in enumerate(self._params):
            if self.grad(i) is None:
                if p.dtype == _F32:
                    p.grad = torch.zeros_like(p)
                else:
                    self._grads[i] = torch.zeros_like(p)

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float | None) -> torch.Tensor | None:
        """The total gradient norm (float32; None without gradients) and, where it exceeds
        ``max_norm``, the clip factor the next :meth:`step` multiplies the gradients by.

        Float32 gradients: ``torch.nn.utils.get_total_norm`` and the factor of ``clip_grad_norm_``.
        bf16 gradients are read chunk by chunk into float32 (no full-size copy).
        """
        self._collect()
        grads = [g for g in (self.grad(i) for i in range(len(self._params))) if g is not None]
        self._clip = None
        if not grads:
            return None
        wide = [g for g in grads if g.dtype == _F32]
        narrow = [g for g in grads if g.dtype != _F32]
        if not narrow:
            norm = torch.nn.utils.get_total_norm(wide, 2.0)
        else:
            squares = [torch.nn.utils.get_total_norm(wide, 2.0).double() ** 2] if wide else []
            works = _works(narrow)
            for g in narrow:
                work = works[g.device]
                flat = _flat(g)
                for s in range(0, g.numel(), work.size):
                    c = work.get("g", _F32, min(g.numel(), s + work.size) - s).copy_(flat[s : s + work.size])
                    squares.append(c.square_().sum().double())  # (torch.sum adds pairwise: accurate)
            norm = torch.stack(squares).sum().sqrt().float()
        if max_norm is not None:
            coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            if bool(coef < 1.0) or not bool(torch.isfinite(coef)):
                self._clip = coef
        return norm

    # ------------------------------------------------------------ the update
    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("ChunkedAdamW.step takes no closure")
        self._collect()
        noises: dict[tuple[int, torch.device], _Noise] = {}
        works = _works(self._params)
        for group in self.param_groups:
            for p in group["params"]:
                i = self._index[id(p)]
                g = self.grad(i)
                if g is None:
                    continue
                st = self.state[p]
                st["step"] += 1
                step = int(st["step"].item())
                noise = None
                if self.memory == "lean":
                    noise = noises.get((step, p.device))
                    if noise is None:
                        noise = noises[(step, p.device)] = _Noise(self.seed, step, "adamw", chunk_elements(p.device),
                                                                  p.device)
                self._update(p, g, st, group, step, works[p.device], noise, i)
        self._clip = None

    def _update(self, p: torch.Tensor, g: torch.Tensor, st: dict, group: dict, step: int, work: _Work,
                noise: _Noise | None, index: int) -> None:
        """One parameter, chunk by chunk: float32 views or copies of the weights (joined with
        ``master_lo`` when there is one), gradient and moments; AdamW; then the copies written back
        (split into weight and remainder, or stochastically rounded in ``lean`` mode)."""
        lr, (beta1, beta2), wd, eps = group["lr"], group["betas"], group["weight_decay"], group["eps"]
        # the scalars of torch.optim.adam._single_tensor_adam
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        n = p.numel()
        weights, grads = _flat(p), _flat(g)
        m, v = st["exp_avg"].view(-1), st["exp_avg_sq"].view(-1)
        lo = st["master_lo"].view(-1) if "master_lo" in st else None
        rng = noise.stream(index) if noise is not None else None
        for s in range(0, n, work.size):
            e = min(n, s + work.size)
            k = e - s
            if lo is not None:
                x = _join(weights[s:e], lo[s:e], work.get("x", _F32, k), work.get("tmp", _I32, k))
            else:
                x = _load(weights, s, e, work, "x")
            gc = _load(grads, s, e, work, "g")
            if self._clip is not None:
                gc.mul_(self._clip)
            mc, vc = _load(m, s, e, work, "m"), _load(v, s, e, work, "v")
            if self.fused:
                torch._fused_adamw_([x], [gc], [mc], [vc], [], [st["step"]], lr=lr, beta1=beta1, beta2=beta2,
                                    weight_decay=wd, eps=eps, amsgrad=False, maximize=False)
            else:  # the element-wise operations of torch.optim.adam._single_tensor_adam (AdamW), in its order
                if wd != 0:
                    x.mul_(1 - lr * wd)
                mc.lerp_(gc, 1 - beta1)
                vc.mul_(beta2).addcmul_(gc, gc, value=1 - beta2)
                denom = torch.sqrt(vc, out=work.get("d", _F32, k))
                denom.div_(bias_correction2_sqrt).add_(eps)
                x.addcdiv_(mc, denom, value=-step_size)
            if lo is not None:
                _split(x, weights[s:e], lo[s:e], work.get("tmp", _I32, k))
            for value, out in (((x, weights[s:e]),) if lo is None else ()) + ((mc, m[s:e]), (vc, v[s:e])):
                if value.data_ptr() == out.data_ptr():  # float32 tensors were updated in place
                    continue
                if rng is not None:
                    _round_stochastic(value, out, noise.fill(rng, work.get("noise", _I32, k)))
                else:
                    out.copy_(value)

    # ------------------------------------------------------------ masters and checkpoints
    def master(self, i: int) -> torch.Tensor | SplitFloat32:
        p = self._params[i]
        st = self.state[p]
        return SplitFloat32(p.detach(), st["master_lo"]) if "master_lo" in st else p.detach()

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of this class or of ``torch.optim.AdamW`` (same layout), copying into the
        existing state tensors (moments keep this mode's dtype; a missing ``master_lo`` is zero)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("the optimizer state has a different number of parameter groups")
        saved_state = state_dict["state"]
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("the optimizer state has a different number of parameters")
            group.update({k: v for k, v in saved.items() if k != "params"})
            group["betas"] = tuple(group["betas"])
            for key, p in zip(saved["params"], group["params"], strict=True):
                st, old = self.state[p], saved_state.get(key, {})
                for name, value in st.items():
                    if name in old:
                        value.copy_(old[name])
                    else:
                        value.zero_()


def _bound_hook(ref: weakref.ref, index: int):
    return lambda param: _grad_hook(ref, index, param)


def _remove_hooks(handles: list) -> None:
    for h in handles:
        h.remove()


class MasterWeightAdamW:
    """AdamW for (possibly lower-precision) model parameters in a memory mode; see the module docstring.

    The interface the learner uses: :meth:`zero_grad`, :meth:`fill_zero_grads`,
    :meth:`clip_and_check`, :meth:`step`, :meth:`master_state` (the source of the EMA teacher) and
    :meth:`state_dict` / :meth:`load_state_dict`. ``optimizer`` is the ``torch.optim.Optimizer``
    whose param groups the learning-rate scheduler drives.
    """

    def __init__(
        self,
        named_params: list[tuple[str, torch.nn.Parameter]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.01,
        eps: float = 1e-8,
        *,
        memory: str = "exact",
        seed: int = 0,
        fused: bool = True,
    ) -> None:
        if memory not in MEMORY_MODES:
            raise ValueError(f"train.memory must be one of {MEMORY_MODES}, got {memory!r}")
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.memory = memory
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        self.fast = all(fast_path_supports(p) for p in self.params)
        if self.fast:
            self.optimizer: torch.optim.Optimizer = ChunkedAdamW(self.params, lr=lr, betas=betas, eps=eps,
                                                                 weight_decay=weight_decay, memory=memory, seed=seed,
                                                                 fused=fused)
            self.master: list[torch.Tensor] | None = None
            return
        # fallback (e.g. FSDP2 DTensor shards): float32 master copies and torch's AdamW
        if memory == "lean" and self.mixed:
            log.warning("train.memory=lean: these parameters (%s) are not plain contiguous bf16 tensors; "
                        "using float32 master copies instead", type(self.params[0]).__name__)
        self.master = [p.detach().float().clone() for p in self.params] if self.mixed else self.params
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps,
                                           foreach=True)

    def master_state(self) -> dict[str, torch.Tensor | SplitFloat32]:
        """Float32 weights by name (the source of an EMA teacher): tensors, or :class:`SplitFloat32`
        halves for bf16 weights in ``exact`` mode. In ``lean`` mode, the bf16 weights themselves."""
        if self.fast:
            return {n: self.optimizer.master(i) for i, n in enumerate(self.names)}
        return dict(zip(self.names, self.master, strict=True))

    def zero_grad(self) -> None:
        if self.fast:
            self.optimizer.zero_grad()
            return
        for p in self.params:
            p.grad = None
        if self.mixed:
            for m in self.master:
                m.grad = None

    def fill_zero_grads(self) -> None:
        """Give parameters without a gradient a zero one, as a backward through a zero loss would.

        AdamW skips parameters whose gradient is None, while a zero gradient still moves them by
        momentum and weight decay.
        """
        if self.fast:
            self.optimizer.fill_zero_grads()
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def clip_and_check(self, max_norm: float | None) -> float:
        """Clip the gradients (the next :meth:`step` applies the factor) and return the pre-clip
        norm (inf/nan if not finite; 0 without gradients)."""
        if self.fast:
            norm = self.optimizer.clip_grad_norm(max_norm)
            return 0.0 if norm is None else float(norm)
        if self.mixed:
            for p, m in zip(self.params, self.master, strict=True):
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None  # one low-precision gradient at a time is alive next to its copy
        grads = [m for m in self.master if m.grad is not None]
        if not grads:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else float("inf"))
        if hasattr(norm, "full_tensor"):  # sharded (FSDP2) gradients give a distributed norm
            norm = norm.full_tensor()
        return float(norm)

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        if not self.fast and self.mixed:
            for p, m in zip(self.params, self.master, strict=True):
                p.copy_(m)

    def state_dict(self) -> dict:
        """``{"optimizer": <torch.optim.AdamW-layout state dict>}``; exact mode keeps the int16
        ``master_lo`` of bf16 weights in the per-parameter state. The fallback adds ``"master"``."""
        state = {"optimizer": self.optimizer.state_dict()}
        if not self.fast and self.mixed:
            state["master"] = {n: m.detach().clone() for n, m in zip(self.names, self.master, strict=True)}
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Also loads checkpoints of the other mode and of the previous implementation (float32
        ``"master"`` tensors by name)."""
        self.optimizer.load_state_dict(state["optimizer"])
        masters = state.get("master")
        if self.fast:
            if masters:
                for i, n in enumerate(self.names):
                    target = self.optimizer.master(i)
                    if isinstance(target, SplitFloat32):
                        target.assign(masters[n])
                    else:
                        target.copy_(masters[n].to(target.dtype))
            return
        if self.mixed:
            for n, m, p in zip(self.names, self.master, self.params, strict=True):
                if masters is not None:
                    m.copy_(masters[n])
                else:  # a checkpoint of the chunked path: its masters are the weights (+ remainders)
                    m.copy_(p)
                p.copy_(m)


# ---------------------------------------------------------------------------- accounting
def persistent_bytes(model: torch.nn.Module, optimizer: Any = None, teacher: Any = None) -> dict[str, int]:
    """Bytes of state that persists between optimizer steps, measured on the real tensors.

    Categories: ``weights`` (the model's parameters), ``masters`` (float32 masters or their int16
    remainders), ``moments`` (Adam's), ``teacher`` (its weights and EMA state, a LoRA teacher's
    adapter included), ``gradients`` (any still alive), ``other`` (buffers, step counters). Every
    storage is counted once, whole (a view counts its whole buffer); ``params`` is the number of
    model parameters the bytes are per (a LoRA teacher adapter's excluded).
    """
    out = dict.fromkeys(("weights", "masters", "moments", "teacher", "gradients", "other"), 0)
    seen: set[tuple[str, int]] = set()

    def add(kind: str, t: Any) -> None:
        if t is None:
            return
        if isinstance(t, SplitFloat32):
            add(kind, t.hi)
            add(kind, t.lo)
            return
        if is_dtensor(t):
            t = t.to_local()
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key in seen or storage.nbytes() == 0:
            return
        seen.add(key)
        out[kind] += storage.nbytes()

    teacher_params: set[int] = set()
    if teacher is not None:
        module = getattr(teacher, "module", None)
        if module is not None:
            for p in module.parameters():
                add("teacher", p)
            for b in module.buffers():
                add("teacher", b)
        for p in getattr(teacher, "adapter", {}).values():
            teacher_params.add(id(p))
            add("teacher", p)
        for t in (*getattr(teacher, "shadow", {}).values(), *getattr(teacher, "residual", {}).values()):
            add("teacher", t)
    params = [p for p in model.parameters() if id(p) not in teacher_params]
    for p in params:
        add("weights", p)
        add("gradients", p.grad)
    if optimizer is not None:
        inner = getattr(optimizer, "optimizer", optimizer)
        for st in inner.state.values():
            for name, t in st.items():
                if isinstance(t, torch.Tensor):
                    add({"exp_avg": "moments", "exp_avg_sq": "moments", "master_lo": "masters"}.get(name, "other"), t)
        for g in getattr(inner, "_grads", ()):
            add("gradients", g)
        for m in getattr(optimizer, "master", None) or ():
            add("masters", m)
            add("gradients", m.grad)
    for b in model.buffers():
        add("other", b)
    out["params"] = sum((p.to_local() if is_dtensor(p) else p).numel() for p in params)
    out["total"] = sum(out[k] for k in ("weights", "masters", "moments", "teacher", "gradients", "other"))
    return out


def persistent_bytes_per_param(model: torch.nn.Module, optimizer: Any = None, teacher: Any = None) -> dict[str, float]:
    """:func:`persistent_bytes` divided by the number of model parameters (``total`` included)."""
    counts = persistent_bytes(model, optimizer, teacher)
    n = max(1, counts.pop("params"))
    return {k: v / n for k, v in counts.items()}


def warmup_lambda(warmup_steps: int, total_steps: int | None = None, schedule: str = "constant"):
    """LR multiplier: linear warm-up over ``warmup_steps``, then constant or cosine to 0."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine" and total_steps:
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor
