"""The ACE-style playbook: sections of bullet lessons with helpful/harmful counters.

Text format (that of horizon-llm/RESD, ``selfevolve/resd/context_updater/playbook_utils.py``),
rendered verbatim into prompts::

    ## STRATEGIES & INSIGHTS
    [sai-00001] helpful=2 harmful=0 :: Check the boundary cases first.

    ## FORMULAS & CALCULATIONS
    ...

The playbook is held as sections -> :class:`Bullet` records and rendered to text; parsing keeps
``## `` headers and lines that match :data:`BULLET_RE` and drops everything else. Canonical text
(a header, its bullets, one blank line before the next header) round-trips exactly.

Besides the text, each playbook carries the state RESD keeps per playbook (``_make_fresh_state`` in
horizon-llm/RESD, ``selfevolve/resd/context_updater/playbook_context_updater.py``): the next
id counter (monotonic, ids are never reused), ``update_count`` (one per context update) and
``last_used`` (the step at which a bullet was created or last tagged helpful/harmful), plus the
random generator used by concise so that a resumed run draws the same numbers.
"""

from __future__ import annotations

import dataclasses
import random
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

SECTION_HEADERS: tuple[str, ...] = (
    "STRATEGIES & INSIGHTS",
    "FORMULAS & CALCULATIONS",
    "CODE SNIPPETS & TEMPLATES",
    "COMMON MISTAKES TO AVOID",
    "PROBLEM-SOLVING HEURISTICS",
    "CONTEXT CLUES & INDICATORS",
    "OTHERS",
)

#: the empty playbook: the seven headers separated by blank lines
EMPTY_PLAYBOOK = "\n\n".join(f"## {header}" for header in SECTION_HEADERS)

#: one bullet line, matched on the stripped line: id, helpful, harmful, content
BULLET_RE = re.compile(r"\[([^\]]+)\]\s*helpful=(\d+)\s*harmful=(\d+)\s*::\s*(.*)")

#: known normalized section names -> id slug (our table; unknown names use the initials rule)
SECTION_SLUGS: dict[str, str] = {
    "strategies_and_insights": "sai",
    "financial_strategies_and_insights": "fin",
    "formulas_and_calculations": "calc",
    "code_snippets_and_templates": "code",
    "common_mistakes_to_avoid": "err",
    "problem_solving_heuristics": "prob",
    "context_clues_and_indicators": "ctx",
    "others": "misc",
    "meta_strategies": "meta",
}

GLOBAL_KEY = "__global__"
HELPFUL, HARMFUL, NEUTRAL = "helpful", "harmful", "neutral"
TAGS = (HELPFUL, HARMFUL, NEUTRAL)

_NOT_SLUG = re.compile(r"[^a-z]")


def normalize_section(name: str) -> str:
    """Section key of a header or a curator's section name.

    Lower-case, '&' -> 'and', '-' treated like a space (fixes an upstream bug, see
    ``docs/deviations.md``: PROBLEM-SOLVING HEURISTICS becomes ``problem_solving_heuristics``),
    runs of spaces -> one '_'. Leading '#' are ignored.
    """
    text = name.strip().lstrip("#").lower().replace("&", " and ").replace("-", " ")
    return "_".join(text.split())


def section_slug(section: str) -> str:
    """The id prefix of a section (raw or normalized name): table lookup, else the initials of up
    to 5 words, or the first 4 characters of a single word; only a-z are kept ("misc" if none)."""
    key = normalize_section(section)
    if key in SECTION_SLUGS:
        return SECTION_SLUGS[key]
    words = [w for w in key.split("_") if w]
    slug = "".join(w[0] for w in words[:5]) if len(words) > 1 else key[:4]
    return _NOT_SLUG.sub("", slug) or "misc"


def one_line(text: str) -> str:
    """Collapse multi-line content into one line (lines stripped and joined with spaces)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


@dataclasses.dataclass
class Bullet:
    """One lesson: ``[id] helpful=H harmful=D :: content``."""

    id: str
    content: str
    helpful: int = 0
    harmful: int = 0

    def render(self) -> str:
        return f"[{self.id}] helpful={self.helpful} harmful={self.harmful} :: {self.content}"

    @property
    def kind(self) -> str:
        """Classification used by concise (as in horizon-llm/RESD): "unused", "harmful" or "helpful"."""
        if self.helpful + self.harmful == 0:
            return "unused"
        if self.harmful >= self.helpful and self.harmful > 0:
            return "harmful"
        return "helpful"


@dataclasses.dataclass
class Section:
    """A ``## header`` and its bullets; ``header`` is None for bullets placed before any header."""

    header: str | None
    bullets: list[Bullet] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> str:
        return normalize_section(self.header) if self.header is not None else ""


@dataclasses.dataclass
class TagCounts:
    """What applying one reflection's tags did (for metrics)."""

    helpful: int = 0
    harmful: int = 0
    neutral: int = 0
    unknown_id: int = 0
    invalid_tag: int = 0

    def __iadd__(self, other: TagCounts) -> TagCounts:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self

    @property
    def applied(self) -> int:
        return self.helpful + self.harmful + self.neutral


