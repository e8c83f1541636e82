"""RESD (arXiv 2605.12741): self-distillation whose teacher also sees reflections, a playbook and past successes.

Each step, before the update (arXiv 2605.12741, Algorithm 1):

1. the context update: the reflector (the policy itself, a separate model or a server) reflects on
   the samples, tags the playbook bullets they used, and the curator turns the reflections into
   playbook operations (:class:`resd.context.updater.ContextUpdater`);
2. successes go to the solution buffer, one per prompt;
3. each sample's teacher prompt combines the playbook, the sample's own attempt, its feedback, its
   reflection and a solution (its own success, a peer's, or the buffer's), by the template's rules
   (:mod:`resd.context.teacher_prompt`);
4. optionally, success-rate weights of the distillation term.

The playbook, the buffer and the reflector's random state are this algorithm's state and go into
every checkpoint; playbook snapshots and the curation log are written under the run directory.
RESD runs on the stream schedule (several inner updates per batch) unless ``stream.enabled=false``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from resd.algorithms.base import Algorithm, Services, assign_group_advantages
from resd.context.parsing import strip_thinking
from resd.context.prompts import PROMPT_SETS
from resd.context.reprompt import split_prompt
from resd.context.solution_buffer import select_solution
from resd.context.teacher_prompt import TeacherPromptConfig, build_teacher_prompt, load_template
from resd.context.updater import ContextUpdater, UpdateItem, UpdaterConfig
from resd.fileio import atomic_write_text
from resd.losses import success_rate_weights
from resd.rollout.base import SamplingParams
from resd.rollout.structured import resolve_constrained
from resd.rollout.text import HTTPTextGenerator, ModelTextGenerator, PolicyTextGenerator, SharedTextGenerator
from resd.sample import Sample

if TYPE_CHECKING:
    from resd.config import Config

DEFAULT_FINAL_INSTRUCTION = "Correctly solve the original task with the above information:"


def updater_config(config: Config) -> UpdaterConfig:
    """The context updater's settings from the ``resd`` section of a run's configuration."""
    r = config.resd
    prompts = PROMPT_SETS[r.context_prompts]
    return UpdaterConfig(
        playbook_mode=r.playbook_mode,
        concise_frequency=r.concise_frequency,
        max_bullets=r.max_bullets,
        concise_method=r.concise_method,
        concise_after_curation=r.concise_after_curation,
        tag_correct_samples=r.tag_correct_samples,
        dedup_threshold=r.dedup_threshold,
        reflector_template=prompts.reflector,
        success_reflector_template=prompts.success_reflector,
        curator_template=prompts.curator,
        max_response_chars=r.reflector.max_response_chars,
        output_chars=max(1, int(r.reflector.max_new_tokens * r.reflector.schema_chars_per_token)),
        curator_min_operations=r.curator_min_operations,
    )


def text_generator(config: Config, services: Services):
    """Who writes reflections and curations (``resd.reflector.backend``); under torchrun every
    answer is made once and shared by all ranks."""
    r = config.resd.reflector
    if r.backend == "policy":
        generate = PolicyTextGenerator(services.generator, services.tokenizer, sampling_of(config), r.max_prompt_tokens,
                                       config.model.chat_template_kwargs, seed_fn=lambda n: services.seeds("text", n))
    else:
        generate = _other_text_generator(config)
    return SharedTextGenerator(generate, services.dist) if services.dist.enabled else generate


def sampling_of(config: Config) -> SamplingParams:
    """The reflector's and curator's sampling settings."""
    r = config.resd.reflector
    return SamplingParams(r.temperature, r.top_p, 0, r.max_new_tokens)


def _other_text_generator(config: Config):
    """A reflector other than the policy: a server, a callable or a second model."""
    r = config.resd.reflector
    sampling = sampling_of(config)
    if r.backend == "http":
        if not r.url or not r.model:
            raise ValueError("resd.reflector.backend=http needs resd.reflector.url and resd.reflector.model")
        return HTTPTextGenerator(r.url, r.model, sampling, r.api_key_env, concurrency=r.http_concurrency)
    if r.backend == "callable":  # "package.module:factory", factory(config) -> generate(conversations)
        import importlib

        module, _, attr = (r.model or "").partition(":")
        if not module or not attr:
            raise ValueError("resd.reflector.backend=callable needs resd.reflector.model='package.module:factory'")
        return getattr(importlib.import_module(module), attr)(config)
    if r.backend == "model":
        if not r.model:
            raise ValueError("resd.reflector.backend=model needs resd.reflector.model")
        return ModelTextGenerator(r.model, sampling, config.model.precision, config.rollout.batch_size,
                                  r.max_prompt_tokens)
    raise ValueError(f"resd.reflector.backend: unknown backend {r.backend!r}")


class RESD(Algorithm):
    """Reflection, a curated playbook and a solution buffer in the teacher's context."""

    summary = "SDPO whose teacher also sees reflections, a curated playbook and past successes (stream schedule)"
    default_schedule = "stream"

    def __init__(self, config: Config, services: Services) -> None:
        super().__init__(config, services)
        r = config.resd
        self.updater = ContextUpdater(updater_config(config), seed=config.seed)
        # the policy's own sampler exists once the trainer has built it (after this object): made on first use
        self.text_generate = None
        if r.reflector.backend != "policy":
            self.use_text_generator(text_generator(config, services))
        elif r.reflector.constrained:  # fail now rather than at the first context update
            resolve_constrained(True, "engine" if config.rollout.backend == "vllm" else "library")
        self.teacher_template = load_template(r.teacher_template)
        self.teacher_prompt_config = TeacherPromptConfig(
            use_playbook=r.use_playbook_in_teacher_prompt,
            use_previous_trial=r.use_previous_trial_in_teacher_prompt,
            use_feedback=r.use_feedback_in_teacher_prompt,
            use_reflection=r.use_reflection_in_teacher_prompt,
            use_solution=r.use_solution_in_teacher_prompt,
            feedback_only_without_solution=r.feedback_only_without_solution,
            remove_thinking_from_solution=config.reprompt.remove_thinking_from_demonstration,
            max_section_chars=r.max_section_chars,
        )
        if services.dist.is_main:
            services.run.playbook_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ one step
    def prepare(self, samples: list[Sample], step: int) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.context_update(samples, step)
        metrics["time/context_update_s"] = time.perf_counter() - start
        if self.pg_weight > 0.0:
            assign_group_advantages(samples, self.config.loss.norm_adv_by_std)
        metrics.update(self.teacher_contexts(samples))
        if self.config.resd.success_rate_weighting and samples:
            r, threshold = self.config.resd, self.config.reprompt.success_reward_threshold
            weights = success_rate_weights([s.feedback.score >= threshold for s in samples],
                                           r.success_rate_alpha, r.success_rate_beta)
            for s, w in zip(samples, weights.tolist(), strict=True):
                s.seq_weight = w
        return metrics

    def context_update(self, samples: list[Sample], step: int) -> dict[str, float]:
        """Reflect and curate (steps 1-2 of the module docstring), then buffer the successes."""
        env = self.services.env
        items = [
            UpdateItem(env.example_id(s.example), split_prompt(s.prompt_messages)[1], s.text,
                       s.feedback.feedback or "", float(s.feedback.acc))
            for s in samples
        ]
        if self.text_generate is None:
            self.use_text_generator(text_generator(self.config, self.services))
        reflections, metrics = self.updater.update(items, self.text_generate)
        if self.updater.last_curations and self.services.dist.is_main:
            with self.services.run.curation.open("a", encoding="utf-8") as f:
                for record in self.updater.last_curations:
                    f.write(json.dumps({"step": step, **record}) + "\n")
        for s, reflection in zip(samples, reflections, strict=True):
            s.extra["reflection"] = reflection
        if self.config.resd.use_solution_buffer:
            threshold = self.config.reprompt.success_reward_threshold
            stored: set[int] = set()
            for s in samples:
                if s.feedback.score >= threshold and s.group not in stored:
                    stored.add(s.group)
                    self.updater.buffer.store(env.example_id(s.example), s.text)
            metrics["buffer/size"] = float(len(self.updater.buffer))
        return metrics

    def use_text_generator(self, generate) -> None:
        """Write reflections and curations with ``generate``, under JSON schemas when
        ``resd.reflector.constrained`` and the backend's ``constraint_support`` say so."""
        constrained = resolve_constrained(self.config.resd.reflector.constrained,
                                          getattr(generate, "constraint_support", None))
        self.text_generate = generate
        self.updater.config = dataclasses.replace(self.updater.config, constrained=constrained)

    def teacher_contexts(self, samples: list[Sample]) -> dict[str, float]:
        """Each sample's RESD teacher prompt and whether it is distilled."""
        cfg, env = self.config, self.services.env
        threshold = cfg.reprompt.success_reward_threshold
        successes = [s.feedback.score >= threshold for s in samples]
        texts = [s.text for s in samples]
        groups = [s.group for s in samples]
        sources: dict[str, int] = {"self": 0, "peer": 0, "buffer": 0, "none": 0}
        used_feedback = used_reflection = 0
        for i, s in enumerate(samples):
            example_id = env.example_id(s.example)
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
                task_description=env.task_description,
                final_instruction=getattr(env, "final_instruction", DEFAULT_FINAL_INSTRUCTION),
                config=self.teacher_prompt_config,
            )
            s.teacher_messages = system + [{"role": "user", "content": parts.text}]
            s.sd_mask = parts.sd_mask
            used_feedback += parts.feedback_used
            used_reflection += parts.reflection_used
        n = max(1, len(samples))
        given = (n - sources["none"]) / n if samples else 0.0
        return {
            # SDPO's meaning (arXiv 2601.20802): samples given a demonstration / batch; the fraction
            # of successes is reward/success_fraction
            "self_distillation/success_sample_fraction": given,
            "self_distillation/solution_fraction": given,
            "self_distillation/solution_self_fraction": sources["self"] / n,
            "self_distillation/solution_peer_fraction": sources["peer"] / n,
            "self_distillation/solution_buffer_fraction": sources["buffer"] / n,
            "self_distillation/feedback_used_fraction": used_feedback / n,
            "self_distillation/reflection_fraction": used_reflection / n,
            "self_distillation/reprompt_sample_fraction": sum(s.sd_mask for s in samples) / n,
        }

    def after_update(self, samples: list[Sample], step: int) -> dict[str, float]:
        self.write_playbook_snapshot(step)
        if self.updater.store.mode == "global":
            return {"playbook/size": float(self.updater.playbook().total())}
        return {}

    # ------------------------------------------------------------------ observability and state
    def write_playbook_snapshot(self, step: int) -> None:
        if not self.services.dist.is_main:
            return
        per_example = self.updater.store.mode != "global"
        path = self.services.run.playbook_snapshot(step, per_example)
        if not per_example:
            atomic_write_text(path, self.updater.playbook().render() + "\n")
        else:
            texts = {k: pb.render() for k, pb in self.updater.store.items()}
            atomic_write_text(path, json.dumps(texts, indent=1))

    def sample_record(self, sample: Sample) -> dict[str, Any]:
        if "reflection" in sample.extra:
            return {"reflection": strip_thinking(sample.extra["reflection"])}
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"context": self.updater.to_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "context" in state:
            self.updater.load_state(state["context"])
