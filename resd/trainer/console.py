"""What a training run prints: a start summary, one metrics line every ``logging.log_every`` steps,
validation results when they are computed, and a closing summary.

Only the first rank prints (one console under ``torchrun``). Lines go through ``tqdm.write`` so that
they do not tear the progress bar.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm


def fmt_number(value: Any) -> str:
    """A short number: integers as such, ``|x| < 1e-3`` in scientific notation (``8.90e-08``, never
    ``0.0000``), others with 3 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        return f"{value:.2e}"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_seconds(seconds: float) -> str:
    """``0.42s``, ``12.3s``, ``3m05s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_count(n: int) -> str:
    """``494M``, ``2.16M``, ``35.2k``, ``512``."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(n)


def losses(metrics: Mapping[str, float]) -> list[tuple[str, float]]:
    """The loss(es) of a step for display: ``loss`` when one objective trains, both names when mixed."""
    found = [(name, metrics[key]) for name, key in (("distill_loss", "loss/distill"), ("pg_loss", "loss/pg"))
             if key in metrics]
    return [("loss", found[0][1])] if len(found) == 1 else found


def step_line(step: int, total: int | None, metrics: Mapping[str, float]) -> str:
    """One line per logged step: step, reward, accuracy, loss, mean response length, step time."""
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    for label, key in (("reward", "reward/mean"), ("acc", "acc/mean")):
        if key in metrics:
            parts.append(f"{label}={fmt_number(metrics[key])}")
    parts += [f"{label}={fmt_number(value)}" for label, value in losses(metrics)]
    if "response_length/mean" in metrics:
        parts.append(f"len={fmt_number(metrics['response_length/mean'])}")
    if "time/step_s" in metrics:
        parts.append(f"time={fmt_seconds(metrics['time/step_s'])}")
    return "  ".join(parts)


def validation_line(step: int, split: str, prompts: int, k: int, summary: Mapping[str, float],
                    aliases: Mapping[str, str], best: bool = False) -> str:
    """The results of one validation: mean@k and best@k of each metric family (a family repeating
    another's values shown once, named in brackets), pass@k."""
    from resd.evaluation.metrics import FAMILIES, alias_note

    parts = [f"validation after step {step} ({split}, {prompts} prompts x {k}):"]
    for family in FAMILIES:
        if family in aliases:
            continue
        for stat in ("mean", "best"):
            key = f"{family}/{stat}@{k}"
            if key in summary:
                parts.append(f"{key}={fmt_number(summary[key])}")
    if f"pass@{k}" in summary:
        parts.append(f"pass@{k}={fmt_number(summary[f'pass@{k}'])}")
    note = alias_note(aliases)
    if note:
        parts.append(f"[{note}]")
    if best:
        parts.append("(new best)")
    return " ".join(parts)


class Console:
    """Prints to standard output when ``enabled`` (the first rank, ``logging.console``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def print(self, text: str = "") -> None:
        if not self.enabled:
            return
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    def block(self, title: str, rows: list[tuple[str, str]]) -> None:
        """A title and aligned ``label  value`` rows."""
        width = max((len(label) for label, _ in rows), default=0)
        self.print("\n".join([title, *(f"  {label:<{width}}  {value}" for label, value in rows)]))
