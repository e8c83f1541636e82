"""Curator operations on a playbook (ADD, UPDATE, DELETE, MERGE) and near-duplicate merging.

ADD follows ``apply_curator_operations`` of horizon-llm/RESD
(``selfevolve/resd/context_updater/playbook_utils.py``) exactly, with one addition: when
deduplication is on (the default), a new bullet that is a near-duplicate of an existing one is
folded into it instead of being added.
UPDATE, DELETE and MERGE, which the release accepts and ignores, are implemented here:

- UPDATE ``{id, content}``: rewrite the content of an existing bullet (counters unchanged);
- DELETE ``{id}``: remove a bullet (its id is never reused);
- MERGE ``{ids, content?}``: fold the bullets into the first id, counters summed, content from the
  op or else the first bullet's, ``last_used`` the latest of theirs.

Invalid operations are skipped and counted; nothing here raises on curator output.

Similarity is lexical by default (Jaccard of word sets, cheap and deterministic). An embedding
model can be plugged in with :class:`EmbeddingSimilarity`, which wraps any callable mapping a list
of texts to vectors (e.g. ``SentenceTransformer(...).encode``) and compares them by cosine.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from resd.context.parsing import validate_operation
from resd.context.prompts import PROMPT_SETS
from resd.context.playbook import BULLET_RE, Bullet, Playbook, Section, normalize_section, one_line

Similarity = Callable[[str, str], float]

_WORD = re.compile(r"[a-z0-9]+")


@functools.lru_cache(maxsize=8192)
def word_set(text: str) -> frozenset[str]:
    """Lower-cased alphanumeric tokens of ``text`` (cached: bullets are compared many times)."""
    return frozenset(_WORD.findall(text.lower()))


def jaccard_similarity(a: str, b: str) -> float:
    """|A ∩ B| / |A ∪ B| over the word sets of ``a`` and ``b`` (1.0 for two empty texts)."""
    set_a, set_b = word_set(a), word_set(b)
    if not set_a and not set_b:
        return 1.0
    return len(set_a & set_b) / len(set_a | set_b)


class EmbeddingSimilarity:
    """Cosine similarity of embeddings from ``embed(texts) -> vectors``, cached per text.

    ``prime(texts)`` embeds all uncached texts in one batch; :class:`Dedup` calls it before
    comparing, so the model sees one call per ADD or per deduplication pass.
    """

    def __init__(self, embed: Callable[[list[str]], Sequence[Sequence[float]]]) -> None:
        self.embed = embed
        self._cache: dict[str, list[float]] = {}

    def prime(self, texts: Iterable[str]) -> None:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if not missing:
            return
        for text, vector in zip(missing, self.embed(missing), strict=True):
            values = [float(x) for x in vector]
            norm = math.sqrt(sum(x * x for x in values)) or 1.0
            self._cache[text] = [x / norm for x in values]

    def __call__(self, a: str, b: str) -> float:
        self.prime([a, b])
        return sum(x * y for x, y in zip(self._cache[a], self._cache[b], strict=True))


@dataclasses.dataclass
class Dedup:
    """Near-duplicate detection: two contents are duplicates when similarity >= threshold."""

    threshold: float = 0.8
    similarity: Similarity = jaccard_similarity

    def find(self, content: str, candidates: Sequence[Bullet]) -> Bullet | None:
        """The most similar candidate at or above the threshold (the first one on ties), or None."""
        prime = getattr(self.similarity, "prime", None)
        if prime is not None:
            prime([content] + [b.content for b in candidates])
        best, best_score = None, self.threshold
        for bullet in candidates:
            score = self.similarity(content, bullet.content)
            if score >= best_score and (best is None or score > best_score):
                best, best_score = bullet, score
        return best


#: the default near-duplicate check (word-set Jaccard >= 0.8)
DEFAULT_DEDUP = Dedup()


@dataclasses.dataclass
class CurationSummary:
    """Counts of what a batch of operations did, plus the reason of each skip."""

    added: int = 0
    deduplicated: int = 0
    updated: int = 0
    deleted: int = 0
    merged: int = 0
    skipped: int = 0
    skip_reasons: list[str] = dataclasses.field(default_factory=list)
    added_ids: list[str] = dataclasses.field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.skip_reasons.append(reason)

    def as_metrics(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("added", "deduplicated", "updated", "deleted", "merged", "skipped")}


_PLACEHOLDER = re.compile(r"^\s*(<[^<>]*>|\.\.\.|\[[^\[\]]*\])\s*$")


def clean_content(content: str) -> str:
    """One-line content, without an ``[id] helpful=.. harmful=.. ::`` prefix a model may have copied.

    Content that is only a template placeholder (``<new lesson>``, ``...``) counts as empty: small
    models often copy the curator prompt's example verbatim.
    """
    text = one_line(content)
    match = BULLET_RE.match(text)
    text = match.group(4).strip() if match else text
    if _PLACEHOLDER.match(text) or _copies_a_placeholder(_placeholder_words(text)):
        return ""
    return _without_a_trailing_placeholder(text)


def _placeholder_words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


# The reflector's and curator's own <placeholders>, which small models copy with or without the
# brackets, whole or cut short by a length limit (seen in the efficacy benchmark: "the lesson itself,
# one sentence" and the reflector's "The lesson to remember for similar tasks" added as bullets).
_PROMPT_PLACEHOLDERS = frozenset(
    _placeholder_words(p) for prompts in PROMPT_SETS.values()
    for template in (prompts.reflector, prompts.success_reflector, prompts.curator)
    for p in re.findall(r"<([^<>]+)>", template)
)


def _copies_a_placeholder(words: str) -> bool:
    """``words`` (of :func:`_placeholder_words`) are a placeholder's, or the first three or more of them."""
    if words in _PROMPT_PLACEHOLDERS:
        return True
    return words.count(" ") >= 2 and any(p.startswith(words + " ") for p in _PROMPT_PLACEHOLDERS)


