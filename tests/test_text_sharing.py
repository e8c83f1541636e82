"""Under torchrun the reflector's answers are split over the ranks and exchanged
(:class:`resd.rollout.text.SharedTextGenerator`); with the policy as reflector each conversation
keeps the seed it has in a single process, so the answers do not depend on the world size."""

from __future__ import annotations

import dataclasses

import pytest

from resd.distributed import DistInfo
from resd.rollout.base import SamplingParams
from resd.rollout.text import PolicyTextGenerator, SharedTextGenerator


@dataclasses.dataclass
class OneRankOfMany(DistInfo):
    """One rank run on its own: ``all_gather`` gives this rank's list at its place and empty lists
    at the others' (the test runs every rank in turn and stitches their parts together)."""

    def all_gather(self, obj):
        return [obj if r == self.rank else [] for r in range(self.world)]


def stitched(make_generator, conversations, world: int, schemas=None) -> list[str]:
    texts: list[str] = []
    for rank in range(world):
        dist = OneRankOfMany(rank=rank, world=world)
        texts += SharedTextGenerator(make_generator(), dist)(conversations, schemas)
    return texts


class Seeded:
    """A stand-in reflector with the policy's seeding protocol: answers name their seed."""

    def __init__(self, log: list) -> None:
        self.log = log

    def draw_seeds(self, count: int) -> list[int]:
        return [100 + i for i in range(count)]

    def __call__(self, conversations, seeds=None):
        self.log.append(len(conversations))
        return [f"{c[0]['content']}@{s}" for c, s in zip(conversations, seeds, strict=True)]


def test_each_rank_answers_its_share_with_the_seeds_drawn_for_all():
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    log: list[int] = []
    texts = stitched(lambda: Seeded(log), conversations, world=2)
    assert texts == [f"q{i}@{100 + i}" for i in range(5)]
    assert log == [3, 2]  # every conversation answered once


def test_a_generator_without_seeds_gets_only_its_share_and_schemas():
    seen = []

    def plain(conversations, schemas=None):
        seen.append(([c[0]["content"] for c in conversations], schemas))
        return ["ok"] * len(conversations)

    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    assert stitched(lambda: plain, conversations, world=2, schemas=[{"n": i} for i in range(3)]) == ["ok"] * 3
    assert seen == [(["q0", "q1"], [{"n": 0}, {"n": 1}]), (["q2"], [{"n": 2}])]


def test_policy_answers_do_not_depend_on_the_world_size():
    pytest.importorskip("transformers")
    from resd.models import build_tiny_model, load_tokenizer
    from resd.rollout.hf import HFGenerator

    tokenizer = load_tokenizer("tiny")
    model = build_tiny_model(len(tokenizer), seed=5)

    def policy():
        return PolicyTextGenerator(HFGenerator(model, tokenizer, 8, record_logprobs=False), tokenizer,
                                   SamplingParams(1.0, 1.0, 0, 8), seed_fn=lambda n: [7 * i + 1 for i in range(n)])

    conversations = [[{"role": "user", "content": "reflect " * (i + 1)}] for i in range(5)]
    alone = policy()(conversations)
    assert len(set(alone)) > 1  # the seeds differ per conversation, and so do the answers
    assert stitched(policy, conversations, world=2) == alone
    assert stitched(policy, conversations, world=3) == alone
