"""Correct factories for the three Manufactoria-Has families, built as finite automata.

Each automaton state becomes a two-node "read one symbol" gadget: a PULLER_RB whose [EMPTY]
branch leads to a PULLER_YG. A Y/G symbol passes the first puller untouched (EMPTY branch, no
pop) and is read by the second; the second's [EMPTY] branch is therefore reached only when the
tape is really empty. Reaching an accepting state routes straight to ``end``.

These programs are the reference solutions used by the tests and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

COLOURS = "RBYG"


def _automaton_program(
    initial: Hashable,
    step: Callable[[Hashable, str], Hashable],
    accepting: Callable[[Hashable], bool],
) -> str:
    """DSL text of the automaton reachable from ``initial``; it accepts on reaching an accepting state."""
    names: dict[Hashable, str] = {}
    order: list[Hashable] = []

    def name(state: Hashable) -> str:
        if accepting(state):
            return "end"
        if state not in names:
            names[state] = f"q{len(names)}"
            order.append(state)
        return names[state]

    lines = ["START start:", f"    NEXT {name(initial)}_rb", ""]
    index = 0
    while index < len(order):  # breadth-first, so new states are appended while iterating
        state = order[index]
        index += 1
        q = names[state]
        targets = {}
        for c in COLOURS:
            nxt = name(step(state, c))
            targets[c] = nxt if nxt == "end" else f"{nxt}_rb"
        lines += [
            f"PULLER_RB {q}_rb:",
            f"    [R] {targets['R']}",
            f"    [B] {targets['B']}",
            f"    [EMPTY] {q}_yg",
            f"PULLER_YG {q}_yg:",
            f"    [Y] {targets['Y']}",
            f"    [G] {targets['G']}",
            "    [EMPTY] NONE",
            "",
        ]
    if accepting(initial):  # every tape is accepted: no states were created
        lines = ["START start:", "    NEXT end", ""]
    lines.append("END end")
    return "\n".join(lines)


def count_program(requirements: Mapping[str, int]) -> str:
    """Accept iff the tape has at least ``n`` symbols ``c`` for every ``c: n`` in ``requirements``."""
    colours = sorted(requirements)
    caps = tuple(requirements[c] for c in colours)

    def step(state: Hashable, c: str) -> Hashable:
        counts = list(state)  # type: ignore[call-overload]
        if c in colours:
            i = colours.index(c)
            counts[i] = min(caps[i], counts[i] + 1)
        return tuple(counts)

    return _automaton_program(tuple(0 for _ in colours), step, lambda s: s == caps)


def subsequence_program(pattern: str) -> str:
    """Accept iff ``pattern`` occurs in the tape as a (not necessarily consecutive) subsequence."""

    def step(matched: Hashable, c: str) -> Hashable:
        return matched + 1 if c == pattern[matched] else matched  # type: ignore[index,operator]

    return _automaton_program(0, step, lambda matched: matched == len(pattern))


def _kmp_step(pattern: str, matched: int, c: str) -> int:
    """Length of the longest prefix of ``pattern`` that ends the text ``pattern[:matched] + c``."""
    text = pattern[:matched] + c
    for length in range(min(len(pattern), len(text)), 0, -1):
        if text.endswith(pattern[:length]):
            return length
    return 0


def substring_program(pattern: str) -> str:
    """Accept iff ``pattern`` occurs in the tape as consecutive symbols."""
    return _automaton_program(
        0, lambda matched, c: _kmp_step(pattern, matched, c), lambda matched: matched == len(pattern)
    )


def solution_for(family: str, params: Mapping[str, object]) -> str:
    """The reference program of a generated problem (see ``generator.HasProblem.params``)."""
    if family == "contains_count":
        requirements = params["requirements"]
        if not isinstance(requirements, Mapping):
            raise TypeError("contains_count needs a mapping 'requirements'")
        return count_program(requirements)
    pattern = params["pattern"]
    if not isinstance(pattern, str):
        raise TypeError(f"{family} needs a string 'pattern'")
    if family == "contains_ordered":
        return subsequence_program(pattern)
    if family == "contains_substring":
        return substring_program(pattern)
    raise ValueError(f"unknown Manufactoria-Has family {family!r}")


def reject_all_program() -> str:
    """A wrong program that rejects every tape (START routes to NONE)."""
    return "START start:\n    NEXT NONE\n\nEND end"


def accept_all_program() -> str:
    """A wrong program that accepts every tape."""
    return "START start:\n    NEXT end\n\nEND end"

