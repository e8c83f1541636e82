"""Validation during training: the held-out split, its summary files, and the best step so far."""

from __future__ import annotations

import json
from typing import Any

from resd.config import Config
from resd.distributed import DistInfo
from resd.envs.base import Environment
from resd.fileio import atomic_write_text
from resd.rollout import SamplingParams
from resd.rollout.base import mix_seed
from resd.run_dir import RunDir, normalize_best


class Validation:
    """Evaluates the policy on ``data.val_split`` with the ``eval`` settings and tracks ``eval.best_metric``."""

    def __init__(self, config: Config, env: Environment, dist: DistInfo, run: RunDir) -> None:
        self.config = config
        self.env = env
        self.dist = dist
        self.run = run
        self.best: dict[str, Any] | None = None  # {"step", "best_metric", "metric", "k", "value"} of the best validation
        self._rows: list[dict[str, Any]] | None = None
        # of the last validation, on the first rank: families repeating another's values, a few samples
        self.last_aliases: dict[str, str] = {}
        self.last_records: list[dict[str, Any]] = []

    @property
    def metric_name(self) -> str:
        """The summary key of ``eval.best_metric`` (with ``@k``)."""
        e = self.config.eval
        return e.best_metric if "@" in e.best_metric else f"{e.best_metric}@{e.k}"

    def scheduled(self) -> bool:
        """Whether this configuration validates at all during training."""
        cfg = self.config
        e = cfg.eval
        return bool(e.before_train or e.every_steps or e.every_rollouts
                    or (cfg.uses_stream and cfg.stream.val_every_batches))

    def set_best(self, best: dict[str, Any] | None) -> None:
        """The best validation of a checkpoint being resumed (older checkpoints name only ``metric``)."""
        self.best = normalize_best(best) if best else None

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            d = self.config.data
            self._rows = self.env.load_split(d.val_split, d.val_path, d.val_limit)
        return self._rows

    def evaluate(self, step: int, generator: Any, tokenizer: Any) -> dict[str, float]:
        """The summary (``task/mean@k``, ...) after ``step``; writes ``eval/step-N_*`` with its provenance
        (rank 0 evaluates)."""
        from resd.evaluation import evaluate
        from resd.evaluation.evaluate import provenance

        cfg, e = self.config, self.config.eval
        sampling = SamplingParams(e.temperature, e.top_p, 0, e.max_new_tokens or cfg.rollout.max_new_tokens)
        summary = None
        if self.dist.is_main:  # the replica is local: rank 0 evaluates, the others wait
            seed = mix_seed(cfg.seed, 0 if e.common_seeds else step, "eval") if cfg.rollout.seeded else None
            result = evaluate(self.env, self.rows(), generator, tokenizer, sampling, e.k,
                              success_threshold=e.success_threshold, max_prompt_length=cfg.data.max_prompt_length,
                              chat_template_kwargs=cfg.model.chat_template_kwargs, seed=seed)
            d = cfg.data
            origin = provenance(cfg, split=d.val_split, k=e.k, seed=seed, prompts=len(self.rows()), run_dir=self.run.root,
                                step=step, data_path=d.val_path, limit=d.val_limit)
            result.write(self.run.eval_dir, RunDir.step_name(step), origin)
            summary = result.summary
            self.last_aliases = result.aliases
            self.last_records = result.records[: cfg.logging.samples_per_step]
        return self.dist.all_gather(summary)[0]

    def improved(self, step: int, summary: dict[str, float]) -> bool:
        """Record ``summary`` against the best so far; True when it is the new best (then checkpoint it
        and call :meth:`write_best`)."""
        e = self.config.eval
        name = self.metric_name
        if name not in summary:
            raise KeyError(f"eval.best_metric {e.best_metric!r} is not a validation metric: {sorted(summary)}")
        value = summary[name]
        if self.best is not None and value <= self.best["value"]:
            return False
        # best_metric: as eval.best_metric names it; metric: the summary key (the only name in older files)
        self.best = {"step": step, "best_metric": e.best_metric, "metric": name, "k": e.k, "value": value}
        return True

    def write_best(self) -> None:
        """``best.json``, written after the best step's checkpoint so that it never names a missing one."""
        if self.dist.is_main and self.best is not None:
            atomic_write_text(self.run.best, json.dumps(self.best, indent=1))
