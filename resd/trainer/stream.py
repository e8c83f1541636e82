"""RESD's stream trainer: one pass over the data, K inner updates per outer batch (RESD.md §1.2).

Each inner iteration (one ``train_step``, one optimizer step):
  1. rollouts for the outer batch's prompts (``rollout.n`` each; RESD uses 1);
  2. rewards and feedback;
  3. (``resd``) the context update: concise, reflect on failures, tag, curate, trim;
  4. (``resd``) successes go to the solution buffer;
  5. teacher prompts for every sample (RESD's template, or SDPO's reprompt for ``sdpo``/``sdpo+ss``);
  6. one optimizer step, then the teacher update;
  7. the early exit: after ``min_inner_steps``, stop the batch when the fraction of prompts whose
     mean score rose since the previous iteration is below ``early_exit_threshold``.
Checkpoints may fall inside an outer batch: the batch is re-drawn from its saved start position.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from resd.config import Config
from resd.context.parsing import strip_thinking
from resd.context.prompts import PROMPT_SETS
from resd.context.reprompt import split_prompt
from resd.context.solution_buffer import select_solution
from resd.context.teacher_prompt import TeacherPromptConfig, build_teacher_prompt, load_template
from resd.context.updater import ContextUpdater, UpdateItem, UpdaterConfig
from resd.fileio import atomic_write_text
from resd.losses import success_rate_weights
from resd.rollout.base import SamplingParams
from resd.rollout.text import HTTPTextGenerator, ModelTextGenerator, PolicyTextGenerator
from resd.trainer.trainer import Sample, Trainer

DEFAULT_FINAL_INSTRUCTION = "Correctly solve the original task with the above information:"


def updater_config(config: Config) -> UpdaterConfig:
    """The context updater's settings from the ``resd`` section of a run's configuration."""
    r = config.resd
    prompts = PROMPT_SETS[r.context_prompts]
    return UpdaterConfig(r.playbook_mode, r.concise_frequency, r.max_bullets, r.concise_method,
                         r.concise_after_curation, r.tag_correct_samples, r.dedup_threshold,
                         reflector_template=prompts.reflector, success_reflector_template=prompts.success_reflector,
                         curator_template=prompts.curator, max_response_chars=r.reflector.max_response_chars)


class StreamTrainer(Trainer):
    """The stream loop for ``resd`` and, for comparison, ``sdpo``, ``sdpo+ss`` and ``grpo``."""

    single_pass = True

    def __init__(self, config: Config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg = config
        self.batch: list[dict[str, Any]] | None = None
        self.batch_start: dict[str, int] = self.data.state_dict()
        self.inner = 0
        self.outer = 0
        self.prev_scores: list[float] | None = None
        self.is_resd = cfg.algorithm == "resd"
        self.updater: ContextUpdater | None = None
        if self.is_resd:
            r = cfg.resd
            self.updater = ContextUpdater(updater_config(cfg), seed=cfg.seed)
            self.text_generate = self._make_text_generator()
            self.teacher_template = load_template(r.teacher_template)
            self.teacher_prompt_config = TeacherPromptConfig(
                r.use_playbook_in_teacher_prompt, r.use_previous_trial_in_teacher_prompt, r.use_feedback_in_teacher_prompt,
                r.use_reflection_in_teacher_prompt, r.use_solution_in_teacher_prompt, r.feedback_only_without_solution,
                cfg.reprompt.remove_thinking_from_demonstration, r.max_section_chars,
            )
        if self.dist.is_main:
            (self.run_dir / "playbook").mkdir(exist_ok=True)

    def _make_text_generator(self):
        r = self.config.resd.reflector
        sampling = SamplingParams(r.temperature, r.top_p, 0, r.max_new_tokens)
        if r.backend == "http":
            if not r.url or not r.model:
                raise ValueError("resd.reflector.backend=http needs resd.reflector.url and resd.reflector.model")
            return HTTPTextGenerator(r.url, r.model, sampling, r.api_key_env)
        if r.backend == "callable":  # "package.module:factory", factory(config) -> generate(conversations)
            import importlib

            module, _, attr = (r.model or "").partition(":")
            if not module or not attr:
                raise ValueError("resd.reflector.backend=callable needs resd.reflector.model='package.module:factory'")
            return getattr(importlib.import_module(module), attr)(self.config)
        if r.backend == "model":
            if not r.model:
                raise ValueError("resd.reflector.backend=model needs resd.reflector.model")
            return ModelTextGenerator(r.model, sampling, self.config.model.precision, self.config.rollout.batch_size,
                                      r.max_prompt_tokens)
        return PolicyTextGenerator(self.generator, self.tokenizer, sampling, r.max_prompt_tokens,
                                   self.config.model.chat_template_kwargs, seed_fn=lambda n: self.seeds("text", n),
                                   dist=self.dist)

    # ------------------------------------------------------------------ planning
    def planned_batches(self) -> int:
        available = len(self.data.examples) // self.config.train.batch_size
        wanted = self.config.stream.num_batches
        return min(available, wanted) if wanted else available

    def planned_steps(self) -> int:
        """Inner iterations to run: those of the planned outer batches, capped by ``train.steps``."""
        planned = self.planned_batches() * self.config.stream.inner_steps
        cap = self.config.train.steps
        return planned if cap is None else min(planned, cap)

    def total_optimizer_steps(self) -> int:
        cfg = self.config.train
        per_step = -(-cfg.batch_size // (cfg.mini_batch_size or cfg.batch_size))
        return self.planned_steps() * per_step

    def finished(self) -> bool:
        if self.config.train.steps is not None and self.step >= self.config.train.steps:
            return True  # possibly inside an outer batch: a resumed run with more steps goes on from there
        return self.batch is None and (
            self.outer >= self.planned_batches() or self.data.exhausted(self.config.train.batch_size)
        )

    # ------------------------------------------------------------------ teacher contexts
    def build_teacher_contexts(self, samples: list[Sample]) -> dict[str, float]:
        if not self.is_resd:
            return super().build_teacher_contexts(samples)
        cfg = self.config
        threshold = cfg.reprompt.success_reward_threshold
        successes = [s.feedback.score >= threshold for s in samples]
        texts = [s.text for s in samples]
        groups = [s.group for s in samples]
        sources: dict[str, int] = {"self": 0, "peer": 0, "buffer": 0, "none": 0}
        used_feedback = used_reflection = 0
        for i, s in enumerate(samples):
            example_id = self.env.example_id(s.example)
            buffered = self.updater.buffer.get(example_id) if cfg.resd.use_solution_buffer else None
            solution, source = select_solution(
                i, texts, successes, groups, buffered,
                allow_self=not cfg.reprompt.dont_reprompt_on_self_success,
                remove_thinking=cfg.reprompt.remove_thinking_from_demonstration,
            )
            sources[source] += 1
            system, prompt_text = split_prompt(s.prompt_messages)
            parts = build_teacher_prompt(
                self.teacher_template,
                prompt=prompt_text,
                previous_trial=s.text,
                feedback=s.feedback.feedback,
                reflection=s.extra.get("reflection", ""),
                solution=solution,
                playbook=self.updater.playbook_text(example_id),
                task_description=self.env.task_description,
                final_instruction=getattr(self.env, "final_instruction", DEFAULT_FINAL_INSTRUCTION),
                config=self.teacher_prompt_config,
            )
            s.teacher_messages = system + [{"role": "user", "content": parts.text}]
            s.sd_mask = parts.sd_mask
            used_feedback += parts.feedback_used
            used_reflection += parts.reflection_used
        n = max(1, len(samples))
        return {
            # SDPO's meaning (arXiv 2601.20802 reference code): samples given a demonstration / batch;
            # the fraction of successes is reward/success_fraction
            "self_distillation/success_sample_fraction": (n - sources["none"]) / n if samples else 0.0,
            "self_distillation/solution_fraction": (n - sources["none"]) / n if samples else 0.0,
            "self_distillation/solution_self_fraction": sources["self"] / n,
            "self_distillation/solution_peer_fraction": sources["peer"] / n,
            "self_distillation/solution_buffer_fraction": sources["buffer"] / n,
            "self_distillation/feedback_used_fraction": used_feedback / n,
            "self_distillation/reflection_fraction": used_reflection / n,
            "self_distillation/reprompt_sample_fraction": sum(s.sd_mask for s in samples) / n,
        }

    # ------------------------------------------------------------------ one inner iteration
    def context_update(self, samples: list[Sample]) -> dict[str, float]:
        """Steps 3-4: reflect and curate (through the current policy), then buffer the successes."""
        items = [
            UpdateItem(self.env.example_id(s.example), split_prompt(s.prompt_messages)[1], s.text,
                       s.feedback.feedback or "", float(s.feedback.acc))
            for s in samples
        ]
        reflections, metrics = self.updater.update(items, self.text_generate)
        if self.updater.last_curations and self.dist.is_main:
            with (self.run_dir / "curation.jsonl").open("a", encoding="utf-8") as f:
                for record in self.updater.last_curations:
                    f.write(json.dumps({"step": self.step + 1, **record}) + "\n")
        for s, reflection in zip(samples, reflections, strict=True):
            s.extra["reflection"] = reflection
        if self.config.resd.use_solution_buffer:
            threshold = self.config.reprompt.success_reward_threshold
            stored: set[int] = set()
            for s in samples:
                if s.feedback.score >= threshold and s.group not in stored:
                    stored.add(s.group)
                    self.updater.buffer.store(self.env.example_id(s.example), s.text)
            metrics["buffer/size"] = float(len(self.updater.buffer))
        return metrics

    def train_step(self) -> dict[str, float]:
        import time

        cfg = self.config
        t0 = time.perf_counter()
        if self.batch is None:
            self.batch_start = self.data.state_dict()
            self.batch = self.data.next_batch(cfg.train.batch_size)
            self.inner = 0
            self.prev_scores = None
        samples, metrics = self.collect(self.batch)
        if self.is_resd:
            t_ctx = time.perf_counter()
            metrics.update(self.context_update(samples))
            metrics["time/context_update_s"] = time.perf_counter() - t_ctx
        metrics.update(self.prepare_update(samples))
        if self.is_resd and cfg.resd.success_rate_weighting and samples:
            weights = success_rate_weights([s.feedback.score >= cfg.reprompt.success_reward_threshold for s in samples],
                                           cfg.resd.success_rate_alpha, cfg.resd.success_rate_beta)
            for s, w in zip(samples, weights.tolist(), strict=True):
                s.seq_weight = w
        t1 = time.perf_counter()
        if samples:
            metrics.update(self.optimize(samples))
        metrics["time/update_s"] = time.perf_counter() - t1

        scores = [float(np.mean([s.feedback.score for s in samples if s.group == g] or [0.0])) for g in range(len(self.batch))]
        self.inner += 1
        self.step += 1
        improved = None
        if self.prev_scores is not None:
            improved = float(np.mean([a > b for a, b in zip(scores, self.prev_scores, strict=True)]))
            metrics["stream/improved_fraction"] = improved
        self.prev_scores = scores
        end = self.inner >= cfg.stream.inner_steps or (
            self.inner >= cfg.stream.min_inner_steps and improved is not None and improved < cfg.stream.early_exit_threshold
        )
        metrics.update({"stream/outer_batch": float(self.outer), "stream/inner_step": float(self.inner - 1),
                        "stream/early_exit": float(end and self.inner < cfg.stream.inner_steps)})
        if end:
            self.outer += 1
            self.batch = None
        self.rollouts_seen += len(samples)
        self.elapsed += time.perf_counter() - t0
        metrics.update({"time/step_s": time.perf_counter() - t0, "progress/rollouts": float(self.rollouts_seen),
                        "progress/elapsed_s": self.elapsed})
        if self.updater is not None:
            metrics["playbook/size"] = float(self.updater.playbook().total()) if self.updater.store.mode == "global" else metrics.get("playbook/size", 0.0)
            self.write_playbook_snapshot()
        self.logger.log_samples(self.step, [self.sample_record(s) for s in samples[: cfg.logging.samples_per_step]])
        return metrics

    def after_step(self) -> None:
        """Checkpoint at the end of every ``save_every_batches``-th outer batch."""
        super().after_step()
        if self.batch is not None:
            return
        every = self.config.stream.val_every_batches
        if every and (self.outer % every == 0 or self.finished()) and self._last_val_step != self.step:
            self.validate()
        every = self.config.stream.save_every_batches
        if every and self.outer % every == 0:
            self.save()

    # ------------------------------------------------------------------ observability and state
    def write_playbook_snapshot(self) -> None:
        if not self.dist.is_main:
            return
        path = self.run_dir / "playbook" / f"step-{self.step:06d}"
        if self.updater.store.mode == "global":
            atomic_write_text(path.with_suffix(".txt"), self.updater.playbook().render() + "\n")
        else:
            texts = {k: pb.render() for k, pb in self.updater.store.items()}
            atomic_write_text(path.with_suffix(".json"), json.dumps(texts, indent=1))

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "outer": self.outer,
            "inner": self.inner,
            "in_batch": self.batch is not None,
            "batch_start": self.batch_start,
            "prev_scores": self.prev_scores,
        }
        if self.updater is not None:
            state["context"] = self.updater.to_state()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.outer = int(state["outer"])
        self.inner = int(state["inner"])
        self.prev_scores = state["prev_scores"]
        self.batch_start = state["batch_start"]
        self.batch = None
        if state["in_batch"]:
            position = self.data.state_dict()
            self.data.load_state_dict(self.batch_start)
            self.batch = self.data.next_batch(self.config.train.batch_size)
            if self.data.state_dict() != position:
                raise RuntimeError("checkpoint data position does not match its outer batch")
        if self.updater is not None and "context" in state:
            self.updater.load_state(state["context"])

    def sample_record(self, s: Sample) -> dict[str, Any]:
        record = super().sample_record(s)
        if "reflection" in s.extra:
            record["reflection"] = strip_thinking(s.extra["reflection"])
        return record