def _without_a_trailing_placeholder(text: str) -> str:
    """``text`` less a placeholder copied after its last comma, semicolon or colon (three words or
    more, whole or cut short): "... at least 2 Ys, the lesson to remember for similar tasks"."""
    cut = max(text.rfind(sep) for sep in ",;:")
    if cut <= 0:
        return text
    tail = _placeholder_words(text[cut + 1:])
    if tail.count(" ") >= 2 and _copies_a_placeholder(tail):
        return text[:cut].rstrip()
    return text


def add_bullet(playbook: Playbook, section: str, content: str, *, dedup: Dedup | None = None,
               general_index: int = 0) -> tuple[str, bool]:
    """ADD one bullet; returns ``(id, created)``, where created is False when it was folded into a
    near-duplicate (whose id is returned and whose ``last_used`` is refreshed).

    The section name is normalized; a name that is no existing section and not ``general`` goes
    to ``others``. Bullets go to the end of their section; ``general`` ones (no such header) go
    right after the ``## OTHERS`` header, at ``general_index`` among the bullets placed there by the
    same batch, or at the very end of the playbook when there is no OTHERS header.
    """
    text = clean_content(content)
    if not text:
        raise ValueError("empty content")
    if dedup is not None:
        twin = dedup.find(text, list(playbook.bullets()))
        if twin is not None:
            playbook.last_used[twin.id] = playbook.update_count
            return twin.id, False
    key = normalize_section(section)
    target = playbook.section(key)
    if target is None and key != "general":
        key = "others"
        target = playbook.section(key)
    bullet = Bullet(playbook.new_id(key), text)
    if target is not None:
        target.bullets.append(bullet)
    elif key == "general" and playbook.section("others") is not None:
        others = playbook.section("others")
        others.bullets.insert(min(general_index, len(others.bullets)), bullet)
    elif playbook.sections:
        playbook.sections[-1].bullets.append(bullet)
    else:
        playbook.sections.append(Section(None, [bullet]))
    playbook.last_used[bullet.id] = playbook.update_count
    return bullet.id, True


