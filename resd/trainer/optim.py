"""AdamW with float32 master weights, gradient clipping, and the warm-up learning-rate schedule.

In ``bf16`` precision the model holds bfloat16 weights (fast on CPUs with AVX-512 BF16 and on
GPUs) while the optimizer updates float32 master copies: with learning rates around 1e-6 a pure
bfloat16 update would round to nothing.
"""

from __future__ import annotations

import math

import torch


class MasterWeightAdamW:
    """AdamW over float32 master copies of (possibly lower-precision) model parameters."""

    def __init__(
        self,
        named_params: list[tuple[str, torch.nn.Parameter]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.01,
        eps: float = 1e-8,
    ) -> None:
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        if self.mixed:
            self.master = [p.detach().float().clone() for p in self.params]
        else:
            self.master = self.params
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)

    def master_state(self) -> dict[str, torch.Tensor]:
        """Float32 weights by name (the source of an EMA teacher)."""
        return dict(zip(self.names, self.master, strict=True))

    def zero_grad(self) -> None:
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
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def clip_and_check(self, max_norm: float | None) -> float:
        """Move gradients to the masters, clip them, and return the pre-clip norm (inf/nan if not finite)."""
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
        if self.mixed:
            for p, m in zip(self.params, self.master, strict=True):
                p.copy_(m)

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.mixed:
            state["master"] = {n: m.detach().clone() for n, m in zip(self.names, self.master, strict=True)}
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.mixed:
            for n, m, p in zip(self.names, self.master, self.params, strict=True):
                m.copy_(state["master"][n])
                p.copy_(m)


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
