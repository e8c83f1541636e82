"""What changed in a playbook between two snapshots, bullet by bullet (matched by bullet id).

A bullet is ``[id] helpful=H harmful=D :: content`` (:data:`resd.context.playbook.BULLET_RE`). Against
the previous snapshot each bullet of the new one is *added* (id not seen before), *edited* (same id,
other content), *counters* (same content, other helpful/harmful counts) or *same*; bullets of the old
snapshot whose id is gone are *removed* and listed at the end of the section that held them.
Headers (``## ...``) and any other lines are kept as they are.
"""

from __future__ import annotations

import dataclasses

from resd.context.playbook import BULLET_RE


@dataclasses.dataclass(frozen=True)
class ParsedBullet:
    id: str
    helpful: int
    harmful: int
    content: str


@dataclasses.dataclass(frozen=True)
class DiffLine:
    """One displayed line. ``kind``: header, text, same, added, removed, edited, counters.
    ``old`` is the previous bullet for edited/counters lines."""

    kind: str
    text: str
    bullet: ParsedBullet | None = None
    old: ParsedBullet | None = None


@dataclasses.dataclass
class PlaybookDiff:
    lines: list[DiffLine]
    added: int = 0
    removed: int = 0
    edited: int = 0
    counters: int = 0
    bullets: int = 0


def parse_bullet(line: str) -> ParsedBullet | None:
    match = BULLET_RE.match(line.strip())
    if match is None:
        return None
    return ParsedBullet(match.group(1), int(match.group(2)), int(match.group(3)), match.group(4).strip())


def _sections(text: str) -> list[tuple[str | None, list[str]]]:
    """(header line or None for lines before the first header, its lines) in order."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines():
        if line.strip().startswith("##"):
            out.append((line.strip(), []))
        else:
            out[-1][1].append(line)
    return out if out[0][1] else out[1:]


def _header_key(header: str | None) -> str:
    return " ".join(header.lstrip("#").split()).lower() if header else ""


def diff_playbooks(old: str | None, new: str) -> PlaybookDiff:
    """Diff ``new`` against ``old``; with ``old`` None every bullet is *same* (nothing to compare to)."""
    old_bullets: dict[str, tuple[str, ParsedBullet]] = {}
    if old is not None:
        for header, lines in _sections(old):
            for line in lines:
                bullet = parse_bullet(line)
                if bullet is not None and bullet.id not in old_bullets:
                    old_bullets[bullet.id] = (_header_key(header), bullet)
    result = PlaybookDiff([])
    seen: set[str] = set()
    shown_sections: set[str] = set()

    def removed_from(section: str) -> None:
        for bid, (where, bullet) in old_bullets.items():
            if where == section and bid not in new_ids:
                result.lines.append(DiffLine("removed", _render(bullet), bullet))
                result.removed += 1

    new_ids = {b.id for _, lines in _sections(new) for line in lines if (b := parse_bullet(line)) is not None}
    for header, lines in _sections(new):
        key = _header_key(header)
        if header is not None:
            result.lines.append(DiffLine("header", header))
        for line in lines:
            bullet = parse_bullet(line)
            if bullet is None:
                if line.strip():
                    result.lines.append(DiffLine("text", line))
                continue
            result.bullets += 1
            previous = old_bullets.get(bullet.id)
            if old is None or bullet.id in seen:
                kind = "same"
            elif previous is None:
                kind = "added"
            elif previous[1].content != bullet.content:
                kind = "edited"
            elif (previous[1].helpful, previous[1].harmful) != (bullet.helpful, bullet.harmful):
                kind = "counters"
            else:
                kind = "same"
            seen.add(bullet.id)
            if kind != "same":
                setattr(result, kind, getattr(result, kind) + 1)
            result.lines.append(DiffLine(kind, line.strip(), bullet, previous[1] if previous and kind != "added" else None))
        if key not in shown_sections:
            shown_sections.add(key)
            removed_from(key)
    orphans = {where for where, _ in old_bullets.values()} - shown_sections
    if any(bid not in new_ids for bid, (where, _) in old_bullets.items() if where in orphans):
        result.lines.append(DiffLine("header", "## (removed sections)"))
        for section in sorted(orphans):
            removed_from(section)
    return result


def _render(bullet: ParsedBullet) -> str:
    return f"[{bullet.id}] helpful={bullet.helpful} harmful={bullet.harmful} :: {bullet.content}"
