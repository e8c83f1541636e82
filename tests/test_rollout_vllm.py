"""The vLLM backend's plain parts, checked against the HF backend (vLLM itself needs its own
environment here; see README "vLLM backend" for what was run against a real engine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from resd.rollout.base import mix_seed
from resd.rollout.vllm import policy_weights, request_plan, rollout_from_completion


def test_request_plan_groups_by_prompt_and_seeds_each_sequence():
    plan = request_plan(3, 2, [11, 22, 33])
    assert [(p, j) for p, j, _ in plan] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert plan[3][2] == mix_seed(22, 1)
    assert len({seed for _, _, seed in plan}) == 6
    # a prompt's sequences get the same seeds whatever else is in the batch (or on another rank)
    assert [s for _, _, s in request_plan(1, 2, [22])] == [s for p, _, s in plan if p == 1]
    assert all(seed is None for _, _, seed in request_plan(2, 2, None))
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        request_plan(3, 1, [1, 2])


def _completion(ids, logprobs, reason):
    # the fields of vllm.outputs.CompletionOutput that the backend reads
    entries = None if logprobs is None else [{t: SimpleNamespace(logprob=v)} for t, v in zip(ids, logprobs)]
    return SimpleNamespace(token_ids=ids, logprobs=entries, finish_reason=reason)


def test_rollouts_from_completions():
    r = rollout_from_completion(4, _completion([5, 6, 2], [-0.1, -0.2, -0.3], "stop"), stop_ids=[2])
    assert (r.prompt_index, r.response_ids, r.logprobs, r.finished) == (4, [5, 6, 2], [-0.1, -0.2, -0.3], True)
    cut = rollout_from_completion(0, _completion([5, 6], None, "length"), stop_ids=[2])
    assert cut.truncated and cut.logprobs is None
    # a stop token at the very end counts as finished even if the engine reports the length limit
    assert rollout_from_completion(0, _completion([7, 2], [-1.0, -2.0], "length"), stop_ids=[2]).finished
    assert not rollout_from_completion(0, _completion([], [], "length"), stop_ids=[2]).finished


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_policy_weights_of_a_plain_model_are_its_parameters():
    from resd.models import build_tiny_model

    model = build_tiny_model(300)
    sent = dict(policy_weights(model))
    assert sent.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(sent[n], p) for n, p in model.named_parameters())


def test_policy_weights_merge_the_lora_adapter_like_peft_does():
    """Loading the sent weights into a plain model reproduces the LoRA policy's logits."""
    pytest.importorskip("peft")
    from resd.models import build_tiny_model
    from resd.models.lora import apply_lora

    torch.manual_seed(0)
    policy = apply_lora(build_tiny_model(300), r=4)
    with torch.no_grad():  # a trained-looking adapter (PEFT initializes B to zero)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = {n: p.clone() for n, p in policy.named_parameters()}
    receiver = build_tiny_model(300)
    sent = dict(policy_weights(policy))
    assert sent.keys() == dict(receiver.named_parameters()).keys()
    receiver.load_state_dict(sent, strict=False)
    ids = [3, 17, 42, 99, 7]
    torch.testing.assert_close(_logits(receiver, ids), _logits(policy, ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(receiver, ids), _logits(build_tiny_model(300), ids))
    assert all(torch.equal(before[n], p) for n, p in policy.named_parameters())  # the policy is untouched


def test_trainer_refuses_vllm_without_a_checkpoint(tiny_config):
    from resd.trainer.trainer import Trainer

    with pytest.raises(ValueError, match="rollout.backend=vllm needs a checkpoint"):
        Trainer(tiny_config("rollout.backend=vllm"))
