"""The update: from samples with learning targets to new weights, the same for every algorithm.

:meth:`Learner.update` splits the samples into mini-batches (one by default: on-policy) and each
into micro-batches by a token budget; for each micro-batch it computes the student's hidden states
with gradient and, when there is a distillation term, the teacher's without, then the per-token
terms chunk by chunk over the response tokens (:func:`resd.losses.token_terms`) and the objective
(:func:`resd.losses.objective`). It then clips, steps AdamW on float32 masters (skipped when the
gradient is not finite), steps the learning-rate schedule and updates the teacher.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from resd.config import Config
from resd.distributed import DistInfo, reshard
from resd.losses import DistillationSpec, ObjectiveSpec, objective, token_terms, token_weights
from resd.losses.distillation import fused_token_loss
from resd.models import chat_prompt_ids
from resd.sample import Sample
from resd.teacher import Teacher
from resd.trainer.forward import PackedRows, RowsCost, lm_head, logits_fn, pack_rows, response_hidden
from resd.trainer.optim import MasterWeightAdamW, warmup_lambda
from resd.trainer.policy import Policy

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced non-finite gradients too many steps in a row."""


class Learner:
    """Optimizer, learning-rate schedule and self-teacher of a policy, and the update rule."""

    def __init__(self, config: Config, policy: Policy, dist: DistInfo, pg_weight: float, total_steps: int) -> None:
        cfg = config
        self.config = config
        self.policy = policy
        self.dist = dist
        self.pg_weight = pg_weight
        # (with FSDP two forwards of the root module before a backward are left untried; recomputing a
        # checkpointed layer would append to the prefix's cache a second time)
        self.share_prefix = (cfg.train.share_prefix and not dist.enabled
                             and not any(getattr(m, "gradient_checkpointing", False) is True
                                         for m in policy.model.modules()))
        self.teacher: Teacher | None = None
        if pg_weight < 1.0:
            self.teacher = Teacher(policy.model, cfg.teacher.kind, cfg.teacher.update_rate, lora=policy.lora,
                                   offload=cfg.teacher.offload and not dist.enabled, memory=cfg.train.memory,
                                   seed=cfg.seed)
        if dist.enabled:
            if self.teacher is not None and cfg.teacher.kind not in ("ema", "frozen"):
                raise ValueError(f"teacher.kind={cfg.teacher.kind} is not supported with several processes (use ema or frozen)")
            policy.shard()
            if self.teacher is not None:
                compute = policy.compute_dtype
                from resd.distributed import shard_model

                shard_model(self.teacher.module, dist, compute if compute != torch.float32 else None,
                            offload=cfg.teacher.offload)
        self.spec = (DistillationSpec(cfg.loss.alpha, cfg.loss.topk, cfg.loss.add_tail, cfg.loss.full_logit,
                                      cfg.loss.teacher_min_ratio, cfg.loss.teacher_max_ratio)
                     if self.teacher is not None else None)
        self.objective = ObjectiveSpec(pg_weight, cfg.loss.is_clip, cfg.train.rollout_is_threshold, cfg.loss.clip_low,
                                       cfg.loss.clip_high, cfg.loss.dual_clip)
        trainable = [(n, p) for n, p in policy.model.named_parameters() if p.requires_grad]
        self.optimizer = MasterWeightAdamW(trainable, cfg.train.lr, tuple(cfg.train.betas), cfg.train.weight_decay,
                                           memory=cfg.train.memory, seed=cfg.seed)
        per_step = math.ceil(cfg.train.batch_size / (cfg.train.mini_batch_size or cfg.train.batch_size))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer, warmup_lambda(cfg.train.warmup_steps, total_steps * per_step, cfg.train.lr_schedule)
        )
        self.nonfinite_in_a_row = 0
        self.step = 0  # for messages: the training step being made

    @property
    def model(self) -> torch.nn.Module:
        return self.policy.model

    # ------------------------------------------------------------------ inputs
    def tokenize_teacher_prompts(self, samples: list[Sample]) -> dict[str, float]:
        """Tokenize the teacher contexts the algorithm built (``reprompt.max_reprompt_len``)."""
        cfg = self.config.reprompt
        truncated = 0
        for s in samples:
            if s.teacher_messages is None:
                continue
            s.teacher_ids, cut = chat_prompt_ids(self.policy.tokenizer, s.teacher_messages, cfg.max_reprompt_len,
                                                 cfg.reprompt_truncation, self.config.model.chat_template_kwargs)
            truncated += cut
        return {"self_distillation/teacher_prompt_truncated": float(truncated)} if self.teacher is not None else {}

    def _mini_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        cfg = self.config.train
        per_mini = (cfg.mini_batch_size or cfg.batch_size) * self.config.rollout.n
        return [samples[i : i + per_mini] for i in range(0, len(samples), per_mini)]

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

    def _micro_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        """Consecutive samples whose forwards (student, teacher) each compute at most
        ``train.micro_batch_tokens`` tokens; a shared prefix counts once (:class:`RowsCost`)."""
        budget = self.config.train.micro_batch_tokens
        empty = [RowsCost(self.share_prefix)] * 2
        batches: list[list[Sample]] = []
        current: list[Sample] = []
        costs = empty
        for s in samples:
            contexts = (s.prompt_ids, s.teacher_ids or s.prompt_ids)
            grown = [c.add(ctx, s.response_ids) for c, ctx in zip(costs, contexts, strict=True)]
            if current and max(c.tokens for c in grown) > budget:
                batches.append(current)
                current = []
                grown = [c.add(ctx, s.response_ids) for c, ctx in zip(empty, contexts, strict=True)]
            current.append(s)
            costs = grown
        if current:
            batches.append(current)
        return batches

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

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def _old_logprobs(self, samples: list[Sample]) -> None:
        """Log-probs of the policy before this step's updates (only needed off-policy)."""
        model = self.model
        head = lm_head(model)
        device = self.policy.device
        for micro, dummy in self._local_micro_batches(samples):
            rows = pack_rows([s.prompt_ids for s in micro], [s.response_ids for s in micro], self.policy.generator.pad_id,
                             self.share_prefix)
            hidden = response_hidden(model, rows)
            if dummy:
                continue
            ids = torch.tensor([t for s in micro for t in s.response_ids], device=device)
            logp, _ = token_terms(logits_fn([(head, hidden, 1.0)], self.config.rollout.temperature), None, ids, None,
                                  self.config.train.loss_chunk_size, recompute=False)
            start = 0
            for s in micro:
                s.extra["old_logprobs"] = logp[start : start + len(s.response_ids)].cpu()
                start += len(s.response_ids)
        reshard(model)
        if self.dist.enabled:  # every rank needs the old log-probs of the samples it trains on
            gathered = self.dist.all_gather({i: s.extra.get("old_logprobs") for i, s in enumerate(samples)
                                             if "old_logprobs" in s.extra})
            for part in gathered:
                for index, value in part.items():
                    samples[index].extra["old_logprobs"] = value

    def _micro_loss(self, micro: list[Sample], w_sd: list[torch.Tensor], w_pg: list[torch.Tensor], off_policy: bool):
        cfg = self.config
        temperature = cfg.rollout.temperature
        pad = self.policy.generator.pad_id
        dev = self.policy.device
        responses = [s.response_ids for s in micro]
        hidden = response_hidden(self.model, pack_rows([s.prompt_ids for s in micro], responses, pad, self.share_prefix))
        teacher_fn = None
        if self.teacher is not None:
            with torch.no_grad():
                trows: PackedRows = pack_rows([s.teacher_ids for s in micro], responses, pad, self.share_prefix)
                pairs = []
                for m, w, adapter in self.teacher.passes():
                    with adapter:
                        pairs.append((lm_head(m), response_hidden(m, trows), w))
            teacher_fn = logits_fn(pairs, temperature)
        ids = torch.tensor([t for r in responses for t in r], device=dev)
        old = None
        if off_policy:  # (a dummy micro-batch may lack them; its weights are zero)
            old = torch.cat([s.extra.get("old_logprobs", torch.zeros(len(s.response_ids))) for s in micro]).to(dev)
        rollout = None
        if cfg.train.rollout_is_threshold is not None and all(s.rollout_logprobs is not None for s in micro):
            rollout = torch.tensor([x for s in micro for x in s.rollout_logprobs], device=dev)
        advantages = torch.cat([torch.full((len(s.response_ids),), s.advantage) for s in micro]).to(dev)
        w_sd_t, w_pg_t = torch.cat(w_sd).to(dev), torch.cat(w_pg).to(dev)

        stats: dict[str, float] = {}

        def chunk_loss(logp: torch.Tensor, div: torch.Tensor | None, rows: slice) -> torch.Tensor:
            loss, part = objective(logp, div, old=None if old is None else old[rows],
                                   rollout_logprobs=None if rollout is None else rollout[rows],
                                   advantages=advantages[rows], w_sd=w_sd_t[rows], w_pg=w_pg_t[rows],
                                   spec=self.objective)
            for key, value in part.items():  # every statistic of the objective is a sum over tokens
                stats[key] = stats.get(key, 0.0) + value
            return loss

        # the head's gradient is formed chunk by chunk in the forward (no recompute in the backward)
        loss, logp, div = fused_token_loss(hidden, lm_head(self.model), teacher_fn, ids, self.spec, chunk_loss,
                                           cfg.train.loss_chunk_size, temperature)
        if not stats:  # no response tokens: no chunk ran, the statistics still need their names
            _, stats = objective(logp, div, old=old, rollout_logprobs=rollout, advantages=advantages,
                                 w_sd=w_sd_t, w_pg=w_pg_t, spec=self.objective)
        stats["samples"] = float(len(micro))
        return loss, stats

    # ------------------------------------------------------------------ the update
    def update(self, samples: list[Sample]) -> dict[str, float]:
        """Mini-batch updates on the samples; returns metrics averaged over the mini-batches."""
        cfg = self.config
        minis = self._mini_batches(samples)
        off_policy = len(minis) > 1
        if off_policy:
            self._old_logprobs(samples)
        totals: dict[str, float] = {}
        grad_norms, skipped = [], 0
        self.policy.before_update()
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
            self.policy.sync_rollout_weights()
        totals = self.dist.all_reduce_sum(totals)
        return self._metrics(totals, grad_norms, skipped, len(minis))

    def _metrics(self, totals: dict[str, float], grad_norms: list[float], skipped: int, n_minis: int) -> dict[str, float]:
        n_mini = max(1, n_minis)
        metrics = {
            "actor/grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "actor/lr": float(self.scheduler.get_last_lr()[0]),
            "actor/nonfinite_steps": float(skipped),
            "actor/optimizer_steps": float(n_minis - skipped),
            "actor/update_samples": totals.get("samples", 0.0),
        }
        if totals.get("tokens", 0.0) > 0:
            metrics["actor/tis_mean"] = totals["tis_sum"] / totals["tokens"]
        if self.pg_weight < 1.0:
            tokens = max(1.0, totals.get("div_tokens", 0.0))
            metrics["loss/distill"] = totals.get("distill", 0.0) / n_mini
            metrics["self_distillation/divergence_mean"] = totals.get("div_sum", 0.0) / tokens
            metrics["self_distillation/is_ratio_mean"] = totals.get("ratio_sum", 0.0) / tokens
        if self.pg_weight > 0.0:
            metrics["loss/pg"] = totals.get("pg", 0.0) / n_mini
            metrics["actor/pg_clip_fraction"] = totals.get("clipped", 0.0) / max(1.0, totals.get("tokens", 0.0))
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The student's and the teacher's weights, as a checkpoint keeps them."""
        from resd.distributed import full_state_dict

        tensors = {"student": self.policy.weights()}
        if self.teacher is not None and (self.teacher.module is not None or self.teacher.adapter):
            tensors["teacher"] = (full_state_dict(self.teacher.module, self.dist) if self.dist.enabled
                                  else self.teacher.state_dict())
        return tensors

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        from resd.distributed import load_full_state_dict

        self.policy.load_weights(tensors["student"])
        if self.teacher is not None and "teacher" in tensors:
            if self.dist.enabled:
                load_full_state_dict(self.teacher.module, tensors["teacher"])
            else:
                self.teacher.load_state_dict(tensors["teacher"])

    def optimizer_state(self) -> dict:
        if self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = {"optimizer": get_optimizer_state_dict(self.model, self.optimizer.optimizer, options=options)}
        else:
            state = self.optimizer.state_dict()
        return {"optimizer": state, "scheduler": self.scheduler.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        if self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer.optimizer, state["optimizer"]["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
