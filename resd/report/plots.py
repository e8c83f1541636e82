"""Metric curves as PNG bytes (matplotlib's Agg canvas; no display, no pyplot global state)."""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from resd.report.loading import RunData

#: training metrics shown by default, in page order (absent ones are skipped)
TRAIN_METRICS: tuple[str, ...] = (
    "reward/mean",
    "acc/mean",
    "loss/distill",
    "loss/pg",
    "self_distillation/reprompt_sample_fraction",
    "response_length/mean",
    "playbook/size",
    "actor/grad_norm",
)

#: validation bookkeeping counts that are not worth a curve
VAL_SKIP: frozenset[str] = frozenset({"val/prompts", "val/samples"})

TITLES: dict[str, str] = {
    "reward/mean": "reward (mean)",
    "acc/mean": "accuracy (mean)",
    "loss/distill": "self-distillation loss",
    "loss/pg": "policy-gradient loss",
    "self_distillation/reprompt_sample_fraction": "self-distillation mask fraction",
    "response_length/mean": "response length (tokens, mean)",
    "playbook/size": "playbook size (bullets)",
    "actor/grad_norm": "gradient norm",
}

#: x-axis id -> (metric holding the x value, or "step"; axis label)
X_AXES: dict[str, tuple[str, str]] = {
    "step": ("step", "step"),
    "rollouts": ("progress/rollouts", "rollouts"),
    "time": ("progress/elapsed_s", "wall-clock"),
}

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def run_color(index: int) -> str:
    """The color of the ``index``-th run, the same in every plot and in the page's legend."""
    return _COLORS[index % len(_COLORS)]


def title_of(key: str) -> str:
    return TITLES.get(key, key)


def slug(text: str) -> str:
    """A file- and id-safe name: ``val/task/mean@4`` -> ``val-task-mean-4``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "metric"


def _plain(text: str) -> str:
    """Text matplotlib shows literally: no mathtext, and not hidden from the legend by a leading '_'."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _time_scale(seconds: float) -> tuple[float, str]:
    if seconds >= 2 * 3600:
        return 3600.0, "h"
    if seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


#: values beyond this magnitude (a diverged run) are left out of plots: matplotlib cannot lay out
#: an axis whose span overflows a float
MAX_ABS = 1e100


def _plottable(xs: list[float], ys: list[float]) -> tuple[list[float], list[float], int]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if abs(x) <= MAX_ABS and abs(y) <= MAX_ABS]
    return [x for x, _ in kept], [y for _, y in kept], len(xs) - len(kept)


