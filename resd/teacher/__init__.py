"""The self-teacher: which weights score the student's response under the teacher context.

- ``ema``: a separate copy, ``teacher <- (1 - tau) teacher + tau student`` after every optimizer
  step whose gradient is finite (SDPO's default, tau = 0.05).
- ``frozen``: the initial model (an EMA with tau = 0; RESD's released behaviour, bug B1).
- ``live``: the current student itself, without gradient.
- ``trust-region``: the frozen initial model and the live student run on the teacher input and
  their logits are mixed, ``(1 - tau) l_ref + tau l_student``.

The teacher's weights are part of every checkpoint (the reference implementation loses them).
"""

from __future__ import annotations

import copy

import torch

KINDS = ("ema", "frozen", "live", "trust-region")


class Teacher:
    """Holds the teacher weights and applies the update rule of its kind."""

    def __init__(self, student: torch.nn.Module, kind: str = "ema", update_rate: float = 0.05) -> None:
        if kind not in KINDS:
            raise ValueError(f"teacher kind must be one of {KINDS}, got {kind!r}")
        if not 0.0 <= update_rate <= 1.0:
            raise ValueError(f"teacher update_rate must be in [0, 1], got {update_rate}")
        self.kind = kind
        self.rate = update_rate
        self.student = student
        self.module: torch.nn.Module | None = None
        self.shadow: dict[str, torch.Tensor] = {}
        if kind != "live":
            self.module = copy.deepcopy(student)
            self.module.requires_grad_(False)
            self.module.eval()
            # EMA with small rates needs float32 accumulators when the module is lower precision.
            self.shadow = {
                n: p.detach().float().clone()
                for n, p in self.module.named_parameters()
                if kind == "ema" and p.dtype != torch.float32
            }

    @property
    def models(self) -> list[tuple[torch.nn.Module, float]]:
        """(module, logit weight) pairs whose logits are mixed to form the teacher's logits."""
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
        for name, param in self.module.named_parameters():
            target = self.shadow.get(name, param)
            target.mul_(1.0 - self.rate).add_(source[name].detach().to(target.dtype), alpha=self.rate)
            if target is not param:
                param.copy_(target)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to checkpoint (float32 shadows where they exist). Empty for ``live``."""
        if self.module is None:
            return {}
        state = {n: p.detach().clone() for n, p in self.module.named_parameters()}
        state.update({n: t.clone() for n, t in self.shadow.items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.module is None:
            return
        for name, param in self.module.named_parameters():
            if name not in state:
                raise KeyError(f"teacher checkpoint lacks {name}")
            if name in self.shadow:
                self.shadow[name].copy_(state[name])
            param.copy_(state[name].to(param.dtype))
