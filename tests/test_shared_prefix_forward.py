"""A context prefix shared by all rows of a micro-batch runs once (``pack_rows(share_prefix=True)``):
the hidden states at the response positions and every gradient are those of the plain forward."""

from __future__ import annotations

import random

import pytest
import torch

from resd.models import build_tiny_model
from resd.models.lora import apply_lora
from resd.rollout.hf import PREFIX_CACHE_MIN_TOKENS, shared_prefix_length
from resd.trainer.forward import pack_rows, response_hidden

VOCAB = 300


def rows(prefix_len: int, seed: int = 0):
    """Contexts sharing ``prefix_len`` tokens with own parts and responses of different lengths."""
    rng = random.Random(seed)
    prefix = [rng.randrange(1, VOCAB) for _ in range(prefix_len)]
    contexts = [prefix + [rng.randrange(1, VOCAB) for _ in range(n)] for n in (1, 9, 4)]
    responses = [[rng.randrange(1, VOCAB) for _ in range(n)] for n in (5, 2, 7)]
    return contexts, responses


def hidden_and_grads(model, packed, weights):
    model.zero_grad()
    hidden = response_hidden(model, packed)
    (hidden * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return hidden.detach(), grads


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_gives_the_plain_forward_and_gradients(lora):
    model = build_tiny_model(VOCAB, seed=1)
    if lora:
        model = apply_lora(model, r=4, alpha=8)
        for name, p in model.named_parameters():  # a fresh adapter is zero: make it count
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    contexts, responses = rows(PREFIX_CACHE_MIN_TOKENS + 6)
    plain = pack_rows(contexts, responses, 0)
    shared = pack_rows(contexts, responses, 0, share_prefix=True)
    assert plain.prefix == 0 and shared.prefix == PREFIX_CACHE_MIN_TOKENS + 6
    weights = torch.randn(sum(map(len, responses)), model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    h_plain, g_plain = hidden_and_grads(model, plain, weights)
    h_shared, g_shared = hidden_and_grads(model, shared, weights)
    torch.testing.assert_close(h_shared, h_plain, atol=1e-5, rtol=1e-5)
    assert g_plain.keys() == g_shared.keys() and g_plain
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_prefix_is_embedded_once():
    model = build_tiny_model(VOCAB, seed=2)
    embedded = []
    model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: embedded.append(args[0].numel()))
    contexts, responses = rows(PREFIX_CACHE_MIN_TOKENS + 10)
    packed = pack_rows(contexts, responses, 0, share_prefix=True)
    with torch.no_grad():
        response_hidden(model, packed)
    width = packed.input_ids.shape[1]
    assert embedded == [packed.prefix, len(contexts) * (width - packed.prefix)]


def test_short_or_single_prefixes_are_not_shared():
    contexts, responses = rows(PREFIX_CACHE_MIN_TOKENS - 1)
    assert pack_rows(contexts, responses, 0, share_prefix=True).prefix == 0
    contexts, responses = rows(PREFIX_CACHE_MIN_TOKENS + 5)
    assert pack_rows(contexts[:1], responses[:1], 0, share_prefix=True).prefix == 0
    # a context that is all prefix keeps its last token to itself (it predicts the first response token)
    same = [contexts[0][:-1]] * 2
    assert pack_rows(same, responses[:2], 0, share_prefix=True).prefix == len(same[0]) - 1


def test_an_update_with_shared_prefixes_moves_the_weights_as_without(tiny_config, tmp_path, monkeypatch):
    """SDPO with a policy-gradient share and two mini-batches (old log-probs, student and teacher
    forwards): the same metrics and weights with the prefix computed once per micro-batch."""
    import copy

    import resd.rollout.hf
    import resd.trainer.learner
    from resd.trainer import Trainer

    # the smoke prompts are short: share any common prefix of 8 tokens or more
    monkeypatch.setattr(resd.rollout.hf, "PREFIX_CACHE_MIN_TOKENS", 8)
    prefixes: list[int] = []

    def spy(model, packed):
        prefixes.append(packed.prefix)
        return response_hidden(model, packed)

    monkeypatch.setattr(resd.trainer.learner, "response_hidden", spy)
    trainers = {share: Trainer(tiny_config(f"train.share_prefix={share}", "loss.pg_weight=0.5", "train.mini_batch_size=2",
                                           f"logging.run_dir={tmp_path / str(share)}"))
                for share in (True, False)}
    samples, _ = trainers[True].sample(trainers[True].data.next_batch(1))
    metrics, weights, seen = {}, {}, {}
    for share, trainer in trainers.items():
        prefixes.clear()
        batch = copy.deepcopy(samples)
        trainer.algorithm.prepare(batch, 1)
        trainer.learner.tokenize_teacher_prompts(batch)
        metrics[share] = trainer.learner.update(batch)
        weights[share] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        seen[share] = list(prefixes)
    assert len(seen[True]) == len(seen[False]) > 0 and set(seen[False]) == {0}
    assert min(seen[True]) >= 8  # every forward shared its rows' prefix (the system prompt at least)
    for key in ("loss/distill", "loss/pg", "actor/grad_norm"):
        assert metrics[True][key] == pytest.approx(metrics[False][key], rel=1e-4, abs=1e-6), key
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=0, atol=1e-5, msg=name)


