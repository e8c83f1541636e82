"""Text generation for the reflector and curator: chat messages in, text out.

Three backends share one call signature, ``generate(list_of_chat_messages) -> list_of_texts``:

- :class:`PolicyTextGenerator`: the current policy through the rollout backend (RESD's reference
  behaviour: reflections come from the same weights that produced the rollout);
- :class:`ModelTextGenerator`: a separate Hugging Face model;
- :class:`HTTPTextGenerator`: an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Under torchrun every rank holds the same conversations; :class:`SharedTextGenerator` makes each
answer once (each rank its share) and gives every rank all of them, so that the ranks' playbooks
stay identical whatever the backend samples.

Each also takes ``schemas=`` (one JSON schema or None per conversation): the answer is then
generated under that schema (:mod:`resd.rollout.structured`), with a token limit that always
suffices for it (:func:`resd.context.output_schema.token_budget`). ``constraint_support`` says
how a generator enforces them (None: it cannot).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from resd.context.output_schema import token_budget
from resd.rollout.base import SamplingParams

Messages = list[dict[str, str]]
log = logging.getLogger(__name__)


class TextGenerator(Protocol):
    def __call__(self, conversations: Sequence[Messages], schemas: Sequence[dict | None] | None = None) -> list[str]: ...


def _schema_budget(sampling: SamplingParams, schemas: Sequence[dict | None] | None, fit: bool) -> SamplingParams:
    """The sampling limits of a constrained call: ``max_new_tokens`` becomes the schemas' token
    budget (``fit``: exactly that, else at least that), which no constrained answer can exceed."""
    budgets = [token_budget(s) for s in schemas or () if s is not None]
    if not budgets:
        return sampling
    limit = max(budgets) if fit else max(max(budgets), sampling.max_new_tokens)
    return dataclasses.replace(sampling, max_new_tokens=limit)


class PolicyTextGenerator:
    """Generates with a rollout backend (``HFGenerator`` or any :class:`~resd.rollout.Generator`)."""

    def __init__(self, generator, tokenizer, sampling: SamplingParams, max_prompt_tokens: int | None = None,
                 chat_template_kwargs: dict[str, Any] | None = None, seed_fn=None) -> None:
        self.generator = generator
        self.seed_fn = seed_fn  # count -> per-conversation seeds (or None for the global RNG)
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.max_prompt_tokens = max_prompt_tokens
        self.chat_template_kwargs = chat_template_kwargs or {}

    @property
    def constraint_support(self):
        """How the rollout backend enforces schemas (:data:`resd.rollout.structured.Support`)."""
        return getattr(self.generator, "constraint_support", None)

    def draw_seeds(self, count: int) -> list[int] | None:
        """One sampling seed per conversation of a call (None: the global RNG). Drawn for all
        conversations before any sharing, so that an answer does not depend on the world size."""
        return self.seed_fn(count) if self.seed_fn is not None else None

    def __call__(self, conversations: Sequence[Messages], schemas: Sequence[dict | None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """Answer each conversation (``seeds``: one per conversation, else :meth:`draw_seeds`)."""
        from resd.models import chat_prompt_ids

        if not conversations:
            return []
        if schemas is not None and len(schemas) != len(conversations):
            raise ValueError(f"got {len(schemas)} schemas for {len(conversations)} conversations")
        if seeds is None:
            seeds = self.draw_seeds(len(conversations))
        elif len(seeds) != len(conversations):
            raise ValueError(f"got {len(seeds)} seeds for {len(conversations)} conversations")
        # An over-long reflector/curator prompt keeps its end (the instructions and the generation
        # prompt) rather than crashing the run as the reference implementation does.
        prompts = [
            chat_prompt_ids(self.tokenizer, c, self.max_prompt_tokens, "left", self.chat_template_kwargs)[0]
            for c in conversations
        ]
        constraints = list(schemas) if schemas is not None and any(s is not None for s in schemas) else None
        # Prompts of similar length generate together (less left padding). Each sequence has its
        # own seed, so the order changes nothing else; without seeds it is kept as given.
        order = list(range(len(prompts)))
        if seeds is not None:
            order.sort(key=lambda i: len(prompts[i]))
        kwargs = {"constraints": [constraints[i] for i in order]} if constraints is not None else {}
        sampling = _schema_budget(self.sampling, constraints, fit=True)
        generated = self.generator.generate([prompts[i] for i in order], 1, sampling,
                                            [seeds[i] for i in order] if seeds is not None else None, **kwargs)
        rollouts = [None] * len(prompts)
        for i, rollout in zip(order, generated, strict=True):
            rollouts[i] = rollout
        return self.tokenizer.batch_decode([r.response_ids for r in rollouts], skip_special_tokens=True)


class ModelTextGenerator(PolicyTextGenerator):
    """A separate Hugging Face causal LM (loaded once) as reflector/curator."""

    def __init__(self, model_name: str, sampling: SamplingParams, dtype: str = "bf16", batch_size: int = 8,
                 max_prompt_tokens: int | None = None) -> None:
        from resd.models import load_model, load_tokenizer
        from resd.rollout.hf import HFGenerator

        tokenizer = load_tokenizer(model_name, key="resd.reflector.model")
        model = load_model(model_name, dtype, tokenizer, key="resd.reflector.model")
        model.requires_grad_(False)
        super().__init__(HFGenerator(model, tokenizer, batch_size), tokenizer, sampling, max_prompt_tokens)


class HTTPTextGenerator:
    """An OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp server, a hosted API)."""

    #: the server enforces ``response_format`` (if it supports json_schema: resd cannot tell)
    constraint_support = "server"

    def __init__(self, url: str, model: str, sampling: SamplingParams, api_key_env: str | None = None,
                 timeout_s: float = 300.0, concurrency: int = 8) -> None:
        self.cut_constrained = 0  # constrained answers the server stopped at max_tokens
        self._lock = threading.Lock()
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/v1/chat/completions")
        self.model = model
        self.sampling = sampling
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)

    def request_body(self, messages: Messages, schema: dict | None = None) -> dict[str, Any]:
        """The JSON body of one chat request (``schema``: the answer's JSON schema, as ``response_format``)."""
        from resd.rollout.structured import openai_response_format

        sampling = _schema_budget(self.sampling, [schema], fit=False)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if schema is not None:
            body["response_format"] = openai_response_format(schema)
        return body

    def _one(self, messages: Messages, schema: dict | None = None) -> str:
        body = self.request_body(messages, schema)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode())
            choice = payload["choices"][0]
            if schema is not None and choice.get("finish_reason") == "length":
                self._note_cut(body["max_tokens"])
            return str(choice["message"]["content"] or "")
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            # A failed call is an unusable reflection, counted by the parser; it must not stop training.
            return f"INCORRECT_DUE_TO_EMPTY_RESPONSE ({type(e).__name__}: {e})"

    def _note_cut(self, max_tokens: int) -> None:
        with self._lock:
            self.cut_constrained += 1
            first = self.cut_constrained == 1
        if first:
            # The token limit covers the schema's longest answer written without free whitespace; a
            # grammar that lets the model emit whitespace anywhere can run past it (small models do).
            log.warning(
                "the reflector server (%s) stopped a schema-constrained answer at max_tokens=%d, so it will not "
                "parse: its JSON grammar allows free whitespace. Start vLLM with --structured-outputs-config "
                "'{\"backend\": \"guidance\", \"disable_any_whitespace\": true}' (docs/reflector-server.md)",
                self.url, max_tokens)

    def __call__(self, conversations: Sequence[Messages], schemas: Sequence[dict | None] | None = None) -> list[str]:
        """One request per conversation, up to ``concurrency`` at a time; answers in order."""
        if schemas is not None and len(schemas) != len(conversations):
            raise ValueError(f"got {len(schemas)} schemas for {len(conversations)} conversations")
        jobs = [(list(c), schemas[i] if schemas is not None else None) for i, c in enumerate(conversations)]
        if len(jobs) <= 1 or self.concurrency == 1:
            return [self._one(*job) for job in jobs]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            return list(pool.map(lambda job: self._one(*job), jobs))