def _new_rng(seed: int) -> random.Random:
    return random.Random(seed)


def _rng_state_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_json(state: Any, seed: int) -> random.Random:
    rng = _new_rng(seed)
    if state is not None:
        version, internal, gauss = state
        rng.setstate((version, tuple(internal), gauss))
    return rng


class Playbook:
    """A playbook with its per-playbook state (next id, update count, last-used steps, rng)."""

    def __init__(self, sections: list[Section] | None = None, *, next_id: int | None = None,
                 update_count: int = 0, last_used: dict[str, int] | None = None, seed: int = 0) -> None:
        self.sections: list[Section] = sections if sections is not None else [
            Section(header) for header in SECTION_HEADERS
        ]
        existing = [_id_number(b.id) for b in self.bullets()]
        floor = max([n for n in existing if n is not None], default=0) + 1
        self.next_id: int = max(next_id or 1, floor)
        self.update_count: int = update_count
        self.last_used: dict[str, int] = dict(last_used or {})
        self.seed = seed
        self.rng: random.Random = _new_rng(seed)

    # ------------------------------------------------------------------ text
    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> Playbook:
        """Build a playbook from text; lines that are neither headers nor bullets are dropped, as
        are repeated ids (the first occurrence wins). ``kwargs`` go to the constructor."""
        sections: list[Section] = []
        current: Section | None = None
        seen: set[str] = set()
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("##"):
                current = Section(line[2:].strip())
                sections.append(current)
                continue
            match = BULLET_RE.match(line)
            if match is None:
                continue
            bullet = Bullet(match.group(1), match.group(4).strip(), int(match.group(2)), int(match.group(3)))
            if bullet.id in seen:
                continue
            seen.add(bullet.id)
            if current is None:
                current = Section(None)
                sections.append(current)
            current.bullets.append(bullet)
        return cls(sections, **kwargs)

    def render(self) -> str:
        """Canonical text: each header followed by its bullets, blank lines between sections."""
        blocks = []
        for section in self.sections:
            lines = [] if section.header is None else [f"## {section.header}"]
            lines += [b.render() for b in section.bullets]
            if lines:
                blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    __str__ = render

    def is_empty(self) -> bool:
        """True when there is no bullet (the teacher prompt then gets no playbook)."""
        return self.total() == 0

    # --------------------------------------------------------------- lookup
    def bullets(self) -> Iterator[Bullet]:
        """All bullets in playbook order."""
        for section in self.sections:
            yield from section.bullets

    def total(self) -> int:
        return sum(len(s.bullets) for s in self.sections)

    def find(self, bullet_id: str) -> tuple[Section, int] | None:
        """The section holding ``bullet_id`` and its index there, or None."""
        for section in self.sections:
            for index, bullet in enumerate(section.bullets):
                if bullet.id == bullet_id:
                    return section, index
        return None

    def get(self, bullet_id: str) -> Bullet | None:
        found = self.find(bullet_id)
        return None if found is None else found[0].bullets[found[1]]

    def section(self, name: str) -> Section | None:
        """The first section whose normalized header equals ``normalize_section(name)``."""
        key = normalize_section(name)
        for section in self.sections:
            if section.header is not None and section.key == key:
                return section
        return None

    # ------------------------------------------------------------- mutation
    def new_id(self, section_name: str) -> str:
        """A fresh ``<slug>-NNNNN`` id; the counter only grows, so ids are never reused."""
        slug = section_slug(section_name)
        while True:
            bullet_id = f"{slug}-{self.next_id:05d}"
            self.next_id += 1
            if self.get(bullet_id) is None:
                return bullet_id

    def remove(self, ids: Iterable[str]) -> list[str]:
        """Delete the bullets with these ids and forget their last-used steps; returns the ids removed."""
        doomed = set(ids)
        removed = [b.id for b in self.bullets() if b.id in doomed]
        for section in self.sections:
            section.bullets = [b for b in section.bullets if b.id not in doomed]
        for bullet_id in removed:
            self.last_used.pop(bullet_id, None)
        return removed

    def reset(self) -> list[str]:
        """Back to the empty playbook (the id counter keeps going); returns the removed ids."""
        removed = [b.id for b in self.bullets()]
        self.sections = [Section(header) for header in SECTION_HEADERS]
        self.last_used.clear()
        return removed

    def apply_tags(self, tags: Iterable[tuple[str, str]]) -> TagCounts:
        """Apply one reflection's ``(id, tag)`` pairs.

        The last valid tag given for an id wins. helpful -> h+1 and harmful -> d+1, both setting
        ``last_used[id] = update_count``; neutral changes nothing. Tags other than the three known
        ones and ids not in the playbook are ignored and counted.
        """
        counts = TagCounts()
        final: dict[str, str] = {}
        for bullet_id, tag in tags:
            tag = tag.strip().lower()
            if tag not in TAGS:
                counts.invalid_tag += 1
                continue
            final[bullet_id] = tag
        for bullet_id, tag in final.items():
            bullet = self.get(bullet_id)
            if bullet is None:
                counts.unknown_id += 1
                continue
            if tag == HELPFUL:
                bullet.helpful += 1
            elif tag == HARMFUL:
                bullet.harmful += 1
            else:
                counts.neutral += 1
                continue
            setattr(counts, tag, getattr(counts, tag) + 1)
            self.last_used[bullet_id] = self.update_count
        return counts

    def advance(self) -> None:
        """End of one context update: ``update_count += 1``."""
        self.update_count += 1

    # ---------------------------------------------------------------- stats
    def classify(self) -> dict[str, list[str]]:
        """Ids by concise class: {"unused": [...], "harmful": [...], "helpful": [...]}, in order."""
        classes: dict[str, list[str]] = {"unused": [], "harmful": [], "helpful": []}
        for bullet in self.bullets():
            classes[bullet.kind].append(bullet.id)
        return classes

    def stats(self) -> dict[str, Any]:
        """Curator-prompt stats (``get_playbook_stats`` of horizon-llm/RESD's ``playbook_utils.py``):
        totals, high-performing (h > 5 and d < 2), problematic (d >= h and d > 0), unused (h + d = 0)
        in that elif order, and per-section sums keyed by the raw header text (sections with at least
        one bullet)."""
        stats: dict[str, Any] = {"total_bullets": 0, "high_performing": 0, "problematic": 0, "unused": 0,
                                 "by_section": {}}
        for section in self.sections:
            for bullet in section.bullets:
                stats["total_bullets"] += 1
                if bullet.helpful > 5 and bullet.harmful < 2:
                    stats["high_performing"] += 1
                elif bullet.harmful >= bullet.helpful and bullet.harmful > 0:
                    stats["problematic"] += 1
                elif bullet.helpful + bullet.harmful == 0:
                    stats["unused"] += 1
                name = section.header if section.header is not None else ""
                entry = stats["by_section"].setdefault(name, {"count": 0, "helpful": 0, "harmful": 0})
                entry["count"] += 1
                entry["helpful"] += bullet.helpful
                entry["harmful"] += bullet.harmful
        return stats

    # ---------------------------------------------------------------- state
    def to_state(self) -> dict[str, Any]:
        """A JSON-serializable snapshot for checkpoints."""
        return {
            "playbook": self.render(),
            "next_global_id": self.next_id,
            "update_count": self.update_count,
            "bullet_last_used": dict(self.last_used),
            "seed": self.seed,
            "rng_state": _rng_state_to_json(self.rng),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Playbook:
        """Inverse of :meth:`to_state` (the rng continues where it stopped)."""
        seed = int(state.get("seed", 0))
        playbook = cls.parse(state.get("playbook", EMPTY_PLAYBOOK), next_id=int(state.get("next_global_id", 1)),
                             update_count=int(state.get("update_count", 0)),
                             last_used={str(k): int(v) for k, v in state.get("bullet_last_used", {}).items()},
                             seed=seed)
        playbook.rng = _rng_from_json(state.get("rng_state"), seed)
        return playbook


def _id_number(bullet_id: str) -> int | None:
    """The numeric suffix of ``slug-NNNNN`` ids, None for other ids."""
    head, _, tail = bullet_id.rpartition("-")
    return int(tail) if head and tail.isdigit() else None


def _key_seed(seed: int, key: str) -> int:
    """A per-playbook seed that does not depend on Python's randomized str hash."""
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) & 0xFFFFFFFF


