"""Evaluation metrics over k samples per prompt: mean@k, best@k (exact and bootstrap), pass@k."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np


def mean_at_k(values: Sequence[Sequence[float]]) -> float:
    """Mean over prompts of the mean over each prompt's samples."""
    per_prompt = [float(np.mean(v)) for v in values if len(v)]
    return float(np.mean(per_prompt)) if per_prompt else 0.0


def best_at_k(values: Sequence[Sequence[float]]) -> float:
    """Mean over prompts of the best of its samples (the literal max of k)."""
    per_prompt = [float(max(v)) for v in values if len(v)]
    return float(np.mean(per_prompt)) if per_prompt else 0.0


def best_at_k_bootstrap(values: Sequence[Sequence[float]], k: int | None = None, resamples: int = 1000, seed: int = 42) -> float:
    """veRL's bootstrap estimate of the expected best of k: per prompt, ``resamples`` draws of k
    samples with replacement, the mean of their maxima; then the mean over prompts. It is slightly
    below the literal max of k, because draws repeat samples."""
    rng = random.Random(seed)
    per_prompt = []
    for v in values:
        if not len(v):
            continue
        size = k or len(v)
        per_prompt.append(float(np.mean([max(rng.choices(list(v), k=size)) for _ in range(resamples)])))
    return float(np.mean(per_prompt)) if per_prompt else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n - c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(successes: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over prompts."""
    vals = [pass_at_k(len(s), sum(bool(x) for x in s), k) for s in successes if len(s) >= k]
    return float(np.mean(vals)) if vals else 0.0


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"mean": 0.0, "max": 0.0, "p50": 0.0, "p90": 0.0}
    arr = np.asarray(lengths, dtype=float)
    return {"mean": float(arr.mean()), "max": float(arr.max()), "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90))}
