"""The policy being trained: model, tokenizer, LoRA or FSDP2 sharding, and its rollout backend.

:class:`Policy` owns the weights and keeps the rollout backend in step with them (an unsharded
replica under FSDP2 with the HF backend, or the vLLM engine), and knows how its weights are saved
(full state, or LoRA adapters only) and loaded.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from resd.config import Config
from resd.distributed import DistInfo, full_state_dict, load_full_state_dict, resolve_device, shard_model
from resd.models import DTYPES, load_model, load_tokenizer
from resd.models.loading import contiguous_head_input
from resd.models.lora import apply_lora, load_adapters
from resd.models.run_weights import init_from
from resd.rollout import HFGenerator
from resd.rollout.vllm import VLLMGenerator

log = logging.getLogger(__name__)


class Policy:
    """The trainable model and everything that samples from it."""

    def __init__(self, config: Config, dist: DistInfo, *, model: Any = None, tokenizer: Any = None,
                 apply_init_from: bool = True) -> None:
        """``apply_init_from=False`` skips ``model.init_from``: a full-parameter checkpoint about to be
        loaded holds every weight, so the old run's weights would be read for nothing (and its directory
        need not exist any more)."""
        cfg = config
        self.config = config
        self.dist = dist
        self.tokenizer = tokenizer or load_tokenizer(cfg.model.tokenizer or cfg.model.name)
        # Sharded training keeps float32 parameters and computes in the configured precision.
        load_precision = "fp32" if dist.enabled else cfg.model.precision
        self.model = model or load_model(cfg.model.name, load_precision, self.tokenizer, tiny=cfg.model.tiny)
        # Before this run's LoRA, so the adapter trains over the old run's weights; a resumed run then
        # loads its own checkpoint over these (a LoRA checkpoint holds only adapters, so the base needs them).
        if apply_init_from:
            self.model = init_from(self.model, cfg.model)
        contiguous_head_input(self.model)  # (models passed in were not loaded by load_model)
        self.device = resolve_device(cfg.model.device, dist)
        if not dist.enabled:  # FSDP2 places the shards itself
            self.model.to(self.device)
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora = cfg.model.lora.enabled
        if self.lora:
            if dist.enabled:
                raise ValueError("model.lora is not supported with several processes yet (train LoRA on one process)")
            lc = cfg.model.lora
            self.model = apply_lora(self.model, lc.r, lc.alpha, lc.dropout, lc.target_modules)
        self.model.train()
        self.rollout_model = self.model
        if dist.enabled and cfg.rollout.backend == "hf":  # HF generation uses an unsharded replica synced after each step
            compute = DTYPES[cfg.model.precision]
            self.rollout_model = copy.deepcopy(self.model).to(self.device, compute).requires_grad_(False)
        self.generator: Any = None  # made by make_generator once the model is in its final (sharded) form

    @property
    def compute_dtype(self) -> torch.dtype:
        return DTYPES[self.config.model.precision]

    def shard(self) -> None:
        """FSDP2-shard the model (several processes only)."""
        compute = self.compute_dtype
        shard_model(self.model, self.dist, compute if compute != torch.float32 else None)
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in self.model.parameters())
        total = sum(p.numel() for p in self.model.parameters())
        log.info("FSDP2 sharding active: rank %d of %d holds %d of %d parameter elements",
                 self.dist.rank, self.dist.world, local, total)

    def make_generator(self) -> None:
        cfg = self.config
        if cfg.rollout.backend == "vllm":
            from resd.models.loading import resolve_model_path

            if cfg.model.name == "tiny":
                raise ValueError("rollout.backend=vllm needs a checkpoint on disk, not model.name=tiny")
            dtype = {"bf16": "bfloat16", "fp32": "float32"}[cfg.model.precision]
            weights = (lambda: full_state_dict(self.model, self.dist).items()) if self.dist.enabled else None
            self.generator = VLLMGenerator(self.model, self.tokenizer, resolve_model_path(cfg.model.name), dtype,
                                           cfg.rollout.vllm, cfg.rollout.vllm_sleep_level, weights_fn=weights)
            if cfg.model.init_from:  # the engine loaded model.name's weights from disk
                self.generator.sync_weights()
        else:
            self.generator = HFGenerator(self.rollout_model, self.tokenizer, cfg.rollout.batch_size,
                                         record_logprobs=cfg.train.rollout_is_threshold is not None)

    def before_update(self) -> None:
        """Let the vLLM engine free its memory for the update."""
        if isinstance(self.generator, VLLMGenerator):
            self.generator.sleep()

    def sync_rollout_weights(self) -> None:
        """Give the rollout backend the student's new weights (a replica, or the vLLM engine)."""
        if isinstance(self.generator, VLLMGenerator):
            self.generator.sync_weights()
            return
        if self.generator.model is self.model:
            return
        load_full_state_dict(self.generator.model, full_state_dict(self.model, self.dist))

    def weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the student: the full state, or the LoRA adapter only (the frozen
        base weights come from ``model.name``)."""
        if self.lora:
            return {n: p.detach().cpu() for n, p in self.model.named_parameters() if "lora_" in n}
        return full_state_dict(self.model, self.dist)

    @torch.no_grad()
    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.lora:
            load_adapters(self.model, tensors)
        else:
            load_full_state_dict(self.model, tensors)
