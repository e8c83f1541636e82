"""Grammar-constrained reflector and curator output with the tiny random model (llguidance).

The random model writes nonsense, so what parses here parses by construction: with constraints on,
every reflection and curation must parse, conform to its schema and end before the token limit.
"""

from __future__ import annotations

import itertools
import json

import pytest

pytest.importorskip("llguidance")

from resd.context.output_schema import conforms, curator_schema_for, reflection_schema_for, token_budget  # noqa: E402
from resd.context.parsing import parse_curator, parse_reflection  # noqa: E402
from resd.context.playbook import Bullet, Playbook  # noqa: E402
from resd.context.prompts import PROMPT_SETS  # noqa: E402
from resd.context.updater import ContextUpdater, UpdaterConfig, UpdateItem  # noqa: E402
from resd.rollout.base import SamplingParams  # noqa: E402
from resd.rollout.text import PolicyTextGenerator  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    from resd.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("tiny")
    return load_model("tiny", "fp32", tokenizer), tokenizer


class Recording:
    """An HFGenerator that keeps every rollout and the schemas it was given."""

    def __init__(self, model, tokenizer, batch_size: int = 8) -> None:
        from resd.rollout.hf import HFGenerator

        self.inner = HFGenerator(model, tokenizer, batch_size, record_logprobs=False)
        self.constraint_support = self.inner.constraint_support
        self.rollouts: list = []
        self.schemas: list = []
        self.limits: list[int] = []

    def generate(self, prompts, n, sampling, seeds=None, constraints=None):
        out = self.inner.generate(prompts, n, sampling, seeds, constraints)
        self.rollouts += out
        self.schemas += list(constraints) if constraints is not None else [None] * len(out)
        self.limits += [sampling.max_new_tokens] * len(out)
        return out


def text_generator(tiny, budget: int = 32, batch_size: int = 8):
    model, tokenizer = tiny
    counter = itertools.count()
    recording = Recording(model, tokenizer, batch_size)
    generate = PolicyTextGenerator(recording, tokenizer, SamplingParams(1.0, 0.95, 0, budget), 1024,
                                   seed_fn=lambda n: [next(counter) for _ in range(n)])
    return generate, recording


def failures(n: int, correct_every: int = 0) -> list[UpdateItem]:
    """A fixed set of attempts at 3 examples; every ``correct_every``-th one is correct."""
    return [UpdateItem(f"ex-{i % 3}", f"What is {i + 11} * {i + 7}?", str(i * 13),
                       f"Wrong: the answer is {(i + 11) * (i + 7)}.",
                       float(correct_every > 0 and i % correct_every == 0)) for i in range(n)]


def seeded_playbook() -> Playbook:
    pb = Playbook()
    for i, text in enumerate(["Multiply the tens first.", "Check the carry.", "Estimate before answering."]):
        section = pb.sections[i]
        section.bullets.append(Bullet(pb.new_id(section.key), text))
    return pb


@pytest.mark.parametrize("prompt_set", ["default", "compact"])
@pytest.mark.parametrize("playbook_mode", ["global", "per_example"])
def test_every_constrained_answer_parses_and_fits(tiny, prompt_set, playbook_mode):
    prompts = PROMPT_SETS[prompt_set]
    updater = ContextUpdater(UpdaterConfig(playbook_mode=playbook_mode, concise_frequency=None, max_bullets=12,
                                           reflector_template=prompts.reflector,
                                           success_reflector_template=prompts.success_reflector,
                                           curator_template=prompts.curator, constrained=True, output_chars=120))
    if playbook_mode == "global":
        updater.store.playbooks[updater.store.key(None)] = seeded_playbook()
    generate, recording = text_generator(tiny)
    for step in range(2):  # the second update sees the bullets the first one added
        _, metrics = updater.update(failures(6, correct_every=3), generate)
        assert metrics["parse/reflector_failures"] == 0 and metrics["parse/curator_failures"] == 0
        assert all(c["ok"] for c in updater.last_curations) and updater.last_curations
    assert len(recording.rollouts) >= 12
    _, tokenizer = tiny
    for rollout, schema, limit in zip(recording.rollouts, recording.schemas, recording.limits, strict=True):
        text = tokenizer.decode(rollout.response_ids, skip_special_tokens=True)
        assert schema is not None and rollout.finished, text  # ended by the grammar, never cut
        assert len(rollout.response_ids) <= token_budget(schema) <= limit
        value = json.loads(text)
        assert conforms(value, schema), text
        parsed = parse_curator(text) if "operations" in schema["properties"] else parse_reflection(text)
        assert parsed.ok and parsed.source == "whole"
    # the tags name real bullets only: nothing was counted as an unknown id or an invalid tag
    assert metrics["tags/unknown_id"] == 0 and metrics["tags/invalid"] == 0


