"""Grammar-constrained generation of JSON answers (RESD's reflector and curator).

One JSON schema per sequence (:mod:`resd.context.output_schema` builds them) and three ways to
enforce it, one per text backend:

- Hugging Face ``generate``: :class:`JsonSchemaLogitsProcessor`, a logits processor that masks
  every token the schema does not allow, computed by llguidance (optional extra
  ``resd[structured]``; docs/structured-output.md says why this library);
- vLLM: the engine's own structured outputs (:func:`vllm_structured_kwargs`);
- an OpenAI-compatible server: ``response_format`` of type ``json_schema``
  (:func:`openai_response_format`).

JSON is generated compact (no free whitespace, no string escapes: see
:data:`~resd.context.output_schema.COMPACT_JSON`), which is what makes the schema's byte bound a
token bound.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import LogitsProcessor

from resd.context.output_schema import COMPACT_JSON

#: the library behind the Hugging Face backend's constraints, and the extra that installs it
LIBRARY = "llguidance"
EXTRA = "structured"

#: how a text backend can enforce a schema: "library" (needs llguidance here), "engine" (vLLM
#: ships its own), "server" (an HTTP endpoint, whose support resd cannot see), or None
Support = Literal["library", "engine", "server"] | None

# llguidance's options: compact separators, no whitespace between tokens, no escapes in strings
_COMPILE_OPTIONS = {**COMPACT_JSON, "json_allowed_escapes": ""}


def library_available() -> bool:
    """Whether llguidance can be imported."""
    return importlib.util.find_spec(LIBRARY) is not None


def missing_library_message(key: str = "resd.reflector.constrained") -> str:
    return (f"{key}=true needs the {LIBRARY} package for constrained generation with Hugging Face models: "
            f"pip install 'resd[{EXTRA}]' (or set {key}=null to fall back to unconstrained output)")


def resolve_constrained(setting: bool | None, support: Support, key: str = "resd.reflector.constrained") -> bool:
    """Whether to constrain, from the setting (None: automatic) and what the backend can do.

    Automatic is on for vLLM and for Hugging Face models when llguidance is installed; it is off for
    an HTTP server (resd cannot know whether it accepts ``response_format`` of type json_schema:
    set true for one that does). ``True`` with a backend that cannot, or without llguidance where
    it is needed, raises ``ValueError`` naming the key and the extra to install.
    """
    if setting is False:
        return False
    if support is None:
        if setting:
            raise ValueError(f"{key}=true: this reflector backend cannot constrain its output (use the policy, "
                             "a Hugging Face model, vLLM or an HTTP server with json_schema support)")
        return False
    if support == "library":
        if library_available():
            return True
        if setting:
            raise ValueError(missing_library_message(key))
        return False
    if support == "server":
        return bool(setting)
    return True


def openai_response_format(schema: dict[str, Any], name: str = "resd_answer") -> dict[str, Any]:
    """The ``response_format`` of an OpenAI-compatible chat request that enforces ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


#: vLLM's engine-wide structured-output settings that resd's token budgets assume: a JSON grammar
#: without free whitespace. vLLM 0.32's grammar backends read ``disable_any_whitespace`` from this
#: engine config only (the per-request field is ignored); with its default (xgrammar, whitespace
#: allowed) the 0.5B policy padded 5 of 8 reflections with spaces until ``max_tokens`` cut them
#: (BENCHMARKS.md, "A reflector on a real vLLM server"). ``vllm serve`` takes the same as
#: ``--structured-outputs-config``.
VLLM_STRUCTURED_OUTPUTS_CONFIG: dict[str, Any] = {"backend": "guidance", "disable_any_whitespace": True}


def vllm_engine_kwargs() -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for :data:`VLLM_STRUCTURED_OUTPUTS_CONFIG` (none before
    vLLM 0.10.2, whose engine has no such config)."""
    try:
        from vllm.sampling_params import StructuredOutputsParams  # noqa: F401
    except ImportError:
        return {}
    return {"structured_outputs_config": dict(VLLM_STRUCTURED_OUTPUTS_CONFIG)}


def vllm_structured_kwargs(schema: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` that enforce ``schema``.

    vLLM >= 0.10.2 takes ``structured_outputs=StructuredOutputsParams(json=...)``; older releases
    ``guided_decoding=GuidedDecodingParams(json=...)``. The request also asks for no free
    whitespace, which releases that read it per request honour; the engine setting
    (:data:`VLLM_STRUCTURED_OUTPUTS_CONFIG`) covers those that do not.
    """
    try:
        from vllm.sampling_params import StructuredOutputsParams as Params

        field = "structured_outputs"
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams as Params

        field = "guided_decoding"
    try:
        params = Params(json=schema, disable_any_whitespace=True)
    except TypeError:  # a release without the option: the engine-wide setting applies
        params = Params(json=schema)
    return {field: params}


