"""Evaluate a policy on an environment split with k samples per prompt."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from resd.evaluation.metrics import best_at_k, best_at_k_bootstrap, length_stats, mean_at_k, mean_pass_at_k
from resd.fileio import atomic_write_text
from resd.models import chat_prompt_ids
from resd.rollout.base import SamplingParams, mix_seed


@dataclasses.dataclass
class EvalResult:
    """``summary``: metric name -> value; ``records``: one dict per sample (with its feedback)."""

    summary: dict[str, float]
    records: list[dict[str, Any]]

    def write(self, out_dir: str | Path, prefix: str = "eval") -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary_path = out / f"{prefix}_summary.json"
        samples_path = out / f"{prefix}_samples.jsonl"
        atomic_write_text(summary_path, json.dumps(self.summary, indent=1, sort_keys=True))
        with samples_path.open("w", encoding="utf-8") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")
        return summary_path, samples_path


def summarize(env, groups: Sequence[Sequence[dict[str, Any]]], k: int, success_threshold: float) -> dict[str, float]:
    """Metrics from per-prompt lists of sample records (each with score, acc, length, truncated)."""
    scores = [[r["score"] for r in g] for g in groups]
    accs = [[r["acc"] for r in g] for g in groups]
    # per task = whole task solved, per test case = fraction of test cases; the environment knows which
    # of its score/acc is which (see Environment.task_and_test_case)
    pairs = [[env.task_and_test_case(r["score"], r["acc"]) for r in g] for g in groups]
    per_task = [[p[0] for p in g] for g in pairs]
    per_case = [[p[1] for p in g] for g in pairs]
    summary: dict[str, float] = {"prompts": float(len(groups)), "samples": float(sum(len(g) for g in groups))}
    for name, values in (("score", scores), ("acc", accs), ("task", per_task), ("test_case", per_case)):
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
    summary = summarize(env, groups, k, success_threshold)
    return EvalResult(summary, [r for g in groups for r in g])
