"""Rollouts with Hugging Face ``generate`` (the CPU default backend)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.configuration_utils import CompileConfig

from resd.models.loading import cache_kwargs as kv_cache_kwargs
from resd.rollout.base import Rollout, SamplingParams, sequence_seeds
from resd.rollout.sampling import Workspace, random_keys, sample_tokens, step_keys, stream_keys


class _SeededSampler(LogitsProcessor):
    """Samples every row in one batched operation (:func:`resd.rollout.sampling.sample_tokens`).

    With ``row_seeds`` each row draws from its own counter-based random stream, indexed by its seed
    and the position, so a sequence's tokens depend only on its seed and its logits, not on the
    batch it was generated in; without them the uniforms come from torch's global generator.
    Applies temperature, top-k and top-p, then returns scores that are 0 at the sampled token and
    -inf elsewhere, so ``generate`` runs greedily (the same tensor every step: read it before the
    next call). With ``record_logprobs`` it keeps ``log_softmax(logits / T)`` of each sampled token
    (the unfiltered distribution, as the trainer computes it), one [B] tensor per step, in
    ``logprobs``: the chosen token is known in the call, so nothing is kept for the next step.
    """

    def __init__(self, row_seeds: Sequence[int] | None, prompt_len: int, sampling: SamplingParams,
                 record_logprobs: bool = False, workspace: Workspace | None = None) -> None:
        self.keys = stream_keys(row_seeds) if row_seeds is not None else None
        self.prompt_len = prompt_len
        self.sampling = sampling
        self.record_logprobs = record_logprobs
        self.logprobs: list[torch.Tensor] = []
        self.workspace = workspace if workspace is not None else Workspace()
        self._one_hot: torch.Tensor | None = None
        self._marked: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.keys is not None:
            self.keys = self.keys.to(scores.device)
            step = step_keys(self.keys, input_ids.shape[1] - self.prompt_len)
        else:
            step = random_keys(scores.shape[0], scores.device)
        s = self.sampling
        tokens, logprobs = sample_tokens(scores, step, s.temperature, s.top_k, s.top_p, self.record_logprobs,
                                         self.workspace)
        if logprobs is not None:
            self.logprobs.append(logprobs)
        # One [B, V] answer reused across steps (a fresh one costs a page-faulting fill per step):
        # un-mark the previous step's tokens, mark this step's. generate only takes its argmax.
        out = self._one_hot
        if out is None or out.shape != scores.shape:
            out = self._one_hot = self.workspace.get("one_hot", tuple(scores.shape), scores.dtype, scores.device)
            out.fill_(float("-inf"))
        else:
            out.scatter_(1, self._marked, float("-inf"))
        self._marked = tokens[:, None]
        return out.scatter_(1, self._marked, 0.0)


#: a shared prompt prefix shorter than this is recomputed in every row (a separate forward costs more)
PREFIX_CACHE_MIN_TOKENS = 64


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """The number of leading tokens all ``prompts`` share, leaving every prompt at least one token of its own."""
    if not prompts:
        return 0
    first, shortest = prompts[0], min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


class HFGenerator:
    """Batched sampling with ``model.generate`` on the trainer's own module (weights are shared).

    Args:
        model: the causal LM (the student; generation runs under ``no_grad`` in eval mode).
        tokenizer: its tokenizer (pad and stop tokens).
        batch_size: sequences generated together (prompts x n are split into chunks of this size).
        stop_token_ids: extra stop tokens besides the tokenizer's EOS.
        record_logprobs: record the sampler's log-probs (needed for truncated importance sampling;
            costs a log-sum-exp over the vocabulary per step only with top-k, where the draw does
            not compute one anyway).
        cache_implementation: ``generate``'s KV cache (None: dynamic; "static": preallocated for
            the prompt + max_new_tokens, see ``benchmarks/generation_speed.py`` for when it pays).
        compile_decode: let ``generate`` ``torch.compile`` the decode step (needs the static
            cache; on any device).
        prefix_cache: when the prompts of a chunk share their first ``PREFIX_CACHE_MIN_TOKENS`` or
            more tokens (RESD's reflector and curator prompts: the same instructions), compute that
            prefix once and give every row a copy of its KV cache (with the dynamic cache only).
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, stop_token_ids: Sequence[int] = (),
                 record_logprobs: bool = True, cache_implementation: str | None = None,
                 compile_decode: bool = False, prefix_cache: bool = True) -> None:
        self.model = model
        self.prefix_cache = prefix_cache
        self.record_logprobs = record_logprobs
        self.cache_implementation = cache_implementation
        self.compile_decode = compile_decode
        self.tokenizer = tokenizer
        self.batch_size = max(1, batch_size)
        stops = {tokenizer.eos_token_id, *stop_token_ids}
        self.stop_ids = sorted(i for i in stops if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.workspace = Workspace()  # the sampler's scratch memory, kept across calls

    def sync_weights(self) -> None:
        """Nothing to do: the generator uses the trainer's module."""

    #: how this backend enforces a JSON schema (``constraints`` of :meth:`generate`): with llguidance
    constraint_support = "library"

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                 seeds: Sequence[int] | None = None,
                 constraints: Sequence[dict | None] | None = None) -> list[Rollout]:
        """``constraints``: one JSON schema per prompt (or None) that its sequences must follow
        (:class:`resd.rollout.structured.JsonSchemaLogitsProcessor`)."""
        jobs = [(p, list(prompts[p])) for p in range(len(prompts)) for _ in range(n)]
        row_seeds = sequence_seeds(seeds, n) if seeds is not None else None
        if constraints is not None and len(constraints) != len(prompts):
            raise ValueError(f"got {len(constraints)} constraints for {len(prompts)} prompts")
        out: list[Rollout] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(jobs), self.batch_size):
                chunk = jobs[start : start + self.batch_size]
                chunk_seeds = row_seeds[start : start + self.batch_size] if row_seeds is not None else None
                schemas = [constraints[p] for p, _ in chunk] if constraints is not None else None
                out.extend(self._generate_chunk(chunk, sampling, chunk_seeds, schemas))
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, jobs: list[tuple[int, list[int]]], sampling: SamplingParams,
                        row_seeds: list[int] | None = None,
                        schemas: list[dict | None] | None = None) -> list[Rollout]:
        device = next(self.model.parameters()).device
        prefix = 0
        if self.prefix_cache and self.cache_implementation is None and len(jobs) > 1:
            prefix = shared_prefix_length([ids for _, ids in jobs])
            prefix = prefix if prefix >= PREFIX_CACHE_MIN_TOKENS else 0
        # [shared prefix | left padding | each row's own tokens]: the padding sits after the prefix, and
        # positions count attended tokens only, so every token keeps the position it has unpadded
        width = prefix + max(len(ids) - prefix for _, ids in jobs)
        input_ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, (_, ids) in enumerate(jobs):
            own = ids[prefix:]
            input_ids[row, :prefix] = torch.tensor(ids[:prefix], dtype=torch.long)
            input_ids[row, width - len(own) :] = torch.tensor(own, dtype=torch.long)
            attention[row, :prefix] = 1
            attention[row, width - len(own) :] = 1
        cache_kwargs = {}
        if prefix:
            cache = DynamicCache(config=self.model.config)
            cache_kwargs = kv_cache_kwargs(self.model, cache)
            keep = {"logits_to_keep": 1} if getattr(self.model, "_supports_logits_to_keep", lambda: False)() else {}
            self.model(input_ids=input_ids[:1, :prefix].to(device), use_cache=True, **cache_kwargs, **keep)
            cache.batch_repeat_interleave(len(jobs))
        compile_config = None
        if self.compile_decode:
            compile_config = CompileConfig(mode="default")
            compile_config._compile_all_devices = True  # generate only compiles on accelerators otherwise
        config = GenerationConfig(
            do_sample=False,  # every row samples in _SeededSampler; generate picks its token greedily
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            cache_implementation=self.cache_implementation,
            compile_config=compile_config,
            disable_compile=not self.compile_decode,
        )
        sampler = _SeededSampler(row_seeds, width, sampling, self.record_logprobs, self.workspace)
        processors: list[LogitsProcessor] = [sampler]
        if schemas is not None and any(s is not None for s in schemas):
            from resd.rollout.structured import JsonSchemaLogitsProcessor

            # the mask comes first: the sampler draws among the allowed tokens
            processors.insert(0, JsonSchemaLogitsProcessor(schemas, self.tokenizer, width, self.stop_ids))
        sequences = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
            **cache_kwargs,
        ).cpu()
        generated = sequences[:, width:]
        logprobs = None
        if self.record_logprobs:
            steps = sampler.logprobs[: generated.shape[1]]
            logprobs = torch.stack(steps, dim=1).cpu() if steps else torch.zeros(len(jobs), 0)
        rollouts = []
        stop = torch.tensor(self.stop_ids)
        for row, (prompt_index, _) in enumerate(jobs):
            tokens = generated[row]
            hits = torch.isin(tokens, stop).nonzero()
            length = int(hits[0]) + 1 if len(hits) else tokens.shape[0]
            rollouts.append(
                Rollout(
                    prompt_index=prompt_index,
                    response_ids=tokens[:length].tolist(),
                    logprobs=logprobs[row, :length].tolist() if logprobs is not None else None,
                    finished=bool(len(hits)),
                )
            )
        return rollouts
