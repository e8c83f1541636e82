"""Decode speed of the HF rollout backend against the memory-bandwidth bound, and the sampler's
share of a RESD smoke step.

Decode: for each model, batch size and variant, generates ``--new-tokens`` tokens after a random
``--prompt-len``-token prompt and reports milliseconds per decode step (the time of a
``--new-tokens`` run minus a 1-token run, which holds the prefill, over the extra steps), tokens
per second, and where a step goes (the model's forward, the sampler, the rest of ``generate``).
The bound: a decode step reads every weight once (a tied embedding once, as the head; an untied
input embedding only B rows) plus the KV cache, so it cannot take less than those bytes divided by
the memory bandwidth, measured in the same run by copying a large tensor (bytes read + written /
time). ``ratio`` = measured tokens/s / that bound. A decode step only reads, so the bound from the
read bandwidth of a large sum is printed too. With a large batch a small model is bound by
arithmetic instead: the compute bound (2 x batch x parameters FLOPs per step at the measured
throughput of a square matmul in the model's dtype) is printed next to it.

Models: ``tiny`` (the smoke preset's random Qwen2: hidden 64, 2 layers, the embedded tokenizer's
151,936-token vocabulary, fp32), ``qwen0.5b`` (random weights with Qwen2.5-0.5B's shape: vocab
151,936, hidden 896, 24 layers, intermediate 4,864, 14 heads, 2 KV heads, head dim 64, tied
embeddings; bf16; about 1 GB of weights, 3 GB of RAM to build) and ``embedded`` (the embedded
Qwen2.5-Coder-0.5B-Instruct checkpoint itself: 630 M parameters, untied head, loaded in bf16 by
``resd.models.load_model``; about 1.3 GB of weights).

Summary (printed after the per-variant lines, and written by ``--json``): for every measured
(model, batch, variant), decode tokens/s against the memory-bandwidth bound in two forms:
``all weights``, the simplest bound: bandwidth / (parameter bytes of the model in its precision)
x batch size, every parameter counted (an untied input embedding too); and ``bytes read``, the
tighter one used above (embedding rows only, plus the KV cache at the middle of the decode). Both
use the copy bandwidth (best of 5); ``measured / bound`` close to 1 means the decode loop runs at
memory speed. ``--bound`` is the short form of this measurement for the HF rollout backend
(``resd.rollout.HFGenerator``, variant ``resd``) at batch sizes 1 and 8:

    python benchmarks/generation_speed.py --bound --models tiny embedded [--threads 2] [--json out.json]

Variants: ``resd`` (``HFGenerator``: the seeded batched sampler, dynamic KV cache), ``resd-static``
(the same with ``cache_implementation="static"``), ``resd-compile`` (static cache and HF's
``torch.compile`` of the decode step), ``hf-greedy`` (``generate`` with no sampling at all: the
floor for the loop and the model) and ``hf-sample`` (``generate``'s own multinomial sampling with
the same temperature/top-p, not batch-independent).

Profile (``--profile``): runs ``resd train --preset smoke algorithm=resd train.steps=2`` in this
process and reports the fraction of the training time spent inside the sampler's ``__call__`` (the
logits processor), and inside ``HFGenerator.generate``.

    python benchmarks/generation_speed.py                         # tiny, batch 1 and 16
    python benchmarks/generation_speed.py --models tiny qwen0.5b --batch 1 8 --new-tokens 16
    python benchmarks/generation_speed.py --profile [--threads 2]
    python benchmarks/generation_speed.py --bound --models embedded   # resd variant, batch 1 and 8

Timings depend on machine load (the script prints the load average); on a shared machine give
``--threads 1``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resd.models import build_tiny_model, load_tokenizer  # noqa: E402
from resd.rollout import HFGenerator, SamplingParams  # noqa: E402
from resd.rollout import hf as hf_backend  # noqa: E402

MODELS = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, dtype=torch.float32),
    "qwen0.5b": dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                     dtype=torch.bfloat16, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
}
VARIANTS = ("resd", "resd-static", "resd-compile", "hf-greedy", "hf-sample")
LOADED = {"embedded": "embedded"}  # models loaded from a checkpoint (bf16) instead of built at random


def build_model(name: str, tokenizer):
    """The model of ``--models`` ``name`` (eval mode, sampling on, contiguous head input)."""
    from resd.models.loading import contiguous_head_input

    if name in LOADED:
        from resd.models import load_model

        model = load_model(LOADED[name], "bf16").eval()  # (load_model sets do_sample and the head input)
        return model, next(model.parameters()).dtype
    spec = dict(MODELS[name])
    dtype = spec.pop("dtype")
    model = build_tiny_model(len(tokenizer), dtype=dtype, **spec).eval()
    model.generation_config.do_sample = True
    contiguous_head_input(model)
    return model, dtype


def weight_bytes(model) -> int:
    """Parameter bytes of the model in its precision, every parameter once (a tied head once)."""
    params = {p.data_ptr(): p for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in params.values())


def measure_bandwidth(gib: float = 1.0, repeats: int = 5) -> tuple[float, float]:
    """Bytes per second of a large tensor copy (bytes read + bytes written), and of a sum (bytes read)."""
    src = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy = read = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        copy = min(copy, time.perf_counter() - start)
        start = time.perf_counter()
        src.sum()
        read = min(read, time.perf_counter() - start)
    size = src.numel() * src.element_size()
    return 2 * size / copy, size / read


def measure_flops(dtype: torch.dtype, size: int = 1024, repeats: int = 3) -> float:
    """Floating-point operations per second of a square matmul in ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def bytes_per_step(model, batch: int, context: int) -> int:
    """Bytes a decode step must read: every weight once, plus the KV cache at ``context`` tokens."""
    params = {p.data_ptr(): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embed.data_ptr() != head.data_ptr():  # an untied input embedding: only B rows are read
        total -= embed.numel() * embed.element_size() - batch * embed.shape[1] * embed.element_size()
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * context * batch * embed.element_size()
    return total + kv


class StepClock:
    """Seconds spent in the model's forward calls and in the sampler's ``__call__`` (hooks and a wrapper)."""

    def __init__(self, model) -> None:
        self.forwards: list[float] = []
        self.sampler = 0.0
        self.sampler_calls = 0
        self._start = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    @torch.compiler.disable  # outside a compiled decode step, not traced into it
    def _pre(self, *_):
        self._start = time.perf_counter()

    @torch.compiler.disable
    def _post(self, *_):
        self.forwards.append(time.perf_counter() - self._start)

    @property
    def decode_forward(self) -> float:
        """Mean seconds of a decode forward (the calls after the first, the prefill)."""
        return sum(self.forwards[1:]) / max(len(self.forwards) - 1, 1)

    @contextlib.contextmanager
    def sampler_timing(self):
        original = hf_backend._SeededSampler.__call__

        @functools.wraps(original)
        def timed(sampler, input_ids, scores):
            start = time.perf_counter()
            try:
                return original(sampler, input_ids, scores)
            finally:
                self.sampler += time.perf_counter() - start
                self.sampler_calls += 1

        hf_backend._SeededSampler.__call__ = timed
        try:
            yield
        finally:
            hf_backend._SeededSampler.__call__ = original

    def reset(self) -> None:
        self.forwards = []
        self.sampler = 0.0
        self.sampler_calls = 0


def generate_once(variant: str, model, tokenizer, prompts: list[list[int]], new_tokens: int, sampling: SamplingParams,
                  generators: dict) -> torch.Tensor:
    """Generated token ids [B, <= new_tokens] of one call."""
    batch = len(prompts)
    if variant.startswith("resd"):
        generator = generators.get(variant)
        if generator is None:
            kwargs = {}
            if variant != "resd":
                kwargs["cache_implementation"] = "static"
            generator = generators[variant] = HFGenerator(model, tokenizer, batch_size=batch, record_logprobs=True,
                                                          compile_decode=variant == "resd-compile", **kwargs)
        params = SamplingParams(sampling.temperature, sampling.top_p, sampling.top_k, new_tokens)
        rollouts = generator.generate(prompts, 1, params, seeds=list(range(batch)))
        width = max(len(r.response_ids) for r in rollouts)
        pad = tokenizer.pad_token_id
        return torch.tensor([r.response_ids + [pad] * (width - len(r.response_ids)) for r in rollouts])
    from transformers import GenerationConfig

    ids = torch.tensor(prompts)
    sample = variant == "hf-sample"
    warpers = {}
    if sample:
        warpers = dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
    config = GenerationConfig(do_sample=sample, max_new_tokens=new_tokens, eos_token_id=[tokenizer.eos_token_id],
                              pad_token_id=tokenizer.pad_token_id, **warpers)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[:, ids.shape[1]:]


def decode_speed(name: str, model, tokenizer, batch: int, args, sampling: SamplingParams,
                 bandwidth: tuple[float, float], flops: float) -> list[dict]:
    """Prints one line per variant; returns the measurements (for the summary and ``--json``)."""
    generator = torch.Generator().manual_seed(batch)
    vocab = model.config.vocab_size
    prompts = torch.randint(1000, min(vocab, 150_000), (batch, args.prompt_len), generator=generator).tolist()
    clock = StepClock(model)
    generators: dict = {}
    reference = None
    records: list[dict] = []
    for variant in args.variants:
        try:
            with clock.sampler_timing():
                generate_once(variant, model, tokenizer, prompts, 2, sampling, generators)  # warm-up (and compile)
                timings = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    generate_once(variant, model, tokenizer, prompts, 1, sampling, generators)
                    one = time.perf_counter() - start
                    clock.reset()
                    start = time.perf_counter()
                    tokens = generate_once(variant, model, tokenizer, prompts, args.new_tokens, sampling, generators)
                    full = time.perf_counter() - start
                    timings.append((full - one, full, clock.decode_forward, clock.sampler, clock.sampler_calls, tokens))
        except Exception as error:  # noqa: BLE001 (a variant this machine cannot run: say so, go on)
            print(f"  {name:9s} B={batch:<3d} {variant:13s} failed: {type(error).__name__}: {str(error)[:160]}")
            continue
        decode, full, forward, sampler, calls, tokens = min(timings, key=lambda t: t[0])
        steps = tokens.shape[1] - 1
        if steps <= 0 or decode <= 0:
            print(f"  {name:9s} B={batch:<3d} {variant:13s} stopped after {tokens.shape[1]} tokens: nothing to time")
            continue
        step_s = decode / steps
        step_bytes = bytes_per_step(model, batch, args.prompt_len + tokens.shape[1] // 2)
        bound_step_s, read_step_s = step_bytes / bandwidth[0], step_bytes / bandwidth[1]
        compute_step_s = 2 * batch * sum(p.numel() for p in model.parameters()) / flops
        rate, bound = batch / step_s, batch / bound_step_s
        share = f"decode forward {1e3 * forward:6.1f} ms, sampler {1e3 * sampler / max(calls, 1):5.1f} ms/call"
        same = ""
        if variant.startswith("resd"):
            if reference is None:
                reference = tokens
            else:
                same = ", same tokens as resd" if torch.equal(tokens, reference) else ", tokens DIFFER from resd"
        all_weights = weight_bytes(model)
        records.append({
            "model": name, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "batch": batch,
            "variant": variant, "ms_per_step": 1e3 * step_s, "tokens_per_s": rate,
            "weight_bytes": all_weights, "bytes_read_per_step": step_bytes,
            "bound_all_weights_tokens_per_s": batch * bandwidth[0] / all_weights,
            "bound_bytes_read_tokens_per_s": bound, "bound_read_bandwidth_tokens_per_s": batch / read_step_s,
            "compute_bound_tokens_per_s": batch / compute_step_s, "decode_forward_ms": 1e3 * forward,
            "sampler_ms_per_call": 1e3 * sampler / max(calls, 1),
        })
        print(f"  {name:9s} B={batch:<3d} {variant:13s} {1e3 * step_s:8.1f} ms/step {rate:9.1f} tok/s | "
              f"bandwidth bound "
              f"{1e3 * bound_step_s:7.2f} ms/step {bound:9.1f} tok/s, ratio {rate / bound:5.3f} (read-only bound "
              f"{1e3 * read_step_s:.2f} ms/step, ratio {read_step_s / step_s:5.3f}) | compute bound "
              f"{1e3 * compute_step_s:6.2f} ms/step | {share}{same}")
    return records


def print_bound_summary(records: list[dict], bandwidth: tuple[float, float]) -> None:
    """Decode tokens/s against the memory-bandwidth bounds (see the module docstring)."""
    if not records:
        return
    print(f"\ndecode tokens/s against the memory-bandwidth bound (copy bandwidth {bandwidth[0] / 1e9:.1f} GB/s, "
          f"read-only {bandwidth[1] / 1e9:.1f} GB/s); bound = bandwidth / bytes per step x batch")
    print("| model | dtype | batch | variant | ms / step | tokens/s | weights (MB) | bound, all weights (tok/s) | "
          "measured / bound | bound, bytes read (tok/s) | measured / bound | measured / read-only bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        rate = r["tokens_per_s"]
        print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['variant']} | {r['ms_per_step']:.2f} | {rate:.1f} | "
              f"{r['weight_bytes'] / 1e6:.1f} | {r['bound_all_weights_tokens_per_s']:.1f} | "
              f"{rate / r['bound_all_weights_tokens_per_s']:.3f} | {r['bound_bytes_read_tokens_per_s']:.1f} | "
              f"{rate / r['bound_bytes_read_tokens_per_s']:.3f} | "
              f"{rate / r['bound_read_bandwidth_tokens_per_s']:.3f} |")


def profile_smoke(threads: int | None) -> None:
    """The sampler's share of ``resd train --preset smoke algorithm=resd train.steps=2``."""
    from resd.config import load_config
    from resd.trainer import build_trainer

    per_key: dict = collections.defaultdict(lambda: [0.0, 0])
    spent = {"sampler": 0.0, "generate": 0.0}
    sampler_call = hf_backend._SeededSampler.__call__
    generate = hf_backend.HFGenerator.generate

    @functools.wraps(sampler_call)
    def timed_sampler(sampler, input_ids, scores):
        start = time.perf_counter()
        try:
            return sampler_call(sampler, input_ids, scores)
        finally:
            seconds = time.perf_counter() - start
            spent["sampler"] += seconds
            params = sampler.sampling
            entry = per_key[(scores.shape[0], params.temperature, params.top_p, params.top_k)]
            entry[0] += seconds
            entry[1] += 1

    @functools.wraps(generate)
    def timed_generate(*a, **k):
        start = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            spent["generate"] += time.perf_counter() - start

    hf_backend._SeededSampler.__call__ = timed_sampler
    hf_backend.HFGenerator.generate = timed_generate
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(preset="smoke", overrides=["algorithm=resd", "train.steps=2", f"logging.run_dir={tmp}/run",
                                                        "logging.progress=false"])
        trainer = build_trainer(config)
        if threads:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    print(f"smoke step (resd, 2 steps): train() {total:.2f} s with {torch.get_num_threads()} threads")
    print(f"  sampler __call__: {spent['sampler']:.2f} s = {100 * spent['sampler'] / total:.1f}% of train()"
          f"   (HFGenerator.generate: {spent['generate']:.2f} s = {100 * spent['generate'] / total:.1f}%)")
    for (rows, temperature, top_p, top_k), (seconds, calls) in sorted(per_key.items(), key=lambda kv: -kv[1][0]):
        print(f"    {calls:4d} calls with {rows:3d} rows, T={temperature} top_p={top_p} top_k={top_k}: "
              f"{1e3 * seconds / calls:6.2f} ms/call, {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=sorted([*MODELS, *LOADED]))
    parser.add_argument("--batch", nargs="+", type=int, default=None, help="batch sizes (default 1 16; --bound: 1 8)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                        help="default: resd resd-static hf-greedy hf-sample (--bound: resd)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bandwidth-gib", type=float, default=1.0, help="size of the copied tensor")
    parser.add_argument("--profile", action="store_true", help="the sampler's share of a RESD smoke step instead")
    parser.add_argument("--bound", action="store_true",
                        help="HFGenerator decode tokens/s against the bandwidth bound: variant resd, batch 1 and 8")
    parser.add_argument("--json", help="write the decode measurements and the bandwidth to this file")
    args = parser.parse_args()
    if args.batch is None:
        args.batch = [1, 8] if args.bound else [1, 16]
    if args.variants is None:
        args.variants = ["resd"] if args.bound else ["resd", "resd-static", "hf-greedy", "hf-sample"]
    load_before = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile_smoke(args.threads)
    else:
        bandwidth = measure_bandwidth(args.bandwidth_gib)
        print(f"memory bandwidth: copy of {args.bandwidth_gib:g} GiB (read + write) {bandwidth[0] / 1e9:.1f} GB/s, "
              f"sum (read only) {bandwidth[1] / 1e9:.1f} GB/s; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        rates = {}
        records: list[dict] = []
        tokenizer = load_tokenizer("embedded")
        sampling = SamplingParams(args.temperature, args.top_p, args.top_k, args.new_tokens)
        for name in args.models:
            model, dtype = build_model(name, tokenizer)
            weights = bytes_per_step(model, 1, 0)
            millions = sum(p.numel() for p in model.parameters()) / 1e6
            print(f"{name}: {millions:.1f} M parameters, {weights / 1e6:.1f} MB read per decode step (+ KV cache), "
                  f"{dtype}; T={args.temperature} top_p={args.top_p} top_k={args.top_k}")
            if dtype not in rates:
                rates[dtype] = measure_flops(dtype)
                print(f"matmul throughput ({dtype}, 1024^3): {rates[dtype] / 1e9:.1f} GFLOP/s (the compute bound: "
                      "2 x batch x parameters per step)")
            for batch in args.batch:
                records += decode_speed(name, model, tokenizer, batch, args, sampling, bandwidth, rates[dtype])
            del model
        print_bound_summary(records, bandwidth)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "copy_bandwidth_bytes_per_s": bandwidth[0], "read_bandwidth_bytes_per_s": bandwidth[1],
                "threads": torch.get_num_threads(), "torch": torch.__version__, "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens, "decode": records}, indent=1))
            print(f"wrote {args.json}")
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