class PlaybookStore:
    """The playbooks of a run: one under ``"__global__"`` (mode "global") or one per example id
    (mode "per_example"), created empty on first use."""

    MODES = ("global", "per_example")

    def __init__(self, mode: str = "global", *, seed: int = 0) -> None:
        if mode not in self.MODES:
            raise ValueError(f"playbook_mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.seed = seed
        self.playbooks: dict[str, Playbook] = {}

    def key(self, example_id: Any = None) -> str:
        """The store key of an example: ``__global__`` in global mode, ``str(example_id)`` otherwise."""
        if self.mode == "global":
            return GLOBAL_KEY
        if example_id is None:
            raise ValueError("per_example playbooks need an example id")
        return str(example_id)

    def get(self, example_id: Any = None) -> Playbook:
        """The playbook for an example (the global one in global mode), created if missing."""
        key = self.key(example_id)
        if key not in self.playbooks:
            self.playbooks[key] = Playbook(seed=_key_seed(self.seed, key))
        return self.playbooks[key]

    def items(self) -> list[tuple[str, Playbook]]:
        return list(self.playbooks.items())

    def to_state(self) -> dict[str, Any]:
        return {"mode": self.mode, "seed": self.seed,
                "playbooks": {key: pb.to_state() for key, pb in self.playbooks.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PlaybookStore:
        store = cls(state.get("mode", "global"), seed=int(state.get("seed", 0)))
        store.playbooks = {key: Playbook.from_state(s) for key, s in state.get("playbooks", {}).items()}
        return store
