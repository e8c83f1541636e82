"""Evaluation metrics over k samples per prompt: mean@k, best@k (exact and bootstrap), pass@k, and the
paired difference of two evaluations on the same prompts."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple

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


class PairedDifference(NamedTuple):
    """``mean`` of b - a over the prompts both evaluations share, with a bootstrap interval."""

    mean: float
    low: float
    high: float
    prompts: int


def paired_difference(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], level: float = 0.95,
                      resamples: int = 10_000, seed: int = 0) -> PairedDifference:
    """Difference of mean@k between two evaluations of the same prompts (b minus a), each keyed by prompt
    id, with a percentile bootstrap interval that resamples prompts.

    Resampling prompts, not samples, keeps a prompt's samples together: they share its difficulty, so
    with few prompts the interval says how far the difference could be from 0 by the choice of prompts
    and by sampling. With common sampling seeds (``eval.common_seeds``) an unchanged model gives 0 exactly.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    keys = [key for key in a if key in b and len(a[key]) and len(b[key])]
    if not keys:
        raise ValueError("the two evaluations share no prompt")
    diffs = np.array([float(np.mean(b[key])) - float(np.mean(a[key])) for key in keys])
    draws = np.random.default_rng(seed).integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return PairedDifference(float(diffs.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)),
                            len(keys))


#: the per-sample metric families of an evaluation, in the order in which a family that repeats another's
#: values is attributed to the earlier one (``task`` and ``test_case`` are the paper's two accuracies)
FAMILIES = ("task", "test_case", "score", "acc")


def family_aliases(values: Mapping[str, Sequence[Sequence[float]]]) -> dict[str, str]:
    """Families whose per-sample values are identical to an earlier family's (in :data:`FAMILIES` order):
    ``{alias: family}``. In most environments ``task`` equals ``score`` and ``test_case`` equals ``acc``
    sample by sample; their summaries are then the same quantity under two names."""
    aliases: dict[str, str] = {}
    kept: list[str] = []
    for name in [f for f in FAMILIES if f in values] + [f for f in values if f not in FAMILIES]:
        flat = [float(x) for group in values[name] for x in group]
        same = next((k for k in kept if [float(x) for g in values[k] for x in g] == flat), None)
        if same is None:
            kept.append(name)
        else:
            aliases[name] = same
    return aliases


def value_aliases(rows: Sequence[Mapping[str, float]], prefix: str = "") -> dict[str, str]:
    """Families each of whose metrics equals an earlier family's in every row (``{alias: family}``): how a
    table of several summaries shows a repeated quantity once. ``prefix``: e.g. ``val/`` for logged metrics.
    (A summary file's own ``aliases`` come from per-sample equality, :func:`family_aliases`.)"""
    aliases: dict[str, str] = {}
    kept: list[str] = []
    for family in FAMILIES:
        head = f"{prefix}{family}/"
        found = [(row, key) for row in rows for key in row if key.startswith(head)]
        if not found:
            continue
        for other in kept:
            other_head = f"{prefix}{other}/"
            if all(row.get(other_head + key[len(head):]) == row[key] for row, key in found):
                aliases[family] = other
                break
        else:
            kept.append(family)
    return aliases


def without_aliases(summary: Mapping[str, float], aliases: Mapping[str, str]) -> dict[str, float]:
    """``summary`` without the metrics of alias families (``score/mean@4`` when ``score`` repeats ``task``)."""
    return {k: v for k, v in summary.items() if k.split("/", 1)[0] not in aliases or "/" not in k}


def alias_note(aliases: Mapping[str, str]) -> str:
    """``task = score, test_case = acc``: which families were shown once (empty without aliases)."""
    groups: dict[str, list[str]] = {}
    for alias, family in aliases.items():
        groups.setdefault(family, []).append(alias)
    return ", ".join(" = ".join([family, *names]) for family, names in groups.items())


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"mean": 0.0, "max": 0.0, "p50": 0.0, "p90": 0.0}
    arr = np.asarray(lengths, dtype=float)
    return {"mean": float(arr.mean()), "max": float(arr.max()), "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90))}
