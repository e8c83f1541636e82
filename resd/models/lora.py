"""LoRA through PEFT: the student trains a low-rank adapter over frozen base weights.

With LoRA the self-teacher needs no second copy of the model: the ``frozen`` teacher is the base
model with the adapter switched off, and the ``ema`` teacher is a second adapter (named
:data:`TEACHER_ADAPTER`) whose weights follow the student's adapter by EMA. Both run through the
same module, with the adapter chosen around the teacher's forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import torch

STUDENT_ADAPTER = "default"
TEACHER_ADAPTER = "teacher"


def _peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("model.lora needs PEFT (a dependency of resd): pip install peft") from e
    return peft


def apply_lora(model: torch.nn.Module, r: int = 16, alpha: float = 32.0, dropout: float = 0.0,
               target_modules: str | list[str] = "all-linear") -> torch.nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; only the adapter's parameters require gradients."""
    peft = _peft()
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                             task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def adapter_parameters(model: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The parameters of one adapter by name (PEFT names them ``...lora_A.<adapter>.weight``)."""
    tag = f".{adapter}."
    return {n: p for n, p in model.named_parameters() if tag in n and ("lora_" in n)}


def counterpart(name: str, source: str, target: str) -> str:
    """The name of the same LoRA matrix in another adapter."""
    return name.replace(f".{source}.", f".{target}.")


@torch.no_grad()
def add_teacher_adapter(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Add a frozen copy of the student's adapter as :data:`TEACHER_ADAPTER`; returns its parameters."""
    model.add_adapter(TEACHER_ADAPTER, model.peft_config[STUDENT_ADAPTER])
    student = adapter_parameters(model, STUDENT_ADAPTER)
    teacher = adapter_parameters(model, TEACHER_ADAPTER)
    for name, param in teacher.items():
        param.copy_(student[counterpart(name, TEACHER_ADAPTER, STUDENT_ADAPTER)])
        param.requires_grad_(False)
    return teacher


@contextmanager
def active_adapter(model: torch.nn.Module, adapter: str | None) -> Iterator[None]:
    """Run the block with ``adapter`` active (None: adapters off), then restore the student's.

    PEFT's ``set_adapter`` marks the active adapter trainable, so the trainable flags are saved and
    restored around the switch.
    """
    if adapter == STUDENT_ADAPTER:
        yield
        return
    if adapter is None:
        with model.disable_adapter():
            yield
        return
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.set_adapter(adapter)
    try:
        yield
    finally:
        model.set_adapter(STUDENT_ADAPTER)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


@torch.no_grad()
def load_adapters(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter weights (every ``lora_`` parameter) into ``model``; missing ones are an error."""
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    missing = sorted(set(params) - set(state))
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} adapter weights, e.g. {missing[0]}")
    for name, param in params.items():
        param.copy_(state[name].to(param.dtype))
