"""The solution buffer and the teacher's solution priority (as in horizon-llm/RESD's context updater
and ``_maybe_build_self_distillation_batch`` in ``selfevolve/resd/trainer/ppo/stream_trainer.py``).

The buffer maps an example's stable id to the raw text (thinking included) of its last stored
successful response. Keys are stored as ``str(example_id)`` so that the JSON checkpoint round
trip preserves lookups for integer ids too.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from resd.context.parsing import strip_thinking


class SolutionBuffer:
    """Last successful response per example id."""

    def __init__(self) -> None:
        self._solutions: dict[str, str] = {}

    def store(self, example_id: Any, text: str) -> None:
        """Remember ``text`` (raw, thinking kept) as the solution of ``example_id``."""
        self._solutions[str(example_id)] = text

    def get(self, example_id: Any, *, remove_thinking: bool = False) -> str | None:
        """The stored text, optionally with thinking stripped; None when there is none."""
        text = self._solutions.get(str(example_id))
        if text is None or not remove_thinking:
            return text
        return strip_thinking(text)

    def __contains__(self, example_id: Any) -> bool:
        return str(example_id) in self._solutions

    def __len__(self) -> int:
        return len(self._solutions)

    def to_state(self) -> dict[str, str]:
        return dict(self._solutions)

    @classmethod
    def from_state(cls, state: dict[str, str]) -> SolutionBuffer:
        buffer = cls()
        buffer._solutions = {str(k): str(v) for k, v in state.items()}
        return buffer


def select_solution(index: int, responses: Sequence[str], successes: Sequence[bool],
                    groups: Sequence[Hashable], buffered: str | None, *, allow_self: bool = True,
                    remove_thinking: bool = True) -> tuple[str | None, str]:
    """The solution shown to the teacher for sample ``index`` and where it came from.

    Priority: its own response if it succeeded and ``allow_self`` (i.e. not
    ``dont_reprompt_on_self_success``) -> the first successful other sample of the same group (uid)
    -> ``buffered`` (the buffer's entry for its example) -> none. A successful sample gets no solution
    at all when ``allow_self`` is False, as in RESD (horizon-llm/RESD): the buffer then
    already holds its own text, and a peer would teach it what it already did. Returns
    ``(text, source)`` with source "self", "peer", "buffer" or "none"; thinking is stripped when
    ``remove_thinking``.
    """
    def clean(text: str) -> str:
        return strip_thinking(text) if remove_thinking else text

    if successes[index]:
        return (clean(responses[index]), "self") if allow_self else (None, "none")
    for j, (group, success) in enumerate(zip(groups, successes, strict=True)):
        if j != index and success and group == groups[index]:
            return clean(responses[j]), "peer"
    if buffered is not None:
        return clean(buffered), "buffer"
    return None, "none"