def metric_png(runs: list[RunData], key: str, x_axis: str, dpi: int = 100) -> bytes | None:
    """One curve per run of ``key`` against ``x_axis`` (a key of :data:`X_AXES`); None when no run has
    a point for it. Long noisy curves get a moving average over a faint raw line. Values beyond
    :data:`MAX_ABS` are left out (the title says how many); a figure matplotlib cannot draw becomes
    a placeholder that says why."""
    x_key, _ = X_AXES[x_axis]
    series = [(i, run, *run.series(key, x_key)) for i, run in enumerate(runs)]
    series = [s for s in series if s[2]]
    if not series:
        return None
    with warnings.catch_warnings():  # overflow and missing-glyph warnings are not worth showing
        warnings.simplefilter("ignore")
        try:
            fig = _curve_figure(series, key, x_axis, len(runs) > 1, dpi)
        except (ValueError, OverflowError, ArithmeticError, RuntimeError) as e:
            fig = _placeholder_figure(key, f"could not draw: {type(e).__name__}", dpi)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _curve_figure(series, key: str, x_axis: str, legend: bool, dpi: int) -> Figure:
    _, x_label = X_AXES[x_axis]
    cleaned = [(index, run, *_plottable(xs, ys)) for index, run, xs, ys in series]
    dropped = sum(c[4] for c in cleaned)
    cleaned = [c for c in cleaned if c[2]]
    title = _plain(title_of(key)) + (f" ({dropped} extreme values not shown)" if dropped else "")
    if not cleaned:
        return _placeholder_figure(key, "no plottable values", dpi)
    scale, unit = (1.0, "")
    if x_axis == "time":
        scale, unit = _time_scale(max(max(xs) for _, _, xs, _, _ in cleaned))
    fig = Figure(figsize=(4.8, 3.0), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lowest, highest = float("inf"), float("-inf")
    for index, run, xs, ys, _ in cleaned:
        xs = [x / scale for x in xs]
        lowest, highest = min(lowest, *xs), max(highest, *xs)
        color = run_color(index)
        label = _plain(run.label or run.name)
        if len(ys) >= 30:
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _moving_average(ys, max(5, len(ys) // 20)), color=color, linewidth=1.6, label=label)
        else:
            ax.plot(xs, ys, color=color, linewidth=1.4, marker="o", markersize=3.5, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{x_label} ({unit})" if unit else x_label, fontsize=8)
    ax.tick_params(labelsize=8)
    if highest == lowest:  # a single x value: give it room (and integer ticks a chance)
        pad = max(1.0, abs(highest) * 0.1) if x_axis != "time" else max(abs(highest) * 0.1, 1e-3)
        ax.set_xlim(lowest - pad, highest + pad)
    if x_axis != "time":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _placeholder_figure(key: str, message: str, dpi: int) -> Figure:
    fig = Figure(figsize=(4.8, 3.0), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.6, _plain(title_of(key)), ha="center", fontsize=10)
    fig.text(0.5, 0.45, message, ha="center", fontsize=9, color="#a50e0e")
    return fig


def metric_sort_key(key: str) -> tuple[int, int, str]:
    """Reading order of evaluation metrics (with or without ``val/``): task, test case, score,
    accuracy, pass@k, then the rest; within a group mean@k before best@k before the bootstrap."""
    name = key[4:] if key.startswith("val/") else key
    groups = ("task/", "test_case/", "score/", "acc/", "pass@", "response_length/")
    group = next((i for i, prefix in enumerate(groups) if name.startswith(prefix)), len(groups))
    kind = 2 if "bootstrap" in name else 1 if "/best@" in name else 0
    return group, kind, name


def val_metric_order(keys: set[str]) -> list[str]:
    """The ``val/`` metrics among ``keys`` (bookkeeping counts left out) in :func:`metric_sort_key` order."""
    return sorted((k for k in keys if k.startswith("val/") and k not in VAL_SKIP), key=metric_sort_key)


def seed_band_png(groups: dict[str, tuple[Any, Any]], x_label: str, title: str, y_label: str = "",
                  dpi: int = 100, references: dict[str, float] | None = None) -> bytes:
    """Mean curve per group with its min-max band over seeds.

    ``groups`` maps a label to ``(xs, values)``: ``xs`` is one x array shared by all seeds (shape
    [points]) or one per seed ([seeds, points]); ``values`` is [seeds, points]. Per-seed x arrays
    (e.g. wall-clock) are averaged for the mean line, and each seed is also drawn faintly.
    ``references`` adds labelled dashed horizontal lines (e.g. the score of a trivial answer).
    """
    import numpy as np

    fig = Figure(figsize=(5.6, 3.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, (label, (xs, values)) in enumerate(groups.items()):
        values = np.atleast_2d(np.asarray(values, dtype=float))
        xs = np.asarray(xs, dtype=float)
        x_mean = xs.mean(axis=0) if xs.ndim == 2 else xs
        color = run_color(index)
        ax.plot(x_mean, values.mean(axis=0), color=color, marker="o", markersize=3,
                label=f"{_plain(label)} ({len(values)} seed{'s' if len(values) > 1 else ''})")
        ax.fill_between(x_mean, values.min(axis=0), values.max(axis=0), color=color, alpha=0.15, linewidth=0)
        if xs.ndim == 2:
            for seed_x, seed_y in zip(xs, values, strict=True):
                ax.plot(seed_x, seed_y, color=color, alpha=0.25, linewidth=0.8)
    for label, y in (references or {}).items():
        ax.axhline(y, color="0.4", linestyle="--", linewidth=1, label=_plain(label))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(_plain(title), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
