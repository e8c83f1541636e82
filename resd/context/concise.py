"""CONCISE: pruning the playbook and the post-curation trim over the cap.

Pruning is described in arXiv 2605.12741, App. D; both follow ``_maybe_concise`` and
``_concise_playbook`` of horizon-llm/RESD
(``selfevolve/resd/context_updater/playbook_context_updater.py``), whose trim after curation the
paper does not mention.

Triggers, checked at the start of each context update with u = ``playbook.update_count``:

- frequency: ``frequency`` F set, u > 0 and u % F == 0;
- cap: ``max_bullets`` set and the playbook holds more bullets than that.

Only the cap trigger enforces the cap (``effective_max``); a pure frequency trigger just removes
harmful / unused / stale bullets. Methods:

- ``reset``: back to the empty playbook;
- ``prioritized``: remove every unused and harmful bullet; over the cap, also remove a uniformly
  random sample of the excess helpful bullets;
- ``staleness``: remove harmful bullets and unused ones created more than one update ago; over the
  cap, remove the least recently used survivors (ties broken at random).

Random draws use the playbook's own ``random.Random`` (seeded, saved in its state), so a resumed
run draws the same numbers. Rendering from the structured playbook never leaves blank-line runs,
and removed ids are dropped from ``last_used``.
"""

from __future__ import annotations

import dataclasses
import random

from resd.context.playbook import Playbook

METHODS = ("reset", "prioritized", "staleness")


@dataclasses.dataclass
class ConciseResult:
    """What one concise run did: why it ran, with which cap, and the ids it removed."""

    trigger: str  # "frequency", "cap" or "post_curation"
    method: str
    effective_max: int | None
    removed: list[str]


def concise_trigger(update_count: int, total: int, *, frequency: int | None,
                    max_bullets: int | None) -> tuple[str | None, int | None]:
    """``(trigger, effective_max)``: trigger is "cap" (effective_max = max_bullets) when the cap is
    exceeded, else "frequency" (effective_max None) on a frequency step, else ``(None, None)``."""
    if max_bullets is not None and total > max_bullets:
        return "cap", max_bullets
    if frequency and update_count > 0 and update_count % frequency == 0:
        return "frequency", None
    return None, None


def concise(playbook: Playbook, method: str, effective_max: int | None = None,
            rng: random.Random | None = None) -> list[str]:
    """Prune ``playbook`` in place with ``method``; returns the removed ids (in playbook order)."""
    if method not in METHODS:
        raise ValueError(f"concise_method must be one of {METHODS}, got {method!r}")
    rng = rng if rng is not None else playbook.rng
    if method == "reset":
        return playbook.reset()
    classes = playbook.classify()
    helpful, harmful, unused = classes["helpful"], classes["harmful"], classes["unused"]
    u = playbook.update_count
    if method == "prioritized":
        doomed = set(unused) | set(harmful)
        if effective_max is not None and len(helpful) > effective_max:
            doomed |= set(rng.sample(helpful, len(helpful) - effective_max))
    else:  # staleness
        stale = {b for b in unused if u - playbook.last_used.get(b, 0) > 1}
        doomed = set(harmful) | stale
        remaining = [b.id for b in playbook.bullets() if b.id not in doomed]
        n_over = len(remaining) - effective_max if effective_max is not None else 0
        if n_over > 0:
            rng.shuffle(remaining)
            remaining.sort(key=lambda b: playbook.last_used.get(b, 0))
            doomed |= set(remaining[:n_over])
    return playbook.remove(doomed)


def maybe_concise(playbook: Playbook, method: str, *, frequency: int | None,
                  max_bullets: int | None, rng: random.Random | None = None) -> ConciseResult | None:
    """The check at the start of a context update: run concise if a trigger fires."""
    trigger, effective_max = concise_trigger(playbook.update_count, playbook.total(),
                                             frequency=frequency, max_bullets=max_bullets)
    if trigger is None:
        return None
    return ConciseResult(trigger, method, effective_max, concise(playbook, method, effective_max, rng))


def trim_after_curation(playbook: Playbook, method: str, max_bullets: int | None,
                        rng: random.Random | None = None) -> ConciseResult | None:
    """The post-curation trim: if the playbook is over ``max_bullets``, concise it with the cap now."""
    if max_bullets is None or playbook.total() <= max_bullets:
        return None
    return ConciseResult("post_curation", method, max_bullets, concise(playbook, method, max_bullets, rng))
