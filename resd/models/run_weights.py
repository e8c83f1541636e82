"""A run's trained student as a plain model: what ``resd eval|solve|export`` load and ``model.init_from`` starts from.

A full-parameter checkpoint holds every weight under the model's own names. A LoRA checkpoint
(``model.lora.enabled``) holds only adapters under PEFT's names: the student adapter is rebuilt
with the run's LoRA settings over the run's base weights and merged into them. A run's base weights
are those of its ``model.name`` with its own ``model.init_from`` (if any) applied first, so a chain
of runs (A, then B from A, then C from B) resolves back to the first base model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

INIT_FROM_KEY = "model.init_from"
_STEPS = ("latest", "best")


class WeightsMismatchError(ValueError):
    """A run's weights do not fit the model they are loaded into."""


def parse_init_from(spec: str) -> tuple[Path, str]:
    """``RUN_DIR[:STEP]`` -> (run directory, step); STEP is ``best``, ``latest`` (default) or a number.

    A colon is only taken as the step separator when what follows it is a valid step, so Windows-style
    drive letters and directories with colons in their names still work.
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head and (tail in _STEPS or tail.isdigit()):
        return Path(head), tail
    return Path(spec), "latest"


def run_model_config(run_dir: str | Path):
    """The ``model`` section of a run's saved config (only that section is validated, so a run whose
    environment cannot be imported here still loads)."""
    import yaml

    from resd.config import ModelConfig
    from resd.run_dir import RunDir

    run = RunDir(run_dir)
    raw = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
    return ModelConfig.model_validate(raw.get("model") or {})


def student_adapter(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student adapter's tensors of a LoRA checkpoint (it may also hold the EMA teacher's adapter)."""
    from resd.models.lora import STUDENT_ADAPTER

    return {n: t for n, t in tensors.items() if "lora_" in n and f".{STUDENT_ADAPTER}." in n}


def is_lora_checkpoint(student: dict[str, torch.Tensor]) -> bool:
    """Whether a checkpoint's student group holds LoRA adapters rather than full weights."""
    return any("lora_" in name for name in student)


