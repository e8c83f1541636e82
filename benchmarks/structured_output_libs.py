"""Structured-generation libraries on CPU with transformers' ``generate``: xgrammar, llguidance,
outlines (outlines-core) and lm-format-enforcer, on RESD's reflector and curator schemas.

For each library and model: the one-off tokenizer set-up, the compile time of a per-call schema
(the reflector's and the curator's, with an id enum of a 12-bullet playbook), and generation of
``--rows`` answers in one left-padded batch under the constraint: seconds per generated token in
total and inside the mask computation, whether every answer parses and conforms, whether any was
cut at the token budget. Each library is imported only if it is installed (run this with a
library missing and its row says so), so the script can compare libraries installed side by side
in separate folders:

    PYTHONPATH=/tmp/sg-llguidance python benchmarks/structured_output_libs.py --libs llguidance --model tiny

Results of a run on the 2-core machine are in docs/structured-output.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from resd.context.output_schema import (
    COMPACT_JSON, TEXT_PATTERN, conforms, curator_schema_for, reflection_schema_for, token_budget,
)
from resd.context.playbook import Bullet, Playbook
from resd.context.prompts import CURATOR, REFLECTOR


def demo_playbook(n: int = 12) -> Playbook:
    pb = Playbook()
    for i in range(n):
        section = pb.sections[i % 5]
        section.bullets.append(Bullet(pb.new_id(section.key), f"lesson number {i} about carrying digits"))
    return pb


def length_in_pattern(schema: dict) -> dict:
    """The schema with each string's maxLength moved into its pattern as a counted repetition."""
    schema = copy.deepcopy(schema)

    def rewrite(node):
        if isinstance(node, dict):
            if node.get("pattern") == TEXT_PATTERN:
                node["pattern"] = TEXT_PATTERN[:-2] + "{0,%d}$" % node.pop("maxLength")
            for value in node.values():
                rewrite(value)
        elif isinstance(node, list):
            for value in node:
                rewrite(value)

    rewrite(schema)
    return schema


