"""Batched seeded sampling (resd.rollout.sampling): the stream is pinned, draws follow the filtered
softmax, log-probs are the unfiltered ones, and a row's token depends only on its seed and logits."""

from __future__ import annotations

import pytest
import torch

from resd.rollout import SamplingParams
from resd.rollout.hf import _SeededSampler
from resd.rollout.sampling import (
    LEVEL_BLOCK,
    LEVEL_TOKEN,
    Workspace,
    _top_p_boundary,
    sample_tokens,
    step_keys,
    stream_keys,
    stream_uniforms,
)

MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:  # the reference, on Python ints
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _reference_uniform(seed: int, position: int, level: int, index: int) -> float:
    key = _splitmix64(seed ^ 0x5D2B0C6A3E8F1947)
    step = _splitmix64((key + (position + 1) * 0x9E3779B97F4A7C15) & MASK)
    level_key = _splitmix64(step ^ level)
    bits = _splitmix64((level_key + (index + 1) * 0x9E3779B97F4A7C15) & MASK) >> 12
    return (2 * bits + 1) * 2.0**-53


def test_stream_is_integer_arithmetic_pinned_to_a_reference():
    """The same uniforms in every process and on every machine: int64 tensor ops equal the uint64
    reference bit for bit, and a few values are pinned so that a change of the stream is noticed."""
    seed = 0x1234_5678_9ABC_DEF0
    seeds = [0, 1, 12345, 2**63 - 1, seed]
    index = torch.tensor([0, 1, 127, 151935])
    for level in (LEVEL_BLOCK, LEVEL_TOKEN):
        for position in (0, 1, 4095):
            got = stream_uniforms(step_keys(stream_keys(seeds), position), level, index)
            assert got.tolist() == [[_reference_uniform(s, position, level, int(i)) for i in index] for s in seeds]
    step = step_keys(stream_keys([seed]), 3)
    pair = torch.tensor([0, 7])
    assert stream_uniforms(step, LEVEL_TOKEN, pair).tolist() == [[0.26115603247681507, 0.5640650778717192]]
    assert stream_uniforms(step, LEVEL_BLOCK, pair).tolist() == [[0.23694797975418658, 0.9840982322176034]]