def merge_bullets(playbook: Playbook, ids: Sequence[str], content: str | None = None) -> Bullet:
    """Fold the bullets ``ids`` (all existing, at least two distinct) into the first one."""
    unique = list(dict.fromkeys(ids))
    bullets = [playbook.get(i) for i in unique]
    if len(unique) < 2 or any(b is None for b in bullets):
        raise ValueError("MERGE needs at least two distinct existing ids")
    first = bullets[0]
    assert first is not None
    steps = [playbook.last_used[i] for i in unique if i in playbook.last_used]
    first.helpful = sum(b.helpful for b in bullets if b is not None)
    first.harmful = sum(b.harmful for b in bullets if b is not None)
    if content is not None and clean_content(content):
        first.content = clean_content(content)
    playbook.remove(unique[1:])
    if steps:
        playbook.last_used[first.id] = max(steps)
    return first


def apply_operations(playbook: Playbook, operations: Iterable[Any], *,
                     dedup: Dedup | None = DEFAULT_DEDUP) -> CurationSummary:
    """Apply curator operations in order; invalid ones are skipped and counted, never raised.

    ``dedup=None`` gives the release's ADD behaviour (no near-duplicate check).
    """
    summary = CurationSummary()
    general_index = 0
    for op in operations:
        problem = validate_operation(op)
        if problem:
            summary.skip(problem)
            continue
        kind = op["type"].strip().upper()
        if kind == "ADD":
            if not clean_content(op["content"]):
                summary.skip("ADD with empty content")
                continue
            is_general = normalize_section(op["section"]) == "general" and playbook.section("general") is None
            bullet_id, created = add_bullet(playbook, op["section"], op["content"], dedup=dedup,
                                            general_index=general_index)
            if created:
                summary.added += 1
                summary.added_ids.append(bullet_id)
                general_index += is_general
            else:
                summary.deduplicated += 1
        elif kind == "UPDATE":
            bullet = playbook.get(op["id"].strip())
            text = clean_content(op["content"])
            if bullet is None or not text:
                summary.skip(f"UPDATE of unknown id {op['id']!r}" if bullet is None else "UPDATE with empty content")
                continue
            bullet.content = text
            summary.updated += 1
        elif kind == "DELETE":
            if not playbook.remove([op["id"].strip()]):
                summary.skip(f"DELETE of unknown id {op['id']!r}")
                continue
            summary.deleted += 1
        elif kind == "MERGE":
            content = op.get("content") if isinstance(op.get("content"), str) else None
            try:
                merge_bullets(playbook, [i.strip() for i in op["ids"]], content)
            except ValueError as e:
                summary.skip(str(e))
                continue
            summary.merged += 1
        else:
            summary.skip(f"unsupported operation type {kind!r}")
    return summary


def deduplicate(playbook: Playbook, dedup: Dedup | None = None) -> list[tuple[str, str]]:
    """Merge near-duplicate bullets in one greedy pass in playbook order: each bullet is folded into
    the most similar earlier survivor (counters summed, earlier id and content kept).

    Returns the ``(kept_id, removed_id)`` pairs.
    """
    dedup = dedup or DEFAULT_DEDUP
    prime = getattr(dedup.similarity, "prime", None)
    if prime is not None:
        prime([b.content for b in playbook.bullets()])
    survivors: list[Bullet] = []
    pairs: list[tuple[str, str]] = []
    for bullet in list(playbook.bullets()):
        twin = dedup.find(bullet.content, survivors)
        if twin is None:
            survivors.append(bullet)
            continue
        merge_bullets(playbook, [twin.id, bullet.id])
        pairs.append((twin.id, bullet.id))
    return pairs