def test_a_minimum_of_curator_operations_is_kept_by_construction(tiny):
    """resd.curator_min_operations=1: every curation proposes an operation, so the playbook grows."""
    prompts = PROMPT_SETS["default"]
    updater = ContextUpdater(UpdaterConfig(concise_frequency=None, max_bullets=12, reflector_template=prompts.reflector,
                                           success_reflector_template=prompts.success_reflector,
                                           curator_template=prompts.curator, constrained=True, output_chars=300,
                                           curator_min_operations=1, dedup_threshold=None))
    generate, recording = text_generator(tiny)
    _, metrics = updater.update(failures(6), generate)
    curations = updater.last_curations
    assert len(curations) == 3 and all(c["ok"] and len(c["operations"]) >= 1 for c in curations)
    assert metrics["playbook/added"] >= 3 and metrics["playbook/size"] >= 3
    curator_schemas = [s for s in recording.schemas if "operations" in s["properties"]]
    assert curator_schemas and all(s["properties"]["operations"]["minItems"] == 1 for s in curator_schemas)
    assert not conforms({"reasoning": "", "operations": []}, curator_schemas[0])


def test_budget_is_sized_from_the_schema_and_smaller_than_the_free_limit(tiny):
    """A small output budget: the schemas' strings shrink, the token limit is the schema's bound."""
    generate, recording = text_generator(tiny, budget=2000)
    pb = seeded_playbook()
    schemas = [reflection_schema_for(pb, PROMPT_SETS["compact"].reflector, 60),
               curator_schema_for(pb, PROMPT_SETS["compact"].curator, 200)]
    conversations = [[{"role": "user", "content": "Reflect."}], [{"role": "user", "content": "Curate."}]]
    texts = generate(conversations, schemas=schemas)
    assert recording.limits == [max(map(token_budget, schemas))] * 2
    assert all(conforms(json.loads(t), s) for t, s in zip(texts, schemas, strict=True))


def test_batched_and_sorted_generation_gives_each_conversation_the_same_answer(tiny):
    """One left-padded call for all conversations (sorted by length) = one call per conversation."""
    pb = seeded_playbook()
    schema = reflection_schema_for(pb, PROMPT_SETS["default"].reflector, 150)
    conversations = [[{"role": "user", "content": "Reflect " + "on this " * k}] for k in (9, 0, 4, 1)]
    model, tokenizer = tiny
    from resd.rollout.hf import HFGenerator

    def run(batch, seeds, schemas=None):
        gen = PolicyTextGenerator(HFGenerator(model, tokenizer, 8, record_logprobs=False), tokenizer,
                                  SamplingParams(1.0, 0.95, 0, 24), 1024, seed_fn=lambda n: seeds[:n])
        return gen(batch, schemas=schemas)

    seeds = [101, 202, 303, 404]
    together = run(conversations, seeds, [schema] * 4)
    alone = [run([c], [s], [schema])[0] for c, s in zip(conversations, seeds, strict=True)]
    assert together == alone
    assert all(conforms(json.loads(t), schema) for t in together)
    free_together = run(conversations, seeds)
    assert free_together == [run([c], [s])[0] for c, s in zip(conversations, seeds, strict=True)]


