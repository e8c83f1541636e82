"""The training loop: prompts -> rollouts -> rewards and feedback -> teacher contexts -> loss -> update.

One :meth:`Trainer.train_step`:
  1. take ``batch_size`` prompts, sample ``n`` responses each (the rollout backend);
  2. score them with the environment (reward, accuracy, feedback);
  3. build each sample's teacher context (:meth:`build_teacher_contexts`; SDPO's reprompting here,
     RESD's richer prompt in a subclass) and tokenize it with the chat template;
  4. split into mini-batches (one by default: on-policy) and micro-batches by a token budget; for
     each micro-batch compute student hidden states with grad and teacher hidden states without,
     then the loss chunk by chunk over the response tokens;
  5. clip, step AdamW (skipped when the gradient is not finite), step the schedule, update the
     teacher.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from resd import envs
from resd.config import Config
from resd.context.reprompt import RepromptConfig, build_teacher_contexts
from resd.distributed import (
    CollectiveError,
    full_state_dict,
    init_distributed,
    is_collective_failure,
    load_full_state_dict,
    reshard,
    resolve_device,
    shard_model,
)
from resd.envs.base import Feedback
from resd.fileio import atomic_write_text
from resd.losses import DistillationSpec, group_advantages, is_ratio, ppo_clip_token_loss, token_terms, token_weights
from resd.models import DTYPES, chat_prompt_ids, load_model, load_tokenizer
from resd.models.loading import contiguous_head_input
from resd.models.lora import apply_lora, load_adapters
from resd.rollout.vllm import VLLMGenerator
from resd.rollout import HFGenerator, SamplingParams
from resd.rollout.base import mix_seed
from resd.teacher import Teacher
from resd.trainer.checkpoint import latest_valid, load_checkpoint, save_checkpoint
from resd.trainer.data_stream import DataStream
from resd.trainer.forward import PackedRows, lm_head, logits_fn, pack_rows, response_hidden
from resd.trainer.optim import MasterWeightAdamW, warmup_lambda
from resd.trainer.run_logger import RunLogger

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced non-finite gradients too many steps in a row."""


@dataclasses.dataclass
class Sample:
    """One rollout and everything computed about it during a step."""

    example: dict[str, Any]
    group: int
    prompt_messages: list[dict[str, str]]
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float] | None
    finished: bool
    text: str = ""
    feedback: Feedback | None = None
    teacher_messages: list[dict[str, str]] | None = None
    teacher_ids: list[int] | None = None
    sd_mask: bool = False
    advantage: float = 0.0
    seq_weight: float = 1.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])


