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
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from resd.models import lora as lora_lib

KINDS = ("ema", "frozen", "live", "trust-region")


class Teacher:
    """Holds the teacher weights and applies the update rule of its kind."""

    def __init__(self, student: torch.nn.Module, kind: str = "ema", update_rate: float = 0.05, *,
                 lora: bool = False, offload: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"teacher kind must be one of {KINDS}, got {kind!r}")
        if not 0.0 <= update_rate <= 1.0:
            raise ValueError(f"teacher update_rate must be in [0, 1], got {update_rate}")
        self.kind = kind
        self.rate = update_rate
        self.student = student
        self.module: torch.nn.Module | None = None
        self.shadow: dict[str, torch.Tensor] = {}
        self.lora = lora
        self.offload = offload and not lora  # a LoRA teacher has no weights of its own to move
        self.adapter: dict[str, torch.nn.Parameter] = {}  # LoRA ema: the teacher adapter's parameters
        if lora:
            if kind == "ema":
                self.adapter = lora_lib.add_teacher_adapter(student)
                self.shadow = {n: p.detach().float().clone() for n, p in self.adapter.items() if p.dtype != torch.float32}
        elif kind != "live":
            self.module = copy.deepcopy(student)
            self.module.requires_grad_(False)
            self.module.eval()
            if offload:
                self.module.to("cpu")
            # EMA with small rates needs float32 accumulators when the module is lower precision.
            self.shadow = {
                n: p.detach().float().clone()
                for n, p in self.module.named_parameters()
                if kind == "ema" and p.dtype != torch.float32
            }

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
    def update(self, source: dict[str, torch.Tensor] | None = None) -> None:
        """Apply the EMA after a successful optimizer step. ``source``: float32 student weights by name."""
        if self.kind != "ema" or self.rate == 0.0:
            return
        if source is None:
            source = dict(self.student.named_parameters())
        for name, param in self._teacher_parameters():
            target = self.shadow.get(name, param)
            if self.lora:
                name = lora_lib.counterpart(name, lora_lib.TEACHER_ADAPTER, lora_lib.STUDENT_ADAPTER)
            target.mul_(1.0 - self.rate).add_(source[name].detach().to(target.device, target.dtype), alpha=self.rate)
            if target is not param:
                param.copy_(target)

    def _teacher_parameters(self):
        return self.adapter.items() if self.lora else self.module.named_parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to checkpoint (float32 shadows where they exist). Empty for ``live`` and for the
        LoRA ``frozen`` teacher (the base weights are the student's)."""
        if self.module is None and not self.adapter:
            return {}
        state = {n: p.detach().clone() for n, p in self._teacher_parameters()}
        state.update({n: t.clone() for n, t in self.shadow.items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.module is None and not self.adapter:
            return
        for name, param in self._teacher_parameters():
            if name not in state:
                raise KeyError(f"teacher checkpoint lacks {name}")
            if name in self.shadow:
                self.shadow[name].copy_(state[name])
            param.copy_(state[name].to(param.dtype))