def test_the_cache_goes_under_the_name_the_model_takes():
    from resd.models.loading import cache_kwargs

    class Decoder(torch.nn.Module):  # a model of transformers 4, before the rename
        def forward(self, input_ids, past_key_values=None, **kwargs):
            return input_ids

    class Model(torch.nn.Module):
        def get_decoder(self):
            return Decoder()

    assert cache_kwargs(Model(), "kv") == {"past_key_values": "kv"}
    assert cache_kwargs(build_tiny_model(VOCAB), "kv") == {"cache": "kv"}


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_rows_cost_counts_what_the_forward_computes(share, seed):
    """RowsCost, grown a row at a time, marks the prefix pack_rows marks and counts the tokens the
    forward embeds (the prefix once, every row padded to the widest)."""
    from resd.trainer.forward import RowsCost

    rng = random.Random(seed)
    shared = [rng.randrange(1, VOCAB) for _ in range(rng.choice([0, 30, 63, 64, 65, 90]))]
    contexts, responses = [], []
    for _ in range(rng.randrange(1, 6)):
        keep = len(shared) if rng.random() < 0.8 else rng.randrange(len(shared) + 1)
        contexts.append(shared[:keep] + [rng.randrange(1, VOCAB) for _ in range(rng.randrange(0, 6))] or [7])
        responses.append([rng.randrange(1, VOCAB) for _ in range(rng.randrange(0, 5))])
    cost = RowsCost(share)
    for context, response in zip(contexts, responses, strict=True):
        cost = cost.add(context, response)
    packed = pack_rows(contexts, responses, 0, share_prefix=share)
    expected = shared_prefix_length(contexts) if share and len(contexts) > 1 else 0  # generation's own reading
    assert cost.prefix == packed.prefix == (expected if expected >= PREFIX_CACHE_MIN_TOKENS else 0)
    model = build_tiny_model(VOCAB, seed=seed)
    embedded = []
    model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: embedded.append(args[0].numel()))
    with torch.no_grad():
        response_hidden(model, packed)
    assert cost.tokens == sum(embedded)


def test_micro_batches_fit_more_rows_when_their_prefix_is_shared(tiny_config, tmp_path):
    """A GRPO group (one prompt, 8 rollouts) under a budget of 3 plain rows: shared, the prompt counts
    once and the whole group fits one micro-batch."""
    from resd.sample import Sample
    from resd.trainer import Trainer

    trainer = Trainer(tiny_config(f"logging.run_dir={tmp_path}", "train.micro_batch_tokens=360"))
    prompt = list(range(1, 101))
    group = [Sample({}, 0, [], prompt, [200 + i] * 20, None, True) for i in range(8)]
    learner = trainer.learner
    learner.share_prefix = False
    assert [len(m) for m in learner._micro_batches(group)] == [3, 3, 2]  # 3 x 120 tokens
    learner.share_prefix = True
    assert [len(m) for m in learner._micro_batches(group)] == [8]  # 99 + 8 x 21 tokens