class Trainer:
    """Trains a policy with ``grpo`` or ``sdpo`` (and, in subclasses, ``resd``) from a :class:`Config`.

    ``model``, ``tokenizer``, ``env`` and ``train_rows`` may be passed in (tests, notebooks,
    test-time solving); otherwise they are built from the config.
    """

    def __init__(self, config: Config, *, model=None, tokenizer=None, env=None, run_dir: str | Path | None = None,
                 train_rows: list[dict[str, Any]] | None = None) -> None:
        self.config = cfg = config
        self.dist = init_distributed(cfg.dist.timeout_s)
        seed_everything(cfg.seed)
        self.tokenizer = tokenizer or load_tokenizer(cfg.model.tokenizer or cfg.model.name)
        # Sharded training keeps float32 parameters and computes in the configured precision.
        load_precision = "fp32" if self.dist.enabled else cfg.model.precision
        self.model = model or load_model(cfg.model.name, load_precision, self.tokenizer, tiny=cfg.model.tiny)
        contiguous_head_input(self.model)  # (models passed in were not loaded by load_model)
        self.device = resolve_device(cfg.model.device, self.dist)
        if not self.dist.enabled:  # FSDP2 places the shards itself
            self.model.to(self.device)
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora = cfg.model.lora.enabled
        if self.lora:
            if self.dist.enabled:
                raise ValueError("model.lora is not supported with several processes yet (train LoRA on one process)")
            lc = cfg.model.lora
            self.model = apply_lora(self.model, lc.r, lc.alpha, lc.dropout, lc.target_modules)
        self.model.train()
        self.env = env or envs.load(cfg.data.env, **cfg.data.env_kwargs)
        if train_rows is None:
            train_rows = self.env.load_split(cfg.data.train_split, cfg.data.train_path, cfg.data.train_limit)
        self.data = DataStream(train_rows, seed=cfg.seed, shuffle=cfg.data.shuffle, single_pass=self.single_pass)

        self.uses_teacher = cfg.algorithm != "grpo" and cfg.loss.pg_weight < 1.0
        self.pg_weight = 1.0 if cfg.algorithm == "grpo" else cfg.loss.pg_weight
        self.teacher = (Teacher(self.model, cfg.teacher.kind, cfg.teacher.update_rate, lora=self.lora,
                                offload=cfg.teacher.offload and not self.dist.enabled)
                        if self.uses_teacher else None)
        rollout_model = self.model
        if self.dist.enabled:
            if self.teacher is not None and cfg.teacher.kind not in ("ema", "frozen"):
                raise ValueError(f"teacher.kind={cfg.teacher.kind} is not supported with several processes (use ema or frozen)")
            compute = DTYPES[cfg.model.precision]
            if cfg.rollout.backend == "hf":  # HF generation uses an unsharded replica synced after each step
                rollout_model = copy.deepcopy(self.model).to(self.device, compute).requires_grad_(False)
            param_dtype = compute if compute != torch.float32 else None
            shard_model(self.model, self.dist, param_dtype)
            if self.teacher is not None:
                shard_model(self.teacher.module, self.dist, param_dtype, offload=cfg.teacher.offload)
            local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in self.model.parameters())
            total = sum(p.numel() for p in self.model.parameters())
            log.info("FSDP2 sharding active: rank %d of %d holds %d of %d parameter elements",
                     self.dist.rank, self.dist.world, local, total)
        self.spec = (
            DistillationSpec(cfg.loss.alpha, cfg.loss.topk, cfg.loss.add_tail, cfg.loss.full_logit,
                             cfg.loss.teacher_min_ratio, cfg.loss.teacher_max_ratio)
            if self.uses_teacher else None
        )
        self.reprompt = RepromptConfig(
            **{f.name: getattr(cfg.reprompt, f.name) for f in dataclasses.fields(RepromptConfig)}
        )
        if cfg.algorithm == "sdpo+ss":  # SDPO whose own success may be its demonstration
            self.reprompt = dataclasses.replace(self.reprompt, dont_reprompt_on_self_success=False)
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = MasterWeightAdamW(trainable, cfg.train.lr, tuple(cfg.train.betas), cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer, warmup_lambda(cfg.train.warmup_steps, self.total_optimizer_steps(), cfg.train.lr_schedule)
        )
        if cfg.rollout.backend == "vllm":
            self.generator = self._vllm_generator()
        else:
            self.generator = HFGenerator(rollout_model, self.tokenizer, cfg.rollout.batch_size,
                                         record_logprobs=cfg.train.rollout_is_threshold is not None)
        self.sampling = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k, cfg.rollout.max_new_tokens)

        self.step = 0
        self._seed_step, self._seed_calls = -1, 0
        self.best: dict[str, Any] | None = None  # {"step", "metric", "value"} of the best validation
        self._val_rows: list[dict[str, Any]] | None = None
        self.rollouts_seen = 0
        self._last_val_rollouts = 0
        self._last_val_step = -1
        self.nonfinite_in_a_row = 0
        self.elapsed = 0.0
        self.stop_requested = False
        default_dir = Path("runs") / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
        self.run_dir = Path(run_dir or cfg.logging.run_dir or self.dist.all_gather(str(default_dir))[0])
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.dist.barrier()
        self.logger = RunLogger(self.run_dir, cfg.to_dict(), main and cfg.logging.wandb, main and cfg.logging.tensorboard,
                                main and cfg.logging.trackio, cfg.logging.project, cfg.name, enabled=main)

    # ------------------------------------------------------------------ hooks for subclasses
    single_pass = False

    def total_optimizer_steps(self) -> int:
        cfg = self.config.train
        return cfg.steps * math.ceil(cfg.batch_size / (cfg.mini_batch_size or cfg.batch_size))

    def build_teacher_contexts(self, samples: list[Sample]) -> dict[str, float]:
        """Fill ``teacher_messages`` and ``sd_mask`` of every sample (SDPO reprompting)."""
        contexts, metrics = build_teacher_contexts(
            [s.prompt_messages for s in samples],
            [s.text for s in samples],
            [s.feedback.score for s in samples],
            [s.feedback.feedback for s in samples],
            [s.group for s in samples],
            self.reprompt,
        )
        for sample, ctx in zip(samples, contexts, strict=True):
            sample.teacher_messages = ctx.messages
            sample.sd_mask = ctx.sd_mask
        return metrics

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state of subclasses (playbook, buffer) saved in checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # ------------------------------------------------------------------ rollouts
    def seeds(self, purpose: str, count: int) -> list[int] | None:
        """Per-sequence sampling seeds for this step (None: the global RNG, when rollout.seeded is off).

        Each call within a step gets fresh seeds; a resumed run replays the same calls.
        """
        if not self.config.rollout.seeded:
            return None
        if self._seed_step != self.step:
            self._seed_step, self._seed_calls = self.step, 0
        self._seed_calls += 1
        return [mix_seed(self.config.seed, self.step, purpose, self._seed_calls, i) for i in range(count)]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        """Tokenized student prompt, or None when it is too long and the policy is ``drop``."""
        cfg = self.config.data
        mode = {"drop": "error", "truncate": "left", "error": "error"}[cfg.prompt_overflow]
        try:
            ids, _ = chat_prompt_ids(self.tokenizer, messages, cfg.max_prompt_length, mode, self.config.model.chat_template_kwargs)
        except ValueError:
            if cfg.prompt_overflow == "drop":
                return None
            raise
        return ids

    def collect(self, examples: list[dict[str, Any]]) -> tuple[list[Sample], dict[str, float]]:
        """Sample ``n`` responses per example and score them."""
        prompts, kept, dropped = [], [], 0
        for example in examples:
            messages = self.env.prompt_messages(example)
            ids = self.prompt_ids(messages)
            if ids is None:
                dropped += 1
                continue
            prompts.append((example, messages, ids))
        t0 = time.perf_counter()
        # Each rank samples its share of the prompts; per-sequence seeds make the result the same
        # as one process sampling everything.
        share = self.dist.share(len(prompts))
        seeds = self.seeds("rollout", len(prompts))
        mine = prompts[share]
        rollouts = self.generator.generate([p[2] for p in mine], self.config.rollout.n, self.sampling,
                                           seeds[share] if seeds is not None else None) if mine else []
        t1 = time.perf_counter()
        for r in rollouts:
            index = share.start + r.prompt_index
            example, messages, ids = prompts[index]
            kept.append(Sample(example, index, messages, ids, r.response_ids, r.logprobs, r.finished))
        texts = self.tokenizer.batch_decode([s.response_ids for s in kept], skip_special_tokens=True) if kept else []
        feedbacks = self.env.score_batch(texts, [s.example for s in kept], [not s.finished for s in kept],
                                         workers=self.config.data.score_workers, timeout_s=self.config.data.score_timeout_s)
        for sample, text, fb in zip(kept, texts, feedbacks, strict=True):
            sample.text, sample.feedback = text, fb
        if self.dist.enabled:
            kept = [s for part in self.dist.all_gather(kept) for s in part]
        t2 = time.perf_counter()
        lengths = [len(s.response_ids) for s in kept] or [0]
        metrics = {
            "reward/mean": float(np.mean([s.feedback.score for s in kept])) if kept else 0.0,
            "acc/mean": float(np.mean([s.feedback.acc for s in kept])) if kept else 0.0,
            # successes (score >= reprompt.success_reward_threshold) / samples
            "reward/success_fraction": float(np.mean([s.feedback.score >= self.config.reprompt.success_reward_threshold
                                                      for s in kept])) if kept else 0.0,
            "response_length/mean": float(np.mean(lengths)),
            "response_length/max": float(max(lengths)),
            "response_length/truncated_fraction": float(np.mean([not s.finished for s in kept])) if kept else 0.0,
            "data/prompts_dropped": float(dropped),
            "time/rollout_s": t1 - t0,
            "time/score_s": t2 - t1,
        }
        return kept, metrics

    def tokenize_teacher_prompts(self, samples: list[Sample]) -> dict[str, float]:
        cfg = self.config.reprompt
        truncated = 0
        for s in samples:
            if s.teacher_messages is None:
                continue
            s.teacher_ids, cut = chat_prompt_ids(
                self.tokenizer, s.teacher_messages, cfg.max_reprompt_len, cfg.reprompt_truncation, self.config.model.chat_template_kwargs
            )
            truncated += cut
        return {"self_distillation/teacher_prompt_truncated": float(truncated)}

    # ------------------------------------------------------------------ update
    def _mini_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        cfg = self.config.train
        per_mini = (cfg.mini_batch_size or cfg.batch_size) * self.config.rollout.n
        return [samples[i : i + per_mini] for i in range(0, len(samples), per_mini)]

    def _local_micro_batches(self, mini: list[Sample]) -> list[tuple[list[Sample], bool]]:
        """This rank's micro-batches of a mini-batch as ``(samples, is_dummy)``.

        In a single process: all samples that carry a loss. With several ranks each takes its
        contiguous share, and ranks with fewer micro-batches run zero-weight dummies so that every
        rank makes the same FSDP calls.
        """
        active = [s for s in mini[self.dist.share(len(mini))] if self._carries_loss(s)]
        micros = [(m, False) for m in self._micro_batches(active)]
        if self.dist.enabled:
            target = self.dist.all_reduce_max(len(micros))
            micros += [([mini[0]], True)] * (target - len(micros))
        return micros

    def _carries_loss(self, s: Sample) -> bool:
        """Whether a sample adds to the loss: a distillation target, or a non-zero advantage.

        A zero advantage gives a policy-gradient term and gradient of exactly zero, and the token
        weights are normalized over the whole mini-batch before it is split, so leaving such a
        sample out changes nothing but the time (GRPO groups whose rollouts all got the same
        reward are common when a task is too hard or too easy).
        """
        if self.pg_weight < 1.0 and s.sd_mask:
            return True
        return self.pg_weight > 0.0 and (s.advantage != 0.0 or not self.config.train.skip_zero_advantage)

    def _vllm_generator(self):
        from resd.models.loading import resolve_model_path

        cfg = self.config
        if cfg.model.name == "tiny":
            raise ValueError("rollout.backend=vllm needs a checkpoint on disk, not model.name=tiny")
        dtype = {"bf16": "bfloat16", "fp32": "float32"}[cfg.model.precision]
        weights = (lambda: full_state_dict(self.model, self.dist).items()) if self.dist.enabled else None
        return VLLMGenerator(self.model, self.tokenizer, resolve_model_path(cfg.model.name), dtype, cfg.rollout.vllm,
                             cfg.rollout.vllm_sleep_level, weights_fn=weights)

    def sync_rollout_weights(self) -> None:
        """Give the rollout backend the student's new weights (a replica, or the vLLM engine)."""
        if isinstance(self.generator, VLLMGenerator):
            self.generator.sync_weights()
            return
        if self.generator.model is self.model:
            return
        load_full_state_dict(self.generator.model, full_state_dict(self.model, self.dist))

    def _micro_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        budget = self.config.train.micro_batch_tokens
        batches: list[list[Sample]] = []
        current: list[Sample] = []
        width = 0
        for s in samples:
            length = len(s.response_ids) + max(len(s.prompt_ids), len(s.teacher_ids or ()))
            if current and (len(current) + 1) * max(width, length) > budget:
                batches.append(current)
                current, width = [], 0
            current.append(s)
            width = max(width, length)
        if current:
            batches.append(current)
        return batches

    @torch.no_grad()
    def _old_logprobs(self, samples: list[Sample]) -> None:
        """Log-probs of the policy before this step's updates (only needed off-policy)."""
        head = lm_head(self.model)
        micros = self._local_micro_batches(samples)
        for micro, dummy in micros:
            rows = pack_rows([s.prompt_ids for s in micro], [s.response_ids for s in micro], self.generator.pad_id)
            hidden = response_hidden(self.model, rows)
            if dummy:
                continue
            ids = torch.tensor([t for s in micro for t in s.response_ids], device=self.device)
            logp, _ = token_terms(logits_fn([(head, hidden, 1.0)], self.config.rollout.temperature), None, ids, None,
                                  self.config.train.loss_chunk_size, recompute=False)
            start = 0
            for s in micro:
                s.extra["old_logprobs"] = logp[start : start + len(s.response_ids)].cpu()
                start += len(s.response_ids)
        reshard(self.model)
        if self.dist.enabled:  # every rank needs the old log-probs of the samples it trains on
            gathered = self.dist.all_gather({id_: s.extra.get("old_logprobs") for id_, s in enumerate(samples)
                                             if "old_logprobs" in s.extra})
            for part in gathered:
                for index, value in part.items():
                    samples[index].extra["old_logprobs"] = value

    def _micro_loss(self, micro: list[Sample], w_sd: list[torch.Tensor], w_pg: list[torch.Tensor], off_policy: bool):
        cfg = self.config
        temperature = cfg.rollout.temperature
        pad = self.generator.pad_id
        responses = [s.response_ids for s in micro]
        rows = pack_rows([s.prompt_ids for s in micro], responses, pad)
        hidden = response_hidden(self.model, rows)
        student_fn = logits_fn([(lm_head(self.model), hidden, 1.0)], temperature)
        teacher_fn = None
        if self.pg_weight < 1.0:
            with torch.no_grad():
                trows: PackedRows = pack_rows([s.teacher_ids for s in micro], responses, pad)
                pairs = []
                for m, w, adapter in self.teacher.passes():
                    with adapter:
                        pairs.append((lm_head(m), response_hidden(m, trows), w))
            teacher_fn = logits_fn(pairs, temperature)
        dev = self.device
        ids = torch.tensor([t for r in responses for t in r], device=dev)
        logp, div = token_terms(student_fn, teacher_fn, ids, self.spec, cfg.train.loss_chunk_size)

        if off_policy:  # (a dummy micro-batch may lack them; its weights are zero)
            old = torch.cat([s.extra.get("old_logprobs", torch.zeros(len(s.response_ids))) for s in micro]).to(dev)
        else:
            old = logp.detach()
        tis = torch.ones_like(logp)
        if cfg.train.rollout_is_threshold is not None and all(s.rollout_logprobs is not None for s in micro):
            rollout = torch.tensor([x for s in micro for x in s.rollout_logprobs], device=dev)
            tis = torch.exp((old - rollout).clamp(-20, 20)).clamp(max=cfg.train.rollout_is_threshold)
        loss = logp.new_zeros(())
        stats: dict[str, float] = {}
        if self.pg_weight < 1.0:
            weights = torch.cat(w_sd).to(dev)
            ratio = is_ratio(logp, old if off_policy else None, cfg.loss.is_clip)
            distill = (weights * ratio * tis * div).sum()
            loss = loss + (1.0 - self.pg_weight) * distill
            on = weights > 0
            stats.update(distill=float(distill.detach()), div_sum=float(div.detach()[on].sum()), div_tokens=float(on.sum()),
                         ratio_sum=float(ratio[on].sum()))
        if self.pg_weight > 0.0:
            adv = torch.cat([torch.full((len(s.response_ids),), s.advantage) for s in micro]).to(dev)
            per_tok, clipped = ppo_clip_token_loss(logp, old, adv, cfg.loss.clip_low, cfg.loss.clip_high, cfg.loss.dual_clip)
            pg = (torch.cat(w_pg).to(dev) * tis * per_tok).sum()
            loss = loss + self.pg_weight * pg
            stats.update(pg=float(pg.detach()), clipped=float(clipped.sum()))
        stats.update(tis_sum=float(tis.sum()), tokens=float(ids.numel()), samples=float(len(micro)))
        return loss, stats

    def optimize(self, samples: list[Sample]) -> dict[str, float]:
        """Mini-batch updates on the collected samples; returns averaged metrics."""
        cfg = self.config
        minis = self._mini_batches(samples)
        off_policy = len(minis) > 1
        if off_policy:
            self._old_logprobs(samples)
        totals: dict[str, float] = {}
        grad_norms, skipped = [], 0
        if isinstance(self.generator, VLLMGenerator):  # the engine frees its memory for the update
            self.generator.sleep()
        for mini in minis:
            self.optimizer.zero_grad()
            lengths = [len(s.response_ids) for s in mini]
            width = max(lengths)
            resp_mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
            sd = torch.tensor([float(s.sd_mask) for s in mini])[:, None]
            seq_w = torch.tensor([s.seq_weight for s in mini])
            wsd = token_weights(resp_mask * sd, seq_w, cfg.loss.aggregation)
            wpg = token_weights(resp_mask, None, cfg.loss.pg_aggregation, norm_length=cfg.rollout.max_new_tokens)
            index = {id(s): i for i, s in enumerate(mini)}
            micros = self._local_micro_batches(mini)
            if not micros:  # no sample carries a loss on any rank: step as on the zero gradient of a zero loss
                self.optimizer.fill_zero_grads()
            for micro, dummy in micros:
                rows = [index[id(s)] for s in micro]
                zero = [torch.zeros(lengths[r]) for r in rows]
                loss, stats = self._micro_loss(
                    micro, zero if dummy else [wsd[r, : lengths[r]] for r in rows],
                    zero if dummy else [wpg[r, : lengths[r]] for r in rows], off_policy
                )
                if self.teacher is not None and self.teacher.module is not None:
                    reshard(self.teacher.module)
                # the weights are normalized over the whole mini-batch and FSDP averages over
                # ranks, so scaling by the world size makes the step the sum over all samples
                (loss * self.dist.world).backward()
                if not dummy:
                    for k, v in stats.items():
                        totals[k] = totals.get(k, 0.0) + v
            norm = self.optimizer.clip_and_check(cfg.train.grad_clip)
            grad_norms.append(norm)
            if math.isfinite(norm):
                self.optimizer.step()
                self.scheduler.step()
                if self.teacher is not None:
                    self.teacher.update(self.optimizer.master_state())
                self.nonfinite_in_a_row = 0
            else:
                skipped += 1
                self.nonfinite_in_a_row += 1
                log.warning("step %d: non-finite gradient norm, optimizer step and teacher update skipped", self.step)
                if self.nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                    raise NonFiniteError(
                        f"{self.nonfinite_in_a_row} optimizer steps in a row had non-finite gradients; stopping"
                    )
        self.optimizer.zero_grad()
        if skipped < len(minis):
            self.sync_rollout_weights()
        totals = self.dist.all_reduce_sum(totals)
        n_mini = max(1, len(minis))
        metrics = {
            "actor/grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "actor/lr": float(self.scheduler.get_last_lr()[0]),
            "actor/nonfinite_steps": float(skipped),
            "actor/optimizer_steps": float(len(minis) - skipped),
            "actor/update_samples": totals.get("samples", 0.0),
        }
        if totals.get("tokens", 0.0) > 0:
            metrics["actor/tis_mean"] = totals["tis_sum"] / totals["tokens"]
        if self.pg_weight < 1.0:
            metrics["loss/distill"] = totals.get("distill", 0.0) / n_mini
            metrics["self_distillation/divergence_mean"] = totals.get("div_sum", 0.0) / max(1.0, totals.get("div_tokens", 0.0))
            metrics["self_distillation/is_ratio_mean"] = totals.get("ratio_sum", 0.0) / max(1.0, totals.get("div_tokens", 0.0))
        if self.pg_weight > 0.0:
            metrics["loss/pg"] = totals.get("pg", 0.0) / n_mini
            metrics["actor/pg_clip_fraction"] = totals.get("clipped", 0.0) / max(1.0, totals.get("tokens", 0.0))
        return metrics

    # ------------------------------------------------------------------ one step, the loop
    def prepare_update(self, samples: list[Sample]) -> dict[str, float]:
        """Teacher contexts and advantages for the collected samples."""
        metrics: dict[str, float] = {}
        if self.pg_weight > 0.0:
            adv = group_advantages(torch.tensor([s.feedback.score for s in samples]), [s.group for s in samples],
                                   self.config.loss.norm_adv_by_std)
            for s, a in zip(samples, adv.tolist(), strict=True):
                s.advantage = a
        if self.uses_teacher:
            metrics.update(self.build_teacher_contexts(samples))
            metrics.update(self.tokenize_teacher_prompts(samples))
        return metrics

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        examples = self.data.next_batch(self.config.train.batch_size)
        samples, metrics = self.collect(examples)
        metrics.update(self.prepare_update(samples))
        t1 = time.perf_counter()
        if samples:
            metrics.update(self.optimize(samples))
        metrics["time/update_s"] = time.perf_counter() - t1
        self.step += 1
        self.rollouts_seen += len(samples)
        self.elapsed += time.perf_counter() - t0
        metrics.update({"time/step_s": time.perf_counter() - t0, "progress/rollouts": float(self.rollouts_seen),
                        "progress/elapsed_s": self.elapsed})
        self.logger.log_samples(self.step, [self.sample_record(s) for s in samples[: self.config.logging.samples_per_step]])
        return metrics

    def sample_record(self, s: Sample) -> dict[str, Any]:
        return {
            "example_id": self.env.example_id(s.example) if s.example else None,
            "prompt": s.prompt_messages[-1]["content"],
            "response": s.text,
            "score": s.feedback.score,
            "acc": s.feedback.acc,
            "feedback": s.feedback.feedback,
            "teacher_prompt": s.teacher_messages[-1]["content"] if s.teacher_messages else None,
            "sd_mask": s.sd_mask,
            **{k: v for k, v in s.extra.items() if isinstance(v, (str, int, float, bool))},
        }

    def _install_signal_handlers(self) -> dict[int, Any]:
        def request_stop(signum, _frame):
            log.warning("received signal %d: saving a checkpoint after this step and stopping", signum)
            self.stop_requested = True

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not in the main thread
                pass
        return previous

    def planned_steps(self) -> int:
        return self.config.train.steps

    def finished(self) -> bool:
        return self.step >= self.config.train.steps or self.data.exhausted(self.config.train.batch_size)

    def after_step(self) -> None:
        """Periodic validation and checkpoints after a step."""
        every = self.config.eval.every_steps
        if every and self.step % every == 0:
            self.validate()
        every = self.config.eval.every_rollouts  # (a validation just above already moved the mark)
        if every and self.rollouts_seen // every > self._last_val_rollouts // every:
            self.validate()
        every = self.config.logging.save_every
        if every and self.step % every == 0:
            self.save()

    def train(self) -> Path:
        """Run until the planned steps (or the data, for single-pass trainers) are done. Returns the run dir."""
        cfg = self.config
        previous = self._install_signal_handlers()
        bar = tqdm(total=self.planned_steps(), initial=self.step, desc=cfg.name,
                   disable=not (cfg.logging.progress and self.dist.is_main),
                   dynamic_ncols=True)
        try:
            if cfg.eval.before_train and self.step == 0:
                self.validate()
            while not self.finished() and not self.stop_requested:
                self.dist.where = f"training step {self.step + 1}"
                metrics = self.train_step()
                if self.step % cfg.logging.log_every == 0:
                    self.logger.log(self.step, metrics)
                bar.update(1)
                loss = metrics.get("loss/distill", metrics.get("loss/pg", 0.0))
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", loss=f"{loss:.4f}")
                self.after_step()
            if cfg.logging.save_final:
                self.save()
        except Exception as e:  # FSDP's own collectives fail with the backend's bare message
            if not self.dist.enabled or isinstance(e, CollectiveError) or not is_collective_failure(e):
                raise
            raise self.dist.collective_error("inside FSDP", e) from e
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.logger.close()
        return self.run_dir

    # ------------------------------------------------------------------ validation
    def validation_rows(self) -> list[dict[str, Any]]:
        if self._val_rows is None:
            d = self.config.data
            self._val_rows = self.env.load_split(d.val_split, d.val_path, d.val_limit)
        return self._val_rows

    def validate(self) -> dict[str, float]:
        """Evaluate on the held-out split (plain prompts, ``eval`` sampling), log ``val/*`` metrics,
        write ``eval/step-N_*`` files, and checkpoint when the best metric improves."""
        from resd.evaluation import evaluate

        cfg = self.config
        e = cfg.eval
        sampling = SamplingParams(e.temperature, e.top_p, 0, e.max_new_tokens or cfg.rollout.max_new_tokens)
        self.dist.where = f"validation after step {self.step}"
        summary = None
        if self.dist.is_main:  # the replica is local: rank 0 evaluates, the others wait
            result = evaluate(self.env, self.validation_rows(), self.generator, self.tokenizer, sampling, e.k,
                              success_threshold=e.success_threshold, max_prompt_length=cfg.data.max_prompt_length,
                              chat_template_kwargs=cfg.model.chat_template_kwargs,
                              seed=mix_seed(cfg.seed, 0 if e.common_seeds else self.step, "eval") if cfg.rollout.seeded else None)
            result.write(self.run_dir / "eval", f"step-{self.step:06d}")
            summary = result.summary
        summary = self.dist.all_gather(summary)[0]
        metrics = {f"val/{k}": v for k, v in summary.items()}
        metrics.update({"progress/rollouts": float(self.rollouts_seen), "progress/elapsed_s": self.elapsed})
        self.logger.log(self.step, metrics)
        self._last_val_rollouts = self.rollouts_seen
        self._last_val_step = self.step
        name = e.best_metric if "@" in e.best_metric else f"{e.best_metric}@{e.k}"
        if name not in summary:
            raise KeyError(f"eval.best_metric {e.best_metric!r} is not a validation metric: {sorted(summary)}")
        value = summary[name]
        if self.best is None or value > self.best["value"]:
            self.best = {"step": self.step, "metric": name, "value": value}
            if e.save_best:
                self.save()
            if self.dist.is_main:
                atomic_write_text(self.run_dir / "best.json", json.dumps(self.best, indent=1))
        return metrics

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0 writes; every rank takes part in gathering the shards)."""
        self.dist.where = f"checkpoint at step {self.step}"
        if self.lora:  # single-process only; the frozen base weights come from model.name
            student = {n: p.detach().cpu() for n, p in self.model.named_parameters() if "lora_" in n}
        else:
            student = full_state_dict(self.model, self.dist)
        tensors = {"student": student}
        if self.teacher is not None and (self.teacher.module is not None or self.teacher.adapter):
            tensors["teacher"] = full_state_dict(self.teacher.module, self.dist) if self.dist.enabled else self.teacher.state_dict()
        if self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            optimizer_state = {"optimizer": get_optimizer_state_dict(self.model, self.optimizer.optimizer, options=options)}
        else:
            optimizer_state = self.optimizer.state_dict()
        path = None
        if self.dist.is_main:
            objects = {"optimizer": {"optimizer": optimizer_state, "scheduler": self.scheduler.state_dict()},
                       "rng": rng_state()}
            state = {
                "step": self.step,
                "best": self.best,
                "rollouts_seen": self.rollouts_seen,
                "elapsed": self.elapsed,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "data": self.data.state_dict(),
                "extra": self.extra_state(),
                "world_size": self.dist.world,
            }
            protect = frozenset({self.best["step"]}) if self.best else frozenset()
            path = save_checkpoint(self.checkpoint_root, self.step, tensors, objects, state, self.config.logging.keep_last,
                                   protect)
        self.dist.barrier()
        return path

    @torch.no_grad()
    def _load_weights(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        if self.lora:
            load_adapters(self.model, tensors["student"])
        else:
            load_full_state_dict(self.model, tensors["student"])
        if self.teacher is not None and "teacher" in tensors:
            if self.dist.enabled:
                load_full_state_dict(self.teacher.module, tensors["teacher"])
            else:
                self.teacher.load_state_dict(tensors["teacher"])

    def load_weights(self, path: str | Path) -> None:
        """Take the student's (and the teacher's) weights of a checkpoint, nothing else: the step, the
        optimizer and the data position stay those of this trainer (test-time training from a run)."""
        tensors, _, _ = load_checkpoint(Path(path))
        self._load_weights(tensors)
        self.sync_rollout_weights()

    @torch.no_grad()
    def resume(self, path: str | Path | None = None) -> bool:
        """Load the given checkpoint, or the newest valid one of this run. Returns False if none exists."""
        if path is None:
            found = latest_valid(self.checkpoint_root) if self.dist.is_main else None
            path = self.dist.all_gather(str(found) if found else None)[0]
        path = Path(path) if path is not None else None
        if path is None:
            self.logger.truncate_after(0)  # killed before the first checkpoint: start over cleanly
            return False
        tensors, objects, state = load_checkpoint(path)
        self._load_weights(tensors)
        if self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer.optimizer, objects["optimizer"]["optimizer"]["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(objects["optimizer"]["optimizer"])
        self.scheduler.load_state_dict(objects["optimizer"]["scheduler"])
        set_rng_state(objects["rng"])
        self.step = int(state["step"])
        self.best = state.get("best")
        self.rollouts_seen = int(state["rollouts_seen"])
        self._last_val_rollouts = self.rollouts_seen
        self.elapsed = float(state["elapsed"])
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.data.load_state_dict(state["data"])
        self.load_extra_state(state.get("extra", {}))
        self.sync_rollout_weights()
        self.logger.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return True
