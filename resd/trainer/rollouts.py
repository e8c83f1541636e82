"""Rollouts: sample responses to a batch of prompts and score them with the environment.

Sampling is seeded per sequence (``rollout.seeded``): the seed of a sequence depends on the run's
seed, the step, the purpose and its index only, so a resumed run and a run on several processes
draw the same responses as one uninterrupted process.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from resd.config import Config
from resd.distributed import DistInfo
from resd.envs.base import Environment
from resd.models import chat_prompt_ids
from resd.rollout import SamplingParams
from resd.rollout.base import mix_seed
from resd.sample import Sample
from resd.trainer.policy import Policy


class Rollouts:
    """Samples ``rollout.n`` responses per prompt with the policy and scores them."""

    def __init__(self, config: Config, env: Environment, policy: Policy, dist: DistInfo) -> None:
        self.config = config
        self.env = env
        self.policy = policy
        self.dist = dist
        r = config.rollout
        self.sampling = SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens)
        self.step = 0  # steps completed: seeds drawn during step k + 1 depend on k
        self._seed_step, self._seed_calls = -1, 0

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
            ids, _ = chat_prompt_ids(self.policy.tokenizer, messages, cfg.max_prompt_length, mode,
                                     self.config.model.chat_template_kwargs)
        except ValueError:
            if cfg.prompt_overflow == "drop":
                return None
            raise
        return ids

    def collect(self, examples: list[dict[str, Any]]) -> tuple[list[Sample], dict[str, float]]:
        """Sample ``n`` responses per example and score them; every rank returns all samples."""
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
        generator = self.policy.generator
        rollouts = generator.generate([p[2] for p in mine], self.config.rollout.n, self.sampling,
                                      seeds[share] if seeds is not None else None) if mine else []
        t1 = time.perf_counter()
        for r in rollouts:
            index = share.start + r.prompt_index
            example, messages, ids = prompts[index]
            kept.append(Sample(example, index, messages, ids, r.response_ids, r.logprobs, r.finished))
        texts = self.policy.tokenizer.batch_decode([s.response_ids for s in kept], skip_special_tokens=True) if kept else []
        d = self.config.data
        feedbacks = self.env.score_batch(texts, [s.example for s in kept], [not s.finished for s in kept],
                                         workers=d.score_workers, timeout_s=d.score_timeout_s)
        for sample, text, fb in zip(kept, texts, feedbacks, strict=True):
            sample.text, sample.feedback = text, fb
        if self.dist.enabled:
            kept = [s for part in self.dist.all_gather(kept) for s in part]
        t2 = time.perf_counter()
        return kept, self._metrics(kept, dropped, t1 - t0, t2 - t1)

    def _metrics(self, samples: list[Sample], dropped: int, rollout_s: float, score_s: float) -> dict[str, float]:
        lengths = [len(s.response_ids) for s in samples] or [0]
        threshold = self.config.reprompt.success_reward_threshold

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else 0.0

        return {
            "reward/mean": mean([s.feedback.score for s in samples]),
            "acc/mean": mean([s.feedback.acc for s in samples]),
            # successes (score >= reprompt.success_reward_threshold) / samples
            "reward/success_fraction": mean([float(s.feedback.score >= threshold) for s in samples]),
            "response_length/mean": float(np.mean(lengths)),
            "response_length/max": float(max(lengths)),
            "response_length/truncated_fraction": mean([float(not s.finished) for s in samples]),
            "data/prompts_dropped": float(dropped),
            "time/rollout_s": rollout_s,
            "time/score_s": score_s,
        }
