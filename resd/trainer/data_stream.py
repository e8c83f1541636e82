"""An endless, resumable stream of training examples (reshuffled each epoch from the seed)."""

from __future__ import annotations

import random
from typing import Any


class DataStream:
    """Yields batches of examples; its position is a small dict saved in checkpoints.

    With ``shuffle`` the order of epoch e is ``Random(seed + e)``-shuffled, so resuming from
    ``(epoch, index)`` reproduces the exact sequence. ``single_pass`` stops after one epoch and
    drops the last incomplete batch (RESD's stream trainer).
    """

    def __init__(self, examples: list[dict[str, Any]], seed: int = 0, shuffle: bool = True, single_pass: bool = False) -> None:
        if not examples:
            raise ValueError("the training split is empty")
        self.examples = examples
        self.seed = seed
        self.shuffle = shuffle
        self.single_pass = single_pass
        self.epoch = 0
        self.index = 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.examples)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def exhausted(self, batch_size: int) -> bool:
        return self.single_pass and (self.epoch > 0 or self.index + batch_size > len(self.examples))

    def next_batch(self, batch_size: int) -> list[dict[str, Any]]:
        if self.exhausted(batch_size):
            raise StopIteration("single pass over the data is complete")
        batch = []
        while len(batch) < batch_size:
            if self.index >= len(self._order):
                self.epoch += 1
                self.index = 0
                self._order = self._make_order()
            batch.append(self.examples[self._order[self.index]])
            self.index += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._make_order()