def test_unconstrained_rows_are_left_alone(tiny):
    import torch

    from resd.rollout.structured import JsonSchemaLogitsProcessor

    model, tokenizer = tiny
    schema = reflection_schema_for(Playbook(), PROMPT_SETS["compact"].reflector, 100)
    processor = JsonSchemaLogitsProcessor([None, schema], tokenizer, prompt_len=3, stop_ids=[tokenizer.eos_token_id])
    scores = torch.zeros(2, model.config.vocab_size)
    out = processor(torch.zeros(2, 3, dtype=torch.long), scores.clone())
    assert torch.isfinite(out[0]).all()
    allowed = torch.isfinite(out[1]).nonzero().flatten().tolist()
    assert allowed and all(tokenizer.decode([t]).startswith("{") for t in allowed)


def test_resd_trains_with_constrained_reflections(tiny_config):
    """A RESD run on the tiny model: the policy writes its reflections under the schemas."""
    from resd.trainer import build_trainer

    config = tiny_config("algorithm=resd", "rollout.n=2", "train.batch_size=2", "stream.num_batches=1",
                         "stream.inner_steps=1", "stream.min_inner_steps=1", "resd.reflector.max_new_tokens=16")
    trainer = build_trainer(config)
    trainer.train()
    updater = trainer.algorithm.updater
    assert updater.config.constrained
    rows = [json.loads(line) for line in trainer.run.metrics.read_text().splitlines()]
    step = next(r for r in rows if "parse/reflector_failures" in r)
    assert step["parse/reflector_failures"] == 0 and step["parse/curator_failures"] == 0


def test_resd_trains_with_a_second_local_model_as_reflector(tiny_config, tmp_path):
    """``resd.reflector.backend=model``: another model, loaded from a directory, reflects and curates
    under the schemas; the policy's weights play no part in it."""
    import torch

    from resd.models import load_model, load_tokenizer
    from resd.rollout.text import ModelTextGenerator
    from resd.trainer import build_trainer

    tokenizer = load_tokenizer("tiny")
    reflector_dir = tmp_path / "reflector"
    torch.manual_seed(123)
    load_model("tiny", "fp32", tokenizer).save_pretrained(reflector_dir)
    tokenizer.save_pretrained(reflector_dir)
    config = tiny_config("algorithm=resd", "rollout.n=2", "train.batch_size=2", "stream.num_batches=1",
                         "stream.inner_steps=1", "stream.min_inner_steps=1", "resd.reflector.max_new_tokens=16",
                         "resd.reflector.backend=model", f"resd.reflector.model={reflector_dir}",
                         "resd.reflector.constrained=true")
    trainer = build_trainer(config)
    generate = trainer.algorithm.text_generate
    assert isinstance(generate, ModelTextGenerator) and generate.generator.model is not trainer.policy.model
    trainer.train()
    assert trainer.algorithm.updater.config.constrained
    rows = [json.loads(line) for line in trainer.run.metrics.read_text().splitlines()]
    step = next(r for r in rows if "parse/reflector_failures" in r)
    assert step["reflection/count"] > 0
    assert step["parse/reflector_failures"] == 0 and step["parse/curator_failures"] == 0
    curations = [json.loads(x) for x in trainer.run.curation.read_text().splitlines()]
    assert curations and all(c["ok"] for c in curations)


def test_curator_min_operations_comes_from_the_config():
    from resd.algorithms.resd import updater_config
    from resd.config import ConfigError, load_config

    assert updater_config(load_config("smoke", overrides=["algorithm=resd"])).curator_min_operations == 0
    config = load_config("smoke", overrides=["algorithm=resd", "resd.curator_min_operations=2"])
    assert updater_config(config).curator_min_operations == 2
    with pytest.raises(ConfigError, match="curator_min_operations"):
        load_config("smoke", overrides=["resd.curator_min_operations=4"])
