"""Rollouts with Hugging Face ``generate`` (the CPU default backend)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from resd.rollout.base import Rollout, SamplingParams, mix_seed, sequence_seeds


class _LogprobRecorder(LogitsProcessor):
    """Records log softmax(logits / T) of each sampled token with O(batch x vocab) memory.

    ``generate`` calls processors before sampling, so the token chosen at step k is only known at
    step k+1 (as the last input id); the previous step's log-probs are kept until then.
    """

    def __init__(self, temperature: float, prompt_len: int) -> None:
        self.temperature = temperature
        self.prompt_len = prompt_len
        self.pending: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def take(self, tokens: torch.Tensor) -> None:
        if self.pending is not None:
            self.values.append(self.pending.gather(-1, tokens[:, None]).squeeze(-1))
            self.pending = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            self.take(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores


class _SeededSampler(LogitsProcessor):
    """Samples each row from its own counter-based random stream (Gumbel-max), so a sequence's
    tokens depend only on its seed and its logits, not on the batch it was generated in.

    Applies temperature, top-k and top-p like the usual warpers, then adds Gumbel noise drawn from
    ``Generator(mix_seed(row_seed, position))``; ``generate`` runs greedily and so picks
    ``argmax(logits / T + gumbel)``, an exact sample of the truncated distribution.
    """

    def __init__(self, row_seeds: Sequence[int], prompt_len: int, sampling: SamplingParams) -> None:
        self.row_seeds = list(row_seeds)
        self.prompt_len = prompt_len
        self.sampling = sampling

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        position = input_ids.shape[1] - self.prompt_len
        logits = scores.float() / self.sampling.temperature
        vocab = logits.shape[-1]
        if self.sampling.top_k and self.sampling.top_k < vocab:
            kth = logits.topk(self.sampling.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.sampling.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs > self.sampling.top_p  # always keeps the first token
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        noise = torch.empty_like(logits)
        for row, seed in enumerate(self.row_seeds):
            gen = torch.Generator().manual_seed(mix_seed(seed, position))
            uniform = torch.rand(vocab, generator=gen).clamp_(1e-20, 1.0 - 1e-7)
            noise[row] = -torch.log(-torch.log(uniform))
        return logits + noise.to(logits.device)


class HFGenerator:
    """Batched sampling with ``model.generate`` on the trainer's own module (weights are shared).

    Args:
        model: the causal LM (the student; generation runs under ``no_grad`` in eval mode).
        tokenizer: its tokenizer (pad and stop tokens).
        batch_size: sequences generated together (prompts x n are split into chunks of this size).
        stop_token_ids: extra stop tokens besides the tokenizer's EOS.
        record_logprobs: record the sampler's log-probs (needed for truncated importance sampling;
            costs a full-vocabulary log-softmax per generated token).
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, stop_token_ids: Sequence[int] = (),
                 record_logprobs: bool = True) -> None:
        self.model = model
        self.record_logprobs = record_logprobs
        self.tokenizer = tokenizer
        self.batch_size = max(1, batch_size)
        stops = {tokenizer.eos_token_id, *stop_token_ids}
        self.stop_ids = sorted(i for i in stops if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def sync_weights(self) -> None:
        """Nothing to do: the generator uses the trainer's module."""

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[Rollout]:
        jobs = [(p, list(prompts[p])) for p in range(len(prompts)) for _ in range(n)]
        row_seeds = sequence_seeds(seeds, n) if seeds is not None else None
        out: list[Rollout] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(jobs), self.batch_size):
                chunk_seeds = row_seeds[start : start + self.batch_size] if row_seeds is not None else None
                out.extend(self._generate_chunk(jobs[start : start + self.batch_size], sampling, chunk_seeds))
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, jobs: list[tuple[int, list[int]]], sampling: SamplingParams,
                        row_seeds: list[int] | None = None) -> list[Rollout]:
        device = next(self.model.parameters()).device
        width = max(len(ids) for _, ids in jobs)
        input_ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, (_, ids) in enumerate(jobs):  # left padding
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        seeded = row_seeds is not None
        config = GenerationConfig(
            do_sample=not seeded,  # seeded rows sample through _SeededSampler and a greedy pick
            temperature=None if seeded else sampling.temperature,
            top_p=None if seeded else sampling.top_p,
            top_k=None if seeded else (sampling.top_k or None),
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        recorder = _LogprobRecorder(sampling.temperature, width) if self.record_logprobs else None
        processors = [p for p in (recorder, _SeededSampler(row_seeds, width, sampling) if seeded else None) if p]
        sequences = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
        ).cpu()
        generated = sequences[:, width:]
        logprobs = None
        if recorder is not None:
            if generated.shape[1]:
                recorder.take(generated[:, -1])
            logprobs = torch.stack(recorder.values, dim=1).cpu() if recorder.values else torch.zeros(len(jobs), 0)
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
