"""The self-teacher: which weights score the student's response under the teacher context.

- ``ema``: a separate copy, ``teacher <- (1 - tau) teacher + tau student`` after every optimizer
  step whose gradient is finite (SDPO's default, tau = 0.05).
- ``frozen``: the initial model (an EMA with tau = 0; the behaviour of RESD's release, whose EMA
  never runs, see ``docs/deviations.md``).
- ``live``: the current student itself, without gradient.
- ``trust-region``: the frozen initial model and the live student run on the teacher input and
  their logits are mixed, ``(1 - tau) l_ref + tau l_student``.

With a LoRA student (``lora=True``) no copy of the model is made: ``frozen`` is the base model
with the adapter off, ``ema`` is a second adapter that follows the student's adapter, and the
trust-region reference is the adapter-free base model (see :mod:`resd.models.lora`).

The teacher's weights are part of every checkpoint (the reference implementation loses them).

EMA state by memory mode (config ``train.memory``, see :mod:`resd.trainer.optim`) for a bfloat16
teacher: ``exact`` keeps the float32 EMA without a second copy, as the teacher's own bf16 weights
plus an int16 remainder (``residual``; together they are the float32 value bit for bit, and the
bf16 weights are it rounded to nearest, ties away from zero), 4 bytes per parameter; the EMA runs
the operations of ``shadow.mul_(1 - tau).add_(student, alpha=tau)`` on float32 values. ``lean``
keeps bf16 weights only (2 bytes) and writes each EMA step with stochastic rounding seeded by the
run's seed and the number of updates. Float32 teachers are updated in place; DTensor shards and
other dtypes keep a float32 ``shadow`` beside the module (the previous behaviour).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from resd.models import lora as lora_lib

KINDS = ("ema", "frozen", "live", "trust-region")
UPDATES_KEY = "_ema_updates"  # lean mode: EMA updates made, in the teacher checkpoint


class Teacher:
    """Holds the teacher weights and applies the update rule of its kind."""

    def __init__(self, student: torch.nn.Module, kind: str = "ema", update_rate: float = 0.05, *,
                 lora: bool = False, offload: bool = False, memory: str = "exact", seed: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"teacher kind must be one of {KINDS}, got {kind!r}")
        if not 0.0 <= update_rate <= 1.0:
            raise ValueError(f"teacher update_rate must be in [0, 1], got {update_rate}")
        from resd.trainer.optim import MEMORY_MODES

        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        self.kind = kind
        self.rate = update_rate
        self.student = student
        self.memory = memory
        self.seed = seed
        self.updates = 0  # EMA updates made (seeds lean mode's stochastic rounding)
        self.module: torch.nn.Module | None = None
        self.shadow: dict[str, torch.Tensor] = {}  # float32 accumulators (fallback)
        self.residual: dict[str, torch.Tensor] = {}  # exact mode: int16 low halves of the float32 EMA
        self.lora = lora
        self.offload = offload and not lora  # a LoRA teacher has no weights of its own to move
        self.adapter: dict[str, torch.nn.Parameter] = {}  # LoRA ema: the teacher adapter's parameters
        if lora:
            if kind == "ema":
                self.adapter = lora_lib.add_teacher_adapter(student)
                self._make_ema_state(self.adapter.items())
        elif kind != "live":
            self.module = copy.deepcopy(student)
            self.module.requires_grad_(False)
            self.module.eval()
            if offload:
                self.module.to("cpu")
            if kind == "ema":
                self._make_ema_state(self.module.named_parameters())

    def _make_ema_state(self, named) -> None:
        """EMA with small rates needs more than bf16 precision (or stochastic rounding, ``lean``)."""
        from resd.trainer.optim import fast_path_supports

        for n, p in named:
            if p.dtype == torch.float32:
                continue
            if fast_path_supports(p) and p.dtype == torch.bfloat16:
                if self.memory == "exact":
                    self.residual[n] = torch.zeros_like(p, dtype=torch.int16, memory_format=torch.contiguous_format)
            else:
                self.shadow[n] = p.detach().float().clone()

    def passes(self) -> list[tuple[torch.nn.Module, float, AbstractContextManager]]:
        """(module, logit weight, context to run its forward in) whose logits are mixed to form the
        teacher's logits; the context selects the LoRA adapter where there is one."""
        if not self.lora:
            return [(m, w, self._on_device(m) if m is self.module else nullcontext()) for m, w in self.models]
        student = self.student
        if self.kind == "live":
            return [(student, 1.0, nullcontext())]
        if self.kind == "ema":
            return [(student, 1.0, lora_lib.active_adapter(student, lora_lib.TEACHER_ADAPTER))]
        if self.kind == "frozen":
            return [(student, 1.0, lora_lib.active_adapter(student, None))]
        return [(student, 1.0 - self.rate, lora_lib.active_adapter(student, None)), (student, self.rate, nullcontext())]

    @contextmanager
    def _on_device(self, module: torch.nn.Module) -> Iterator[None]:
        """With ``offload``, bring the teacher to the student's device for one forward, then back to CPU."""
        if not self.offload:
            yield
            return
        device = next(self.student.parameters()).device
        module.to(device)
        try:
            yield
        finally:
            module.to("cpu")

    @property
    def models(self) -> list[tuple[torch.nn.Module, float]]:
        """(module, logit weight) pairs whose logits are mixed to form the teacher's logits (without LoRA)."""
        if self.kind == "live":
            return [(self.student, 1.0)]
        if self.kind == "trust-region":
            return [(self.module, 1.0 - self.rate), (self.student, self.rate)]
        return [(self.module, 1.0)]

    @torch.no_grad()
    def update(self, source: dict[str, Any] | None = None) -> None:
        """Apply the EMA after a successful optimizer step. ``source``: float32 student weights by
        name (tensors or :class:`resd.trainer.optim.SplitFloat32`, as ``master_state()`` gives them)."""
        if self.kind != "ema" or self.rate == 0.0:
            return
        from resd.trainer.optim import _Noise, _works, chunk_elements, ema_update_, fast_path_supports, is_dtensor

        if source is None:
            source = dict(self.student.named_parameters())
        self.updates += 1
        noises: dict[torch.device, _Noise] = {}
        named = list(self._teacher_parameters())
        works = _works(p for _, p in named if fast_path_supports(p))  # chunk buffers shared by all tensors
        for index, (name, param) in enumerate(named):
            src = source[lora_lib.counterpart(name, lora_lib.TEACHER_ADAPTER, lora_lib.STUDENT_ADAPTER)
                         if self.lora else name]
            if name in self.shadow or not fast_path_supports(param) or is_dtensor(src):
                # the previous per-tensor path: float32 shadows, DTensor shards
                target = self.shadow.get(name, param)
                value = src.float() if not isinstance(src, torch.Tensor) else src.detach()
                target.mul_(1.0 - self.rate).add_(value.to(target.device, target.dtype), alpha=self.rate)
                if target is not param:
                    param.copy_(target)
                continue
            noise = None
            if self.memory == "lean" and param.dtype != torch.float32:
                noise = noises.get(param.device)
                if noise is None:
                    noise = noises[param.device] = _Noise(self.seed, self.updates, "ema", chunk_elements(param.device),
                                                          param.device)
            ema_update_(param, src, self.rate, remainder=self.residual.get(name), noise=noise, index=index,
                        work=works[param.device])

    def _teacher_parameters(self):
        return self.adapter.items() if self.lora else self.module.named_parameters()

    def _stochastic(self) -> bool:
        return self.kind == "ema" and self.memory == "lean" and any(
            p.dtype != torch.float32 and n not in self.shadow for n, p in self._teacher_parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to checkpoint (the float32 EMA where there is one). Empty for ``live`` and for the
        LoRA ``frozen`` teacher (the base weights are the student's). Lean mode adds the update count."""
        if self.module is None and not self.adapter:
            return {}
        from resd.trainer.optim import SplitFloat32

        params = dict(self._teacher_parameters())
        state = {n: (self.shadow[n].clone() if n in self.shadow else p.detach().clone()) for n, p in params.items()
                 if n not in self.residual}
        state.update({n: SplitFloat32(params[n].detach(), lo).float() for n, lo in self.residual.items()})
        if self._stochastic():
            state[UPDATES_KEY] = torch.tensor([self.updates], dtype=torch.int64)
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.module is None and not self.adapter:
            return
        from resd.trainer.optim import SplitFloat32

        for name, param in self._teacher_parameters():
            if name not in state:
                raise KeyError(f"teacher checkpoint lacks {name}")
            if name in self.shadow:
                self.shadow[name].copy_(state[name])
            if name in self.residual:
                SplitFloat32(param.detach(), self.residual[name]).assign(state[name])
            else:
                param.copy_(state[name].to(param.dtype))
        if UPDATES_KEY in state:
            self.updates = int(state[UPDATES_KEY].reshape(-1)[0])
