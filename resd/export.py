"""``resd export``: a run's trained student as a Hugging Face model directory.

The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)`` and with vLLM:
``config.json`` (with ``architectures``), ``generation_config.json``, the tokenizer files with the chat
template, and safetensors weights. A LoRA run's adapter is merged into its base weights, or, with
``adapter=True``, saved as a PEFT adapter directory (``adapter_config.json``,
``adapter_model.safetensors``) for ``peft.PeftModel.from_pretrained(base, OUT_DIR)``. Its
``base_model_name_or_path`` names a loadable base: the hub id or the absolute path of ``model.name``,
the local directory of the embedded model, or ``OUT_DIR/base``, which the export writes itself when
the base exists nowhere on disk (the random ``tiny`` model, or a run started with ``model.init_from``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BASE_SUBDIR = "base"


def _check_out_dir(out: Path, run: Any, overwrite: bool) -> None:
    from resd.config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output directory {out} exists and is not empty; replace it with --overwrite or "
                              "choose another")
        target, root, checkpoints = out.resolve(), run.root.resolve(), run.checkpoints.resolve()
        if target in (root, checkpoints) or target in root.parents or checkpoints in target.parents:
            raise ConfigError(f"output directory {out} holds the run {run.root} or its checkpoints; refusing to "
                              "replace it")


def _generation_config(model: Any, model_cfg: Any, tokenizer: Any) -> Any:
    """The base model's own generation config (``load_model`` forces sampling on the loaded copy), with
    the tokenizer's end-of-sequence and padding tokens where it names none."""
    from transformers import GenerationConfig

    from resd.models import resolve_model_path

    generation = None
    if model_cfg.name != "tiny":
        try:
            generation = GenerationConfig.from_pretrained(resolve_model_path(model_cfg.name))
        except OSError:  # the checkpoint has no generation_config.json
            generation = None
    if generation is None:
        generation = GenerationConfig.from_model_config(model.config)
    if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    return generation


def _save_model(model: Any, tokenizer: Any, model_cfg: Any, dest: Path) -> None:
    model.generation_config = _generation_config(model, model_cfg, tokenizer)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _base_reference(model_cfg: Any) -> str | None:
    """What ``base_model_name_or_path`` of an exported adapter names; None: the export writes the base."""
    from resd.models import resolve_model_path
    from resd.models.loading import EMBEDDED_NAMES

    if model_cfg.name == "tiny" or model_cfg.init_from:
        return None
    if model_cfg.name in EMBEDDED_NAMES:
        return resolve_model_path(model_cfg.name)
    local = Path(model_cfg.name)
    return str(local.resolve()) if local.exists() else model_cfg.name


def _save_adapter(student: dict, model_cfg: Any, tokenizer: Any, dest: Path, final_out: Path) -> None:
    import torch

    from resd.models.lora import STUDENT_ADAPTER, apply_lora, load_adapters
    from resd.models.run_weights import WeightsMismatchError, check_fit, load_base, student_adapter

    base = load_base(model_cfg, tokenizer)
    reference = _base_reference(model_cfg)
    if reference is None:
        _save_model(base, tokenizer, model_cfg, dest / BASE_SUBDIR)
    lc = model_cfg.lora
    wrapped = apply_lora(base, lc.r, lc.alpha, lc.dropout, lc.target_modules)
    adapter = student_adapter(student)
    try:
        check_fit({n: p for n, p in wrapped.named_parameters() if "lora_" in n}, adapter, "LoRA adapter weights")
    except WeightsMismatchError as e:
        from resd.trainer.checkpoint import CheckpointError

        raise CheckpointError(f"{e} (model.name={model_cfg.name!r})") from None
    with torch.no_grad():
        load_adapters(wrapped, adapter)
    # PEFT reads the base's config while saving, so a base written here is named where it is now
    # and then where it will be once the directory is renamed into place.
    wrapped.peft_config[STUDENT_ADAPTER].base_model_name_or_path = reference or str(dest / BASE_SUBDIR)
    wrapped.save_pretrained(dest, selected_adapters=[STUDENT_ADAPTER])
    if reference is None:
        config_path = dest / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = str(final_out.resolve() / BASE_SUBDIR)
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(dest)


def export_run(run_dir: str | Path, out_dir: str | Path, step: str | int = "latest", adapter: bool = False,
               overwrite: bool = False) -> Path:
    """Write the student of ``run_dir``'s checkpoint ``step`` (``latest``, ``best`` or a number) to
    ``out_dir`` as a Hugging Face model directory (see the module docstring); returns ``out_dir``.

    ``adapter``: a LoRA run's adapter as a PEFT adapter directory instead of merged weights (an error
    for a full-parameter run). A non-empty ``out_dir`` is refused unless ``overwrite``. The directory
    is written next to ``out_dir`` first and renamed into place, so a failed export leaves nothing behind.
    """
    from resd.config import ConfigError
    from resd.models import load_model, load_tokenizer
    from resd.models.run_weights import (
        WeightsMismatchError,
        apply_student,
        init_from,
        is_lora_checkpoint,
        run_model_config,
    )
    from resd.run_dir import RunDir
    from resd.trainer.checkpoint import CheckpointError, load_checkpoint

    run = RunDir(run_dir)
    if not run.is_run():
        raise ConfigError(f"{run_dir} has no config.yaml; is it a run directory?")
    out = Path(out_dir)
    _check_out_dir(out, run, overwrite)
    model_cfg = run_model_config(run.root)
    path = run.checkpoint(step)
    student = load_checkpoint(path)[0]["student"]
    lora = is_lora_checkpoint(student)
    if adapter and not lora:
        raise ConfigError(f"--adapter exports a LoRA adapter, but {run_dir} is a full-parameter run "
                          "(model.lora.enabled=false); export it without --adapter")
    tokenizer = load_tokenizer(model_cfg.tokenizer or model_cfg.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if adapter:
            _save_adapter(student, model_cfg, tokenizer, tmp, out)
        else:
            model = load_model(model_cfg.name, model_cfg.precision, tokenizer, tiny=model_cfg.tiny)
            try:
                model = apply_student(model, student, model_cfg, lambda m: init_from(m, model_cfg))
            except WeightsMismatchError as e:
                raise CheckpointError(f"{path}: {e} (model.name={model_cfg.name!r})") from None
            _save_model(model, tokenizer, model_cfg, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kind = "LoRA adapter" if adapter else ("LoRA merged into the base model" if lora else "full weights")
    log.info("exported %s of %s (%s) to %s", path.name, run.root, kind, out)
    return out


def describe(out_dir: str | Path) -> str:
    """A listing of the files of an exported directory with their sizes."""
    out = Path(out_dir)
    lines = []
    for file in sorted(p for p in out.rglob("*") if p.is_file()):
        size = file.stat().st_size
        shown = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
        lines.append(f"  {file.relative_to(out)}  ({shown})")
    return "\n".join(lines)