class Timed(LogitsProcessor):
    """Wraps a mask-applying processor and adds up the time spent in it."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0

    def __call__(self, input_ids, scores):
        start = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - start
        return out


def bits_to_mask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    shifts = torch.arange(32, dtype=torch.int32)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().reshape(bitmask.shape[0], -1)[:, :vocab]


class Library:
    name = ""

    def setup(self, tokenizer, vocab: int) -> None: ...

    def compile(self, schema: dict): ...

    def processor(self, compiled: list, prompt_len: int) -> LogitsProcessor: ...


class Unconstrained(Library):
    """The baseline: the same generation without a mask (the answers are not expected to parse)."""

    name = "none"

    def compile(self, schema):
        return None

    def processor(self, compiled, prompt_len):
        return lambda input_ids, scores: scores


class LLGuidance(Library):
    name = "llguidance"

    def setup(self, tokenizer, vocab):
        import llguidance
        import llguidance.hf

        self.ll = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        self.vocab = vocab

    def compile(self, schema):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(schema, defaults={**COMPACT_JSON, "json_allowed_escapes": ""})
        matcher = self.ll.LLMatcher(self.tok, grammar)
        assert not matcher.is_error(), matcher.get_error()
        return grammar

    def processor(self, compiled, prompt_len):
        import llguidance.torch as llt

        lib, tok, vocab = self.ll, self.tok, self.vocab
        matchers = [lib.LLMatcher(tok, g) for g in compiled]
        bitmask = llt.allocate_token_bitmask(len(matchers), vocab)

        def step(input_ids, scores):
            if input_ids.shape[1] > prompt_len:
                for m, t in zip(matchers, input_ids[:, -1].tolist()):
                    if not m.is_stopped():
                        m.consume_token(t)
            for i, m in enumerate(matchers):
                llt.fill_next_token_bitmask(m, bitmask, i)
            return scores.masked_fill(~bits_to_mask(bitmask, scores.shape[1]), float("-inf"))

        return step


class XGrammar(Library):
    name = "xgrammar"

    def setup(self, tokenizer, vocab):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    def processor(self, compiled, prompt_len):
        from xgrammar.contrib.hf import LogitsProcessor as XProcessor

        return XProcessor(list(compiled))


class XGrammarPattern(XGrammar):
    """xgrammar ignores maxLength next to a pattern: the length moved into the pattern instead."""

    name = "xgrammar-pattern"

    def compile(self, schema):
        return super().compile(length_in_pattern(schema))


class Outlines(Library):
    name = "outlines"

    def setup(self, tokenizer, vocab):
        import outlines
        from outlines.backends.outlines_core import OutlinesCoreBackend

        class _Stub(torch.nn.Module):  # outlines wants a model; only its tokenizer is used here
            pass

        self.backend = OutlinesCoreBackend(outlines.from_transformers(_Stub(), tokenizer))

    def compile(self, schema):
        return self.backend.get_json_schema_logits_processor(json.dumps(schema), whitespace_pattern="")

    def processor(self, compiled, prompt_len):
        # one Index for the batch (outlines' processor takes one grammar): all rows share a schema here
        return compiled[0]


class LMFormatEnforcer(Library):
    name = "lm-format-enforcer"

    def setup(self, tokenizer, vocab):
        import sys

        import transformers.tokenization_utils_base as base

        # its integration imports transformers.tokenization_utils, which transformers 5 removed
        sys.modules.setdefault("transformers.tokenization_utils", base)
        from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

        self.data = build_token_enforcer_tokenizer_data(tokenizer, vocab_size=vocab)

    def compile(self, schema):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        schema = length_in_pattern(schema)  # it refuses maxLength together with pattern
        return lambda: TokenEnforcer(self.data, JsonSchemaParser(schema))

    def processor(self, compiled, prompt_len):
        enforcers = [make() for make in compiled]

        def step(input_ids, scores):
            allowed = torch.zeros_like(scores, dtype=torch.bool)
            for i, e in enumerate(enforcers):
                tokens = e.get_allowed_tokens(input_ids[i, prompt_len:].tolist())
                if tokens.use_bitmask:
                    allowed[i] = bits_to_mask(tokens.allowed_tokens[None], scores.shape[1])[0]
                else:
                    allowed[i, tokens.allowed_tokens] = True
            return scores.masked_fill(~allowed, float("-inf"))

        return step


LIBRARIES = {lib.name: lib for lib in (Unconstrained, LLGuidance, XGrammar, XGrammarPattern, Outlines, LMFormatEnforcer)}


def run(lib: Library, model, tokenizer, rows: int, seed: int) -> dict:
    vocab = model.get_output_embeddings().weight.shape[0]
    start = time.perf_counter()
    lib.setup(tokenizer, vocab)
    result = {"library": lib.name, "setup_s": round(time.perf_counter() - start, 2)}
    pb = demo_playbook()
    budget_chars = 3 * 96
    for kind, schema in (("reflector", reflection_schema_for(pb, REFLECTOR, budget_chars)),
                         ("curator", curator_schema_for(pb, CURATOR, budget_chars))):
        start = time.perf_counter()
        compiled = lib.compile(schema)
        result[f"{kind}_compile_s"] = round(time.perf_counter() - start, 3)
        messages = [{"role": "user", "content": f"Write the {kind} JSON for attempt {i}."} for i in range(rows)]
        prompts = [tokenizer.apply_chat_template([m], add_generation_prompt=True, return_dict=False) for m in messages]
        width = max(len(p) for p in prompts)
        ids = torch.full((rows, width), tokenizer.pad_token_id)
        attention = torch.zeros((rows, width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            attention[r, width - len(p):] = 1
        timed = Timed(lib.processor([compiled] * rows, width))
        torch.manual_seed(seed)
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=attention, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, max_new_tokens=token_budget(schema), logits_processor=LogitsProcessorList([timed]),
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        seconds = time.perf_counter() - start
        generated = out[:, width:]
        tokens = int((generated != tokenizer.pad_token_id).sum()) or 1
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        valid = 0
        for text in texts:
            try:
                valid += conforms(json.loads(text), schema)
            except ValueError:
                pass
        result.update({f"{kind}_valid": f"{valid}/{rows}", f"{kind}_tokens": tokens,
                       f"{kind}_ms_per_token": round(1000 * seconds / tokens * rows, 1),
                       f"{kind}_mask_ms_per_token": round(1000 * timed.seconds / tokens * rows, 2),
                       f"{kind}_example": texts[0][:160]})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--libs", default=",".join(LIBRARIES))
    parser.add_argument("--model", default="tiny", help="tiny or embedded")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from resd.models import load_model, load_tokenizer

    torch.set_num_threads(2)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, "fp32" if args.model == "tiny" else "bf16", tokenizer).eval()
    for name in args.libs.split(","):
        try:
            result = run(LIBRARIES[name](), model, tokenizer, args.rows, args.seed)
        except ImportError as e:
            result = {"library": name, "error": f"not installed ({e})"}
        except Exception as e:  # a library that cannot handle the schema is a result too
            result = {"library": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