class SharedTextGenerator:
    """Wraps a generator for several processes: each rank answers its contiguous share of the
    conversations (``dist.share``), then all ranks exchange, so every answer is made once and every
    rank gets the same list (a server's or a second model's sampling would otherwise differ per rank).
    A generator with ``draw_seeds(count)`` (the policy) gets the seeds of all conversations drawn on
    every rank first, and its share of them: answers are then the same for any world size."""

    def __init__(self, inner, dist) -> None:
        self.inner = inner
        self.dist = dist

    @property
    def constraint_support(self):
        return getattr(self.inner, "constraint_support", None)

    def __call__(self, conversations: Sequence[Messages], schemas: Sequence[dict | None] | None = None) -> list[str]:
        if schemas is not None and len(schemas) != len(conversations):
            raise ValueError(f"got {len(schemas)} schemas for {len(conversations)} conversations")
        draw = getattr(self.inner, "draw_seeds", None)
        seeds = draw(len(conversations)) if draw is not None else None
        share = self.dist.share(len(conversations))
        mine = list(conversations[share])
        texts: list[str] = []
        if mine:
            kwargs: dict[str, Any] = {}
            if schemas is not None:
                kwargs["schemas"] = list(schemas[share])
            if seeds is not None:
                kwargs["seeds"] = list(seeds[share])
            texts = self.inner(mine, **kwargs)
            if len(texts) != len(mine):
                raise ValueError(f"the reflector returned {len(texts)} texts for {len(mine)} conversations")
        return [t for part in self.dist.all_gather(list(texts)) for t in part]