def _filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The documented distribution, by sorting (float64): softmax(logits / T) on the kept tokens."""
    s = logits.double() / temperature
    keep = torch.ones_like(s, dtype=torch.bool)
    if 0 < top_k < s.numel():
        keep[:] = False
        keep[s.argsort(descending=True, stable=True)[:top_k]] = True
    if top_p < 1:
        p = torch.where(keep, s, -torch.inf).softmax(-1)
        order = s.argsort(descending=True)
        _, inverse, counts = torch.unique_consecutive(s[order], return_inverse=True, return_counts=True)
        exclusive = p[order].cumsum(0) - p[order]
        greater = torch.empty_like(p)  # the mass of strictly larger logits: exclusive at each tie group's start
        greater[order] = exclusive[(counts.cumsum(0) - counts)[inverse]]
        keep &= greater <= top_p
    return torch.where(keep, s, -torch.inf).softmax(-1)


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    cells = expected > 5
    assert cells.sum() >= 2
    observed = torch.cat([counts[cells], counts[~cells].sum().reshape(1)])
    expected = torch.cat([expected[cells], expected[~cells].sum().reshape(1)])
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    stat = ((observed - expected) ** 2 / expected).sum()
    df = observed.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2.0))


CASES = [  # (vocab, logit scale, temperature, top_k, top_p, rejection attempts, fast_candidates)
    (7, 1.5, 1.0, 0, 1.0, 3, 64),  # neither
    (7, 1.5, 0.7, 0, 1.0, 3, 64),
    (300, 2.0, 1.0, 0, 1.0, 3, 64),  # the two-level race over 3 blocks (a partial one)
    (7, 1.5, 1.0, 3, 1.0, 3, 64),  # top-k only
    (300, 2.0, 0.8, 20, 1.0, 3, 64),
    (7, 1.5, 1.0, 0, 0.8, 3, 64),  # top-p only: by rejection (then the explicit nucleus)
    (300, 2.0, 1.0, 0, 0.5, 1, 64),
    (7, 1.5, 1.0, 0, 0.8, 0, 64),  # top-p only, the explicit nucleus: among the top candidates
    (300, 2.0, 1.0, 0, 0.9, 0, 0),  # ... from the weighted histogram
    (300, 0.05, 1.0, 0, 0.95, 0, 64),  # ... a flat distribution: the histogram
    (7, 1.5, 1.3, 5, 0.7, 3, 64),  # both
    (300, 2.0, 0.8, 50, 0.9, 3, 64),
]


@pytest.mark.parametrize("vocab,scale,temperature,top_k,top_p,attempts,fast", CASES)
def test_token_frequencies_match_the_filtered_softmax(vocab, scale, temperature, top_k, top_p, attempts, fast):
    generator = torch.Generator().manual_seed(vocab + top_k)
    logits = torch.randn(vocab, generator=generator) * scale
    draws = 60_000
    step = step_keys(stream_keys(range(draws)), 5)
    tokens, logprobs = sample_tokens(logits.expand(draws, vocab), step, temperature, top_k, top_p,
                                     return_logprobs=True, attempts=attempts, fast_candidates=fast)
    probs = _filtered_probs(logits, temperature, top_k, top_p)
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    assert _chi_square_p_value(counts, probs) > 1e-4
    full = torch.log_softmax(logits.double() / temperature, -1)  # unfiltered, as the trainer computes it
    torch.testing.assert_close(logprobs.double(), full[tokens], atol=2e-6, rtol=0)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (0, 0.9), (0, 0.3), (40, 1.0), (40, 0.8)])
def test_a_rows_token_depends_only_on_its_seed_and_logits(top_k, top_p):
    generator = torch.Generator().manual_seed(0)
    rows, vocab = 24, 1000
    logits = torch.randn(rows, vocab, generator=generator) * torch.linspace(0.05, 4.0, rows)[:, None]
    seeds = [1000 + i for i in range(rows)]
    step = step_keys(stream_keys(seeds), 9)
    together, lp_together = sample_tokens(logits, step, 0.9, top_k, top_p, return_logprobs=True)
    shared = Workspace()  # scratch memory reused across calls of other shapes changes nothing
    alone = [sample_tokens(logits[i : i + 1], step[i : i + 1], 0.9, top_k, top_p, True, shared) for i in range(rows)]
    assert together.tolist() == [int(t) for t, _ in alone]
    assert torch.equal(lp_together, torch.cat([lp for _, lp in alone]))
    order = torch.randperm(rows, generator=generator)
    shuffled, _ = sample_tokens(logits[order], step[order], 0.9, top_k, top_p)
    assert torch.equal(shuffled, together[order])
    other_position, _ = sample_tokens(logits, step_keys(stream_keys(seeds), 10), 0.9, top_k, top_p)
    assert not torch.equal(other_position, together)


def test_top_p_boundary_is_the_same_from_the_candidates_and_the_histogram():
    """Both ways of finding the nucleus give a boundary with the same logit, also with ties
    (logits on a coarse grid) and for peaked and flat rows mixed in one batch."""
    generator = torch.Generator().manual_seed(1)
    rows, vocab = 12, 5000
    spread = torch.linspace(0.01, 6.0, rows)[:, None]
    logits = (torch.randn(rows, vocab, generator=generator) * spread * 8).round() / 8
    for temperature, top_p in [(1.0, 0.9), (0.6, 0.95), (1.0, 0.5)]:
        row_max = logits.amax(-1, keepdim=True)
        weights = ((logits - row_max) / temperature).exp()
        total = weights.double().sum(-1)
        ws = Workspace()
        by_sort = _top_p_boundary(logits, weights, row_max, total, top_p, temperature, vocab, ws)
        by_histogram = _top_p_boundary(logits, weights, row_max, total, top_p, temperature, 0, ws)
        mixed = _top_p_boundary(logits, weights, row_max, total, top_p, temperature, 64, ws)
        value = lambda ids: logits.gather(-1, ids[:, None]).squeeze(1)  # noqa: E731
        assert torch.equal(value(by_sort), value(by_histogram))
        assert torch.equal(value(by_sort), value(mixed))
        for r in range(rows):  # the reference rule: kept iff the mass of strictly larger logits <= top_p
            probs = _filtered_probs(logits[r], temperature, 0, top_p)
            assert float(value(by_sort)[r]) == float(logits[r][probs > 0].min())


def test_the_processor_returns_a_one_hot_argmax_and_records_unfiltered_logprobs():
    logits = torch.randn(3, 50)
    sampling = SamplingParams(0.8, 0.9, 10, 4)
    sampler = _SeededSampler([5, 6, 7], 2, sampling, record_logprobs=True)
    ids = torch.zeros(3, 4, dtype=torch.long)  # position 2
    out = sampler(ids, logits.clone())
    tokens, logprobs = sample_tokens(logits, step_keys(stream_keys([5, 6, 7]), 2), 0.8, 10, 0.9, True)
    assert torch.equal(out.argmax(-1), tokens)
    assert torch.isinf(out).sum() == 3 * 49
    expected = torch.log_softmax(logits / 0.8, -1).gather(-1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(sampler.logprobs[0], expected)
    again = sampler(torch.zeros(3, 5, dtype=torch.long), logits.flip(-1))  # the next position reuses the answer
    assert again is out and torch.isinf(out).sum() == 3 * 49 and not torch.equal(again.argmax(-1), tokens)
    torch.manual_seed(0)  # unseeded rows follow torch's global generator
    first = _SeededSampler(None, 2, sampling)(ids, logits.clone()).argmax(-1)
    torch.manual_seed(0)
    assert torch.equal(_SeededSampler(None, 2, sampling)(ids, logits.clone()).argmax(-1), first)


def test_generation_matches_a_plain_sampling_loop_and_the_static_cache(tokenizer):
    """HF generate with the sampler is the reference: the same tokens and log-probs come from a
    plain loop (full forward each step, the sampler's draw) and from generate with a static cache."""
    from resd.models import build_tiny_model, chat_prompt_ids
    from resd.rollout import HFGenerator
    from resd.rollout.base import sequence_seeds

    model = build_tiny_model(len(tokenizer), seed=5).eval()
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": q}])[0] for q in ("a b", "c")]
    sampling = SamplingParams(0.9, 0.95, 0, 6)
    dynamic = HFGenerator(model, tokenizer, batch_size=4).generate(prompts, 2, sampling, [3, 4])
    static_generator = HFGenerator(model, tokenizer, batch_size=4, cache_implementation="static")
    static = static_generator.generate(prompts, 2, sampling, [3, 4])
    assert [r.response_ids for r in static] == [r.response_ids for r in dynamic]
    for rollout, seed in zip(dynamic, sequence_seeds([3, 4], 2), strict=True):
        ids = list(prompts[rollout.prompt_index])
        keys = stream_keys([seed])
        for position, token in enumerate(rollout.response_ids):
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[:, -1].float()
            drawn, logprob = sample_tokens(logits, step_keys(keys, position), 0.9, 0, 0.95, True)
            assert int(drawn) == token
            assert abs(float(logprob) - rollout.logprobs[position]) < 1e-4
            ids.append(token)
