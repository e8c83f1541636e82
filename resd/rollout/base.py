"""The generator interface shared by every rollout backend."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Protocol


def mix_seed(*parts: object) -> int:
    """A stable 63-bit seed from any tuple of ints and strings (independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sequence_seeds(prompt_seeds: Sequence[int], n: int) -> list[int]:
    """One seed per sequence, grouped by prompt: sample ``j`` of prompt ``p`` gets ``mix_seed(seed_p, j)``."""
    return [mix_seed(seed, j) for seed in prompt_seeds for j in range(n)]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How responses are sampled. ``top_k=0`` disables top-k."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256


@dataclasses.dataclass
class Rollout:
    """One sampled response.

    Attributes:
        prompt_index: index of its prompt in the batch passed to ``generate``.
        response_ids: the sampled tokens, up to and including the stop token if one was produced.
        logprobs: the sampler's log-probability of each token under ``softmax(logits / temperature)``
            (no top-p/top-k renormalization), or None if the backend does not provide them.
        finished: True if the response ended with a stop token (False: cut at max_new_tokens).
    """

    prompt_index: int
    response_ids: list[int]
    logprobs: list[float] | None
    finished: bool

    @property
    def truncated(self) -> bool:
        return not self.finished


class Generator(Protocol):
    """A rollout backend: samples ``n`` responses for each prompt (given as token ids)."""

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[Rollout]:
        """Return ``len(prompts) * n`` rollouts, grouped by prompt (all of prompt 0 first).

        With ``seeds`` (one per prompt) every sequence is sampled from its own random stream, so
        the result does not depend on how prompts are batched or split across processes.
        A backend that can enforce a JSON schema per prompt also takes ``constraints=`` (one
        schema or None per prompt) and says how in its ``constraint_support`` attribute
        (:data:`resd.rollout.structured.Support`).
        """
        ...

    def sync_weights(self) -> None:
        """Make the sampler use the trainer's current weights (a no-op when it shares them)."""
        ...
