"""vLLM rollout backend (``rollout.backend=vllm``; optional extra ``resd[vllm]``).

A colocated engine in the trainer's process: it sleeps while the trainer computes the loss and
steps the optimizer (freeing its KV cache and, at level 2, its weights), and receives the policy's
new weights after every optimizer step. RESD's reflections and curations go through the same
engine (the policy writes them), since :class:`resd.rollout.text.PolicyTextGenerator` calls
:meth:`VLLMGenerator.generate`.

The sampler/trainer mismatch (different kernels, bf16 rounding) is corrected in the trainer by
truncated importance sampling on the log-probabilities this backend returns
(``train.rollout_is_threshold``, 2 by default). vLLM is asked for ``processed_logprobs``: the
log-probability of the sampled token after temperature, which is the trainer's definition when
``top_p = 1`` and ``top_k = 0``; with top-p/top-k vLLM renormalizes over the kept tokens.

Everything that does not need vLLM itself (the request plan, reading outputs back, the weights to
send, including a merged LoRA adapter) is a plain function tested against the HF backend.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from resd.rollout.base import Rollout, SamplingParams, sequence_seeds


def request_plan(n_prompts: int, n: int, seeds: Sequence[int] | None) -> list[tuple[int, int, int | None]]:
    """One request per sequence: (prompt index, sample index, seed), grouped by prompt.

    Each sequence gets its own seed (:func:`~resd.rollout.base.sequence_seeds`, as in the HF
    backend), so results do not depend on how prompts are batched or split across ranks.
    """
    if seeds is not None and len(seeds) != n_prompts:
        raise ValueError(f"got {len(seeds)} seeds for {n_prompts} prompts")
    row_seeds = sequence_seeds(seeds, n) if seeds is not None else [None] * (n_prompts * n)
    return [(p, j, row_seeds[p * n + j]) for p in range(n_prompts) for j in range(n)]


def rollout_from_completion(prompt_index: int, completion: Any, stop_ids: Sequence[int]) -> Rollout:
    """A :class:`Rollout` from one vLLM ``CompletionOutput`` (``token_ids``, ``logprobs``, ``finish_reason``).

    A response counts as finished when vLLM stopped on a stop token (``finish_reason == "stop"``)
    or its last token is one of ``stop_ids``; a length cut is a truncation.
    """
    ids = [int(t) for t in completion.token_ids]
    logprobs = None
    if completion.logprobs is not None:
        logprobs = []
        for token, entry in zip(ids, completion.logprobs, strict=True):
            value = entry[token]
            logprobs.append(float(getattr(value, "logprob", value)))
    finished = completion.finish_reason == "stop" or (bool(ids) and ids[-1] in set(stop_ids))
    return Rollout(prompt_index, ids, logprobs, finished)


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the plain Hugging Face names vLLM loads.

    A PEFT LoRA model yields its base weights with the active adapter merged in
    (``W + scale * B @ A``), without modifying the model.
    """
    get_base = getattr(model, "get_base_model", None)
    if get_base is None:
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    base = get_base()
    deltas: dict[str, torch.Tensor] = {}
    for module_name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            adapters = [a for a in getattr(module, "active_adapters", []) if a in getattr(module, "lora_A", {})]
            if adapters and not getattr(module, "disable_adapters", False):
                with torch.no_grad():
                    deltas[f"{module_name}.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        value = param.detach()
        if plain in deltas:
            value = value + deltas[plain].to(value.dtype)
        yield plain, value


class VLLMGenerator:
    """Samples with a colocated vLLM engine and keeps it in step with the trainer's policy.

    Args:
        model: the trainer's policy (the source of the weights sent after each step).
        tokenizer: the policy's tokenizer (for the stop and pad ids).
        model_path: a Hugging Face checkpoint directory vLLM starts from (same architecture).
        engine_kwargs: passed to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``max_model_len``,
            ``tensor_parallel_size``, ``enforce_eager``).
        sleep_level: 1 (weights kept in CPU memory) or 2 (weights dropped; they are re-sent on
            wake-up anyway); 0 disables sleeping.
        llm: an already built engine (tests, notebooks).
        weights_fn: returns the (name, tensor) pairs to send; default :func:`policy_weights` of
            ``model`` (the trainer passes the gathered full state dict when FSDP shards the model).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, model_path: str | Path, dtype: str = "bfloat16",
                 engine_kwargs: dict[str, Any] | None = None, sleep_level: int = 1, stop_token_ids: Sequence[int] = (),
                 llm: Any = None, weights_fn=None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = sorted({tokenizer.eos_token_id, *stop_token_ids} - {None})
        self.sleep_level = sleep_level
        self.asleep = self.stale = False
        self.weights_fn = weights_fn or (lambda: policy_weights(self.model))
        self.dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
        if llm is None:
            # colocated: the engine runs in this process so that weights can be handed over directly
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            from vllm import LLM

            from resd.rollout.structured import vllm_engine_kwargs

            kwargs = {"dtype": dtype, "enable_sleep_mode": sleep_level > 0, "logprobs_mode": "processed_logprobs",
                      **vllm_engine_kwargs(), **(engine_kwargs or {})}
            llm = LLM(model=str(model_path), **kwargs)
        self.llm = llm

    #: how this backend enforces a JSON schema (``constraints`` of :meth:`generate`): the engine's own
    constraint_support = "engine"

    def _sampling(self, sampling: SamplingParams, seed: int | None, schema: dict | None = None):
        from vllm import SamplingParams as VSamplingParams

        structured = {}
        if schema is not None:
            from resd.rollout.structured import vllm_structured_kwargs

            structured = vllm_structured_kwargs(schema)
        return VSamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                               top_k=sampling.top_k if sampling.top_k > 0 else -1, max_tokens=sampling.max_new_tokens,
                               seed=seed, logprobs=0, stop_token_ids=list(self.stop_ids), skip_special_tokens=False,
                               detokenize=False, **structured)

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                 seeds: Sequence[int] | None = None,
                 constraints: Sequence[dict | None] | None = None) -> list[Rollout]:
        """``constraints``: one JSON schema per prompt (or None), enforced by vLLM's structured outputs."""
        self.wake()
        plan = request_plan(len(prompts), n, seeds)
        if constraints is not None and len(constraints) != len(prompts):
            raise ValueError(f"got {len(constraints)} constraints for {len(prompts)} prompts")
        requests = [{"prompt_token_ids": list(prompts[p])} for p, _, _ in plan]
        params = [self._sampling(sampling, seed, constraints[p] if constraints is not None else None)
                  for p, _, seed in plan]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [rollout_from_completion(p, out.outputs[0], self.stop_ids) for (p, _, _), out in zip(plan, outputs, strict=True)]

    def sleep(self) -> None:
        """Free the engine's memory before the trainer's forward/backward."""
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True
            self.stale = self.sleep_level == 2  # level 2 dropped the weights

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        if self.stale:
            self.sync_weights()

    def sync_weights(self) -> None:
        """Send the policy's current weights (LoRA merged) to the engine."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        weights = [(name, t.to(self.dtype) if t.is_floating_point() else t) for name, t in self.weights_fn()]

        try:  # vLLM >= 0.30: layer-wise in-place reload, which redoes the backend's weight processing
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        except AttributeError:  # older vLLM: load straight into the live model
            def load(model: torch.nn.Module) -> None:
                model.load_weights(weights=weights)

            self.llm.apply_model(load)
        self.stale = False
