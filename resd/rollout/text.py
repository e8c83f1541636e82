"""Text generation for the reflector and curator: chat messages in, text out.

Three backends share one call signature, ``generate(list_of_chat_messages) -> list_of_texts``:

- :class:`PolicyTextGenerator`: the current policy through the rollout backend (RESD's reference
  behaviour: reflections come from the same weights that produced the rollout);
- :class:`ModelTextGenerator`: a separate Hugging Face model;
- :class:`HTTPTextGenerator`: an OpenAI-compatible ``/v1/chat/completions`` endpoint.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

from resd.rollout.base import SamplingParams

Messages = list[dict[str, str]]


class TextGenerator(Protocol):
    def __call__(self, conversations: Sequence[Messages]) -> list[str]: ...


class PolicyTextGenerator:
    """Generates with a rollout backend (``HFGenerator`` or any :class:`~resd.rollout.Generator`)."""

    def __init__(self, generator, tokenizer, sampling: SamplingParams, max_prompt_tokens: int | None = None,
                 chat_template_kwargs: dict[str, Any] | None = None, seed_fn=None, dist=None) -> None:
        self.generator = generator
        self.dist = dist  # a resd.distributed.DistInfo: each rank writes its share, then all exchange
        self.seed_fn = seed_fn  # count -> per-conversation seeds (or None for the global RNG)
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.max_prompt_tokens = max_prompt_tokens
        self.chat_template_kwargs = chat_template_kwargs or {}

    def __call__(self, conversations: Sequence[Messages]) -> list[str]:
        from resd.models import chat_prompt_ids

        if not conversations:
            return []
        seeds = self.seed_fn(len(conversations)) if self.seed_fn is not None else None
        share = self.dist.share(len(conversations)) if self.dist is not None else slice(0, len(conversations))
        # An over-long reflector/curator prompt keeps its end (the instructions and the generation
        # prompt) rather than crashing the run as the reference implementation does.
        prompts = [
            chat_prompt_ids(self.tokenizer, c, self.max_prompt_tokens, "left", self.chat_template_kwargs)[0]
            for c in conversations[share]
        ]
        rollouts = self.generator.generate(prompts, 1, self.sampling, seeds[share] if seeds is not None else None) if prompts else []
        texts = self.tokenizer.batch_decode([r.response_ids for r in rollouts], skip_special_tokens=True)
        if self.dist is not None and self.dist.enabled:
            texts = [t for part in self.dist.all_gather(texts) for t in part]
        return texts


class ModelTextGenerator(PolicyTextGenerator):
    """A separate Hugging Face causal LM (loaded once) as reflector/curator."""

    def __init__(self, model_name: str, sampling: SamplingParams, dtype: str = "bf16", batch_size: int = 8,
                 max_prompt_tokens: int | None = None) -> None:
        from resd.models import load_model, load_tokenizer
        from resd.rollout.hf import HFGenerator

        tokenizer = load_tokenizer(model_name)
        model = load_model(model_name, dtype, tokenizer)
        model.requires_grad_(False)
        super().__init__(HFGenerator(model, tokenizer, batch_size), tokenizer, sampling, max_prompt_tokens)


class HTTPTextGenerator:
    """An OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp server, a hosted API)."""

    def __init__(self, url: str, model: str, sampling: SamplingParams, api_key_env: str | None = None,
                 timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/v1/chat/completions")
        self.model = model
        self.sampling = sampling
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout_s = timeout_s

    def _one(self, messages: Messages) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_new_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode())
            return str(payload["choices"][0]["message"]["content"] or "")
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            # A failed call is an unusable reflection, counted by the parser; it must not stop training.
            return f"INCORRECT_DUE_TO_EMPTY_RESPONSE ({type(e).__name__}: {e})"

    def __call__(self, conversations: Sequence[Messages]) -> list[str]:
        return [self._one(list(c)) for c in conversations]