def check_fit(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`WeightsMismatchError` unless ``given`` has exactly the names and shapes of ``expected``."""
    unknown = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    shapes = sorted(n for n in set(given) & set(expected) if tuple(given[n].shape) != tuple(expected[n].shape))
    if unknown or missing or shapes:
        detail = [f"{len(unknown)} unknown (e.g. {unknown[:1]})", f"{len(missing)} missing (e.g. {missing[:1]})"]
        if shapes:
            n = shapes[0]
            detail.append(f"{len(shapes)} of another shape (e.g. {n}: {tuple(given[n].shape)} here, "
                          f"{tuple(expected[n].shape)} in the model)")
        raise WeightsMismatchError(f"the {what} do not fit the model: " + ", ".join(detail))


@torch.no_grad()
def merge_adapter(model: torch.nn.Module, adapter: dict[str, torch.Tensor], lora: Any) -> torch.nn.Module:
    """``model`` with a saved student adapter (PEFT names) merged into its weights; returns the plain model."""
    from resd.models.lora import apply_lora, load_adapters

    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    wrapped = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    check_fit({n: p for n, p in wrapped.named_parameters() if "lora_" in n}, adapter, "LoRA adapter weights")
    load_adapters(wrapped, adapter)
    merged = wrapped.merge_and_unload()
    for name, param in merged.named_parameters():  # PEFT froze the base weights; a new run trains them
        param.requires_grad_(trainable.get(name, True))
    return merged


@torch.no_grad()
def apply_student(model: torch.nn.Module, student: dict[str, torch.Tensor], model_cfg: Any,
                   init: Any) -> torch.nn.Module:
    """Write a checkpoint's student group into ``model``; ``init`` applies the run's own base weights
    (its ``model.init_from``) first when the student is an adapter."""
    if not is_lora_checkpoint(student):  # every weight is in the checkpoint: init_from does not matter
        params = dict(model.named_parameters())
        check_fit(params, student, "student weights")
        for name, value in student.items():
            params[name].copy_(value.to(params[name].dtype))
        return model
    return merge_adapter(init(model), student_adapter(student), model_cfg.lora)


def apply_run_weights(model: torch.nn.Module, run_dir: str | Path, which: str | int = "latest",
                      _seen: frozenset[Path] = frozenset()) -> torch.nn.Module:
    """The student of run ``run_dir`` at checkpoint ``which``, written into ``model`` (a plain model of
    the run's ``model.name``); returns the model (a new object when an adapter was merged).

    Raises :class:`resd.trainer.checkpoint.CheckpointError` when the checkpoint is missing or corrupt,
    :class:`WeightsMismatchError` when its weights do not fit ``model``, and ``ValueError`` when the
    directory is not a run or ``model.init_from`` chains form a cycle.
    """
    from resd.run_dir import RunDir
    from resd.trainer.checkpoint import load_checkpoint

    run = RunDir(run_dir)
    if not run.is_run():
        raise ValueError(f"{run.root} has no config.yaml; is it a run directory?")
    key = run.root.resolve()
    if key in _seen:
        raise ValueError(f"{INIT_FROM_KEY} of {run.root} leads back to itself")
    path = run.checkpoint(which)
    student = load_checkpoint(path)[0]["student"]
    model_cfg = run_model_config(run.root)

    def init(m: torch.nn.Module) -> torch.nn.Module:
        if not model_cfg.init_from:
            return m
        return apply_run_weights(m, *parse_init_from(model_cfg.init_from), _seen | {key})

    try:
        return apply_student(model, student, model_cfg, init)
    except WeightsMismatchError as e:
        raise WeightsMismatchError(f"{path}: {e}") from None


def init_from(model: torch.nn.Module, model_cfg: Any) -> torch.nn.Module:
    """Apply ``model.init_from`` (``RUN_DIR[:STEP]``) of a ``model`` config section to a freshly loaded
    base model of ``model.name``; returns the model (unchanged when the key is not set).

    Every failure is a :class:`resd.config.ConfigError` naming the key.
    """
    from resd.config import ConfigError
    from resd.trainer.checkpoint import CheckpointError

    spec = model_cfg.init_from
    if not spec:
        return model
    run_dir, step = parse_init_from(spec)
    try:
        model = apply_run_weights(model, run_dir, step)
    except WeightsMismatchError as e:
        raise ConfigError(f"{INIT_FROM_KEY}={spec}: {e} (model.name={model_cfg.name!r})") from None
    except (CheckpointError, ValueError) as e:
        raise ConfigError(f"{INIT_FROM_KEY}={spec}: {e}") from None
    log.info("initialized the policy from %s (checkpoint %s)", run_dir, step)
    return model


def load_base(model_cfg: Any, tokenizer: Any = None) -> torch.nn.Module:
    """A ``model`` config section's base model, loaded as training loads it: ``model.name`` with
    ``model.init_from`` applied."""
    from resd.models import load_model

    model = load_model(model_cfg.name, model_cfg.precision, tokenizer, tiny=model_cfg.tiny)
    return init_from(model, model_cfg)


def load_policy(config: Any, run_dir: str | Path | None = None, which: str | int = "latest") -> tuple[Any, Any]:
    """(model, tokenizer) from a config, with a run's checkpoint weights when ``run_dir`` is given.

    Without ``run_dir``: the base model (``model.name`` and ``model.init_from``). With it: the run's
    student at checkpoint ``which``, LoRA merged. The model is frozen (no gradients).
    """
    from resd.models import load_model, load_tokenizer
    from resd.run_dir import RunDir
    from resd.trainer.checkpoint import CheckpointError, load_checkpoint

    tokenizer = load_tokenizer(config.model.tokenizer or config.model.name)
    if run_dir is None:
        model = load_base(config.model, tokenizer)
    else:
        path = RunDir(run_dir).checkpoint(which)
        student = load_checkpoint(path)[0]["student"]
        model = load_model(config.model.name, config.model.precision, tokenizer, tiny=config.model.tiny)
        try:
            model = apply_student(model, student, config.model, lambda m: init_from(m, config.model))
        except WeightsMismatchError as e:
            raise CheckpointError(f"{path}: {e} (model.name={config.model.name!r})") from None
    model.requires_grad_(False)
    return model, tokenizer