class _Tokenizers:
    """llguidance's view of each Hugging Face tokenizer (about a second to build: made once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int], tuple[Any, Any]] = {}

    def get(self, tokenizer, vocab_size: int, eos_id: int):
        key = (id(tokenizer), vocab_size)
        with self._lock:
            hit = self._cache.get(key)
            if hit is None or hit[0] is not tokenizer:
                import llguidance.hf

                hit = (tokenizer, llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_id))
                self._cache[key] = hit
            return hit[1]


_TOKENIZERS = _Tokenizers()


def compile_grammar(schema: dict[str, Any]) -> str:
    """llguidance's grammar for ``schema`` with the compact options."""
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_COMPILE_OPTIONS)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, ceil(V / 32)] int32 bit words (bit ``j % 32`` of word ``j // 32`` = token ``j``) -> [B, V] bool."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.bool().reshape(bitmask.shape[0], -1)[:, :vocab_size]


class JsonSchemaLogitsProcessor(LogitsProcessor):
    """Masks, in each row, the tokens that its JSON schema does not allow next.

    Args:
        schemas: one schema per row (None: that row is not constrained).
        tokenizer: the Hugging Face (fast) tokenizer of the model.
        prompt_len: width of the (left-padded) prompt batch: the first call sees no sampled token.
        stop_ids: the stop tokens; the schema's end allows the first of them (the tokenizer's EOS).

    Put it before the sampler in the processor list. A row whose matcher has stopped (the answer is
    complete) or failed (a token outside the grammar, which the mask prevents) may only stop. One
    processor serves one ``generate`` call.
    """

    def __init__(self, schemas: Sequence[dict[str, Any] | None], tokenizer, prompt_len: int,
                 stop_ids: Sequence[int]) -> None:
        self.schemas = list(schemas)
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop_ids = list(stop_ids)
        self.matchers: list[Any] | None = None
        self.bitmask: torch.Tensor | None = None

    def _start(self, vocab_size: int) -> None:
        from llguidance import LLMatcher

        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.stop_ids[0]
        lltok = _TOKENIZERS.get(self.tokenizer, vocab_size, eos)
        grammars: dict[str, str] = {}
        self.matchers = []
        for schema in self.schemas:
            if schema is None:
                self.matchers.append(None)
                continue
            text = json.dumps(schema, sort_keys=False)
            if text not in grammars:
                grammars[text] = compile_grammar(schema)
            matcher = LLMatcher(lltok, grammars[text], log_level=0)
            if matcher.is_error():
                raise ValueError(f"llguidance rejected the schema: {matcher.get_error()}")
            self.matchers.append(matcher)
        self.bitmask = torch.zeros((len(self.schemas), (vocab_size + 31) // 32), dtype=torch.int32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.matchers is None:
            self._start(scores.shape[-1])
        assert self.matchers is not None and self.bitmask is not None
        if input_ids.shape[1] > self.prompt_len:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                matcher = self.matchers[row]
                if matcher is not None and not matcher.is_stopped() and not matcher.is_error():
                    matcher.consume_token(int(token))  # a refused token puts the matcher in its error state
        rows = [i for i, m in enumerate(self.matchers) if m is not None]
        if not rows:
            return scores
        for row in rows:
            matcher = self.matchers[row]
            if matcher.is_error() or matcher.is_stopped():
                self.bitmask[row].zero_()
                for stop in self.stop_ids:
                    self.bitmask[row, stop // 32] |= _bit(stop % 32)
            else:
                # llguidance writes the row's bit words in place (llguidance.torch does the same,
                # but importing it sets up torch.compile)
                words = self.bitmask[row]
                matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())
        allowed = unpack_bitmask(self.bitmask[rows], scores.shape[-1]).to(scores.device)
        index = torch.tensor(rows, device=scores.device)
        scores[index] = scores[index].masked_fill(~allowed, float("-inf"))
        return scores


def _bit(position: int) -> int:
    """The int32 word with bit ``position`` set (bit 31 is the sign bit)."""
    return (1 << position) - (1 << 32) if position == 31 else 1 << position
