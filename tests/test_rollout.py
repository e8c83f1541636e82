"""Rollout backends: seeded sampling is batch-independent and samples the right distribution."""

from __future__ import annotations

import collections

import pytest
import torch

from resd.models import build_tiny_model, chat_prompt_ids
from resd.rollout import HFGenerator, SamplingParams
from resd.rollout.base import mix_seed
from resd.rollout.hf import _SeededSampler


def test_mix_seed_is_stable_and_spreads():
    assert mix_seed(1, "a", 2) == mix_seed(1, "a", 2)
    assert len({mix_seed(0, i) for i in range(1000)}) == 1000
    assert 0 <= mix_seed("x") < 2**63


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 1.0, 0), (1.0, 0.8, 0), (1.0, 1.0, 2)])
def test_seeded_sampler_draws_from_the_warped_distribution(temperature, top_p, top_k):
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    sampling = SamplingParams(temperature, top_p, top_k, 1)
    probs = torch.softmax(logits[0] / temperature, -1)
    if top_k:
        probs[probs.argsort(descending=True)[top_k:]] = 0
    if top_p < 1:
        order = probs.argsort(descending=True)
        cum = probs[order].cumsum(0) - probs[order]
        probs[order[cum > top_p]] = 0
    probs = probs / probs.sum()
    draws = 6000
    counts = collections.Counter(
        int(_SeededSampler([seed], 3, sampling)(torch.zeros(1, 3, dtype=torch.long), logits.clone()).argmax())
        for seed in range(draws)
    )
    for token in range(5):
        expected = float(probs[token])
        got = counts[token] / draws
        assert abs(got - expected) < 4 * (expected * (1 - expected) / draws) ** 0.5 + 1e-9, (token, got, expected)


def test_seeded_generation_does_not_depend_on_batching(tokenizer):
    model = build_tiny_model(len(tokenizer), seed=3)
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": q}])[0] for q in ("a", "bb b", "c c c c")]
    sampling = SamplingParams(1.0, 0.9, 0, 12)
    seeds = [11, 22, 33]
    together = HFGenerator(model, tokenizer, batch_size=16).generate(prompts, 2, sampling, seeds)
    apart = [r for i in range(3) for r in HFGenerator(model, tokenizer, batch_size=1).generate([prompts[i]], 2, sampling, [seeds[i]])]
    assert [r.response_ids for r in together] == [r.response_ids for r in apart]
    assert together[0].response_ids != together[1].response_ids  # the n samples of a prompt differ
    again = HFGenerator(model, tokenizer, batch_size=4).generate(prompts, 2, sampling, seeds)
    assert [r.response_ids for r in again] == [r.response_ids for r in together]
    for a, b in zip(together, apart, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=1e-4)


def test_head_input_is_made_contiguous_once_and_changes_nothing():
    """The head's pre-hook (a CPU speed fix for strided [B, 1, H] inputs) leaves logits unchanged."""
    from resd.models import build_tiny_model
    from resd.models.loading import contiguous_head_input

    model = build_tiny_model(300)
    ids = torch.tensor([[3, 17, 42, 99, 7], [5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = model(ids, logits_to_keep=1).logits
        contiguous_head_input(contiguous_head_input(model))
        head = model.get_output_embeddings()
        assert len(head._forward_pre_hooks) == 1
        seen = []
        head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
        after = model(ids, logits_to_keep=1).logits
    assert seen == [True]
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_shared_prompt_prefix_is_computed_once_and_changes_no_sample(tokenizer):
    """Prompts sharing a long prefix (RESD's reflector prompts) reuse one prefix KV cache: the samples
    and log-probs are those of generation without it, one forward covers the prefix, and each row's
    own tokens are all that the batched prefill computes."""
    from resd.rollout.hf import PREFIX_CACHE_MIN_TOKENS, shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # every prompt keeps a token of its own
    assert shared_prefix_length([[7], [7, 8]]) == 0 and shared_prefix_length([]) == 0
    model = build_tiny_model(len(tokenizer), seed=4)
    instructions = " ".join(f"rule {i}: check the carry." for i in range(30))
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": f"{instructions} Problem {q}"}])[0]
               for q in ("12 * 34", "5 * 6 and more words here", "7")]
    assert shared_prefix_length(prompts) >= PREFIX_CACHE_MIN_TOKENS
    sampling = SamplingParams(1.0, 1.0, 0, 10)
    widths = []
    model.register_forward_hook(lambda _m, args, kwargs, _out: widths.append(kwargs["input_ids"].shape), with_kwargs=True)
    cached = HFGenerator(model, tokenizer, batch_size=8).generate(prompts, 2, sampling, [5, 6, 7])
    prefix = shared_prefix_length(prompts)
    assert widths[0] == (1, prefix)  # the prefix, once
    assert widths[1] == (6, max(len(p) for p in prompts) - prefix)  # then only the rows' own tokens
    widths.clear()
    plain = HFGenerator(model, tokenizer, batch_size=8, prefix_cache=False).generate(prompts, 2, sampling, [5, 6, 7])
    assert widths[0] == (6, max(len(p) for p in prompts))
    assert [r.response_ids for r in cached] == [r.response_ids for r in plain]
    assert any(len(r.response_ids) > 3 for r in cached)
    for a, b in zip(cached, plain, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=1e-4)
