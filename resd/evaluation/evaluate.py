"""Evaluate a policy on an environment split with k samples per prompt."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from resd.evaluation.metrics import (
    best_at_k,
    best_at_k_bootstrap,
    family_aliases,
    length_stats,
    mean_at_k,
    mean_pass_at_k,
)
from resd.fileio import atomic_write_text

if TYPE_CHECKING:
    from resd.rollout.base import SamplingParams


@dataclasses.dataclass
class EvalResult:
    """``summary``: metric name -> value; ``records``: one dict per sample (with its feedback);
    ``aliases``: metric families identical sample by sample to another (``{"score": "task"}``)."""

    summary: dict[str, float]
    records: list[dict[str, Any]]
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)

    def write(self, out_dir: str | Path, prefix: str = "eval",
              provenance: dict[str, Any] | None = None) -> tuple[Path, Path]:
        """``<prefix>_summary.json`` (the metrics at the top level, as before, plus ``aliases`` and
        ``provenance``: what was evaluated, how) and ``<prefix>_samples.jsonl``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary_path = out / f"{prefix}_summary.json"
        samples_path = out / f"{prefix}_samples.jsonl"
        data: dict[str, Any] = dict(sorted(self.summary.items()))
        data["aliases"] = dict(self.aliases)
        if provenance is not None:
            data["provenance"] = provenance
        atomic_write_text(summary_path, json.dumps(data, indent=1))
        with samples_path.open("w", encoding="utf-8") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")
        return summary_path, samples_path


def family_values(env, groups: Sequence[Sequence[dict[str, Any]]]) -> dict[str, list[list[float]]]:
    """Per-prompt lists of each sample's ``score``, ``acc``, ``task`` and ``test_case``."""
    # per task = whole task solved, per test case = fraction of test cases; the environment knows which
    # of its score/acc is which (see Environment.task_and_test_case)
    pairs = [[env.task_and_test_case(r["score"], r["acc"]) for r in g] for g in groups]
    return {
        "score": [[r["score"] for r in g] for g in groups],
        "acc": [[r["acc"] for r in g] for g in groups],
        "task": [[p[0] for p in g] for g in pairs],
        "test_case": [[p[1] for p in g] for g in pairs],
    }


def provenance(config, *, split: str, k: int, seed: int | None, prompts: int, run_dir: str | Path | None = None,
               step: int | None = None, checkpoint: str | None = None, data_path: str | None = None,
               limit: int | None = None) -> dict[str, Any]:
    """What an evaluation evaluated and how (stored in its summary file): the model and the run's checkpoint,
    the data, the sampling settings (``eval.*``), the seed, resd's version and the time."""
    import datetime

    import resd

    e = config.eval
    return {
        "model": config.model.name,
        "run_dir": str(run_dir) if run_dir is not None else None,
        "checkpoint": checkpoint,
        "step": step,
        "env": config.data.env,
        "env_kwargs": config.to_dict()["data"]["env_kwargs"],
        "split": split,
        "data_path": data_path,
        "limit": limit,
        "prompts": prompts,
        "k": k,
        "temperature": e.temperature,
        "top_p": e.top_p,
        "max_new_tokens": e.max_new_tokens or config.rollout.max_new_tokens,
        "seed": seed,
        "resd_version": resd.__version__,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def summarize(env, groups: Sequence[Sequence[dict[str, Any]]], k: int, success_threshold: float,
              families: dict[str, list[list[float]]] | None = None) -> dict[str, float]:
    """Metrics from per-prompt lists of sample records (each with score, acc, length, truncated);
    ``families``: their :func:`family_values`, when the caller has them already."""
    families = families if families is not None else family_values(env, groups)
    scores = families["score"]
    summary: dict[str, float] = {"prompts": float(len(groups)), "samples": float(sum(len(g) for g in groups))}
    for name, values in families.items():
        summary[f"{name}/mean@{k}"] = mean_at_k(values)
        summary[f"{name}/best@{k}"] = best_at_k(values)
        summary[f"{name}/best@{k}_bootstrap"] = best_at_k_bootstrap(values, k)
    successes = [[s >= success_threshold for s in v] for v in scores]
    for kk in sorted({1, k}):
        summary[f"pass@{kk}"] = mean_pass_at_k(successes, kk)
    lengths = [r["length"] for g in groups for r in g]
    summary.update({f"response_length/{n}": v for n, v in length_stats(lengths).items()})
    summary["response_length/truncated_fraction"] = float(np.mean([r["truncated"] for g in groups for r in g])) if lengths else 0.0
    return summary


def evaluate(
    env,
    rows: Sequence[dict[str, Any]],
    generator,
    tokenizer,
    sampling: SamplingParams,
    k: int = 4,
    *,
    success_threshold: float = 1.0,
    max_prompt_length: int | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    chunk_prompts: int = 8,
    progress: bool = False,
    seed: int | None = None,
) -> EvalResult:
    """Sample ``k`` responses per row with ``generator`` and score them with ``env``.

    With ``seed`` every sample has its own seed derived from it and the row index (reproducible).
    """
    from resd.models import chat_prompt_ids  # (here: the metrics and summaries above need no torch)
    from resd.rollout.base import mix_seed

    groups: list[list[dict[str, Any]]] = []
    bar = tqdm(total=len(rows), desc="eval", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(rows), chunk_prompts):
        chunk = list(rows[start : start + chunk_prompts])
        messages = [env.prompt_messages(r) for r in chunk]
        ids = [chat_prompt_ids(tokenizer, m, max_prompt_length, "left", chat_template_kwargs)[0] for m in messages]
        seeds = [mix_seed(seed, start + i) for i in range(len(chunk))] if seed is not None else None
        rollouts = generator.generate(ids, k, sampling, seeds)
        texts = tokenizer.batch_decode([r.response_ids for r in rollouts], skip_special_tokens=True)
        examples = [chunk[r.prompt_index] for r in rollouts]
        feedbacks = env.score_batch(texts, examples, [not r.finished for r in rollouts])
        chunk_groups: list[list[dict[str, Any]]] = [[] for _ in chunk]
        for r, text, fb in zip(rollouts, texts, feedbacks, strict=True):
            chunk_groups[r.prompt_index].append({
                "example_id": env.example_id(chunk[r.prompt_index]),
                "sample": len(chunk_groups[r.prompt_index]),
                "prompt": messages[r.prompt_index][-1]["content"],
                "response": text,
                "score": float(fb.score),
                "acc": float(fb.acc),
                "feedback": fb.feedback,
                "length": len(r.response_ids),
                "truncated": not r.finished,
            })
        groups.extend(chunk_groups)
        bar.update(len(chunk))
    bar.close()
    families = family_values(env, groups)
    summary = summarize(env, groups, k, success_threshold, families)
    return EvalResult(summary, [r for g in groups for r in g], family_aliases(families))
