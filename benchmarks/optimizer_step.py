"""Optimizer step + EMA teacher update on Qwen2.5-0.5B-shaped bf16 parameters: previous vs new implementation.

Random bfloat16 parameters with the shapes of the embedded model (Qwen2.5-0.5B: vocabulary 151,936,
hidden 896, 24 layers, MLP 4,864, 14 query / 2 key-value heads of dimension 64, tied embeddings:
494 M parameters) and one random bf16 gradient per parameter (what a backward leaves in ``p.grad``).
Each timed step is what the learner does after the backward: ``clip_and_check`` (gradients to the
optimizer, norm, clip factor), ``step`` (AdamW, weights written back) and ``teacher.update`` (EMA),
then ``zero_grad``.

Implementations, each in its own child process (so one's memory does not weigh on the next):

- ``old``: the previous ``MasterWeightAdamW`` (float32 master copies, ``torch.optim.AdamW`` with its
  CPU default, the single-tensor loop) and the previous EMA (a float32 shadow beside the bf16
  teacher), copied below from ``resd/trainer/optim.py`` and ``resd/teacher/__init__.py`` before issue 22;
- ``exact`` and ``lean``: :class:`resd.trainer.optim.MasterWeightAdamW` and :class:`resd.teacher.Teacher`
  in the two memory modes (``train.memory``).

For each it prints seconds per step (median and best of ``--steps``; wall clock, and the process's
CPU time, steadier on a shared machine), persistent bytes per parameter from
:func:`resd.trainer.optim.persistent_bytes_per_param` (measured on the tensors after a step) and the
child's peak RSS, then the speed-up old / new::

    python benchmarks/optimizer_step.py                 # full size (the old path needs ~14 GB)
    python benchmarks/optimizer_step.py --layers 6      # 225 M parameters
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def qwen05_shapes(layers: int = 24, vocab: int = 151936, hidden: int = 896, mlp: int = 4864, heads: int = 14,
                  kv_heads: int = 2, head_dim: int = 64, tied: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of Qwen2.5-0.5B's parameters, in the model's order."""
    q, kv = heads * head_dim, kv_heads * head_dim
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        pre = f"model.layers.{i}."
        shapes += [
            (pre + "self_attn.q_proj.weight", (q, hidden)), (pre + "self_attn.q_proj.bias", (q,)),
            (pre + "self_attn.k_proj.weight", (kv, hidden)), (pre + "self_attn.k_proj.bias", (kv,)),
            (pre + "self_attn.v_proj.weight", (kv, hidden)), (pre + "self_attn.v_proj.bias", (kv,)),
            (pre + "self_attn.o_proj.weight", (hidden, q)),
            (pre + "mlp.gate_proj.weight", (mlp, hidden)), (pre + "mlp.up_proj.weight", (mlp, hidden)),
            (pre + "mlp.down_proj.weight", (hidden, mlp)),
            (pre + "input_layernorm.weight", (hidden,)), (pre + "post_attention_layernorm.weight", (hidden,)),
        ]
    shapes.append(("model.norm.weight", (hidden,)))
    if not tied:
        shapes.append(("lm_head.weight", (vocab, hidden)))
    return shapes


class ShapedModel(torch.nn.Module):
    """Parameters only, named like the real model (dots become underscores inside a ParameterDict)."""

    def __init__(self, shapes: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weights = torch.nn.ParameterDict()
        for name, shape in shapes:
            if len(shape) == 1 and "norm" in name:
                value = torch.ones(shape, dtype=dtype)
            else:
                value = (torch.randn(shape, generator=gen, dtype=dtype) * 0.02)
            self.weights[name.replace(".", "_")] = torch.nn.Parameter(value)


# ------------------------------------------------------------------ the previous implementation (before issue 22)
class OldMasterWeightAdamW:
    """AdamW over float32 master copies of (possibly lower-precision) model parameters."""

    def __init__(self, named_params, lr, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8) -> None:
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        if self.mixed:
            self.master = [p.detach().float().clone() for p in self.params]
        else:
            self.master = self.params
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)

    def master_state(self):
        return dict(zip(self.names, self.master, strict=True))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        if self.mixed:
            for m in self.master:
                m.grad = None

    def clip_and_check(self, max_norm):
        if self.mixed:
            for p, m in zip(self.params, self.master, strict=True):
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None
        grads = [m for m in self.master if m.grad is not None]
        if not grads:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else float("inf"))
        return float(norm)

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        if self.mixed:
            for p, m in zip(self.params, self.master, strict=True):
                p.copy_(m)


class OldTeacher:
    """The previous EMA teacher: a bf16 copy of the model and a float32 shadow of every weight."""

    def __init__(self, student: torch.nn.Module, rate: float = 0.05) -> None:
        import copy

        self.rate = rate
        self.module = copy.deepcopy(student).requires_grad_(False)
        self.shadow = {n: p.detach().float().clone() for n, p in self.module.named_parameters()
                       if p.dtype != torch.float32}

    @torch.no_grad()
    def update(self, source) -> None:
        for name, param in self.module.named_parameters():
            target = self.shadow.get(name, param)
            target.mul_(1.0 - self.rate).add_(source[name].detach().to(target.device, target.dtype), alpha=self.rate)
            if target is not param:
                param.copy_(target)


# ------------------------------------------------------------------ one implementation, in a child process
def run_child(impl: str, args: argparse.Namespace) -> dict:
    from resd.teacher import Teacher
    from resd.trainer.optim import MasterWeightAdamW, persistent_bytes_per_param

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = ShapedModel(qwen05_shapes(args.layers, args.vocab, tied=not args.untied), torch.bfloat16)
    named = list(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.bfloat16) * 1e-3 for _, p in named]
    if impl == "old":
        teacher = OldTeacher(model, 0.05)
        opt = OldMasterWeightAdamW(named, lr=1e-5, weight_decay=0.01)
    else:
        teacher = Teacher(model, "ema", 0.05, memory=impl, seed=0)
        opt = MasterWeightAdamW(named, lr=1e-5, weight_decay=0.01, memory=impl, seed=0)
    setup = time.perf_counter() - t0
    times, parts, cpu = [], [], []
    for step in range(args.warmup + args.steps):
        for (_, p), g in zip(named, grads, strict=True):
            p.grad = g
        cpu0 = time.process_time()
        a = time.perf_counter()
        norm = opt.clip_and_check(1.0)
        b = time.perf_counter()
        opt.step()
        c = time.perf_counter()
        teacher.update(opt.master_state())
        d = time.perf_counter()
        cpu1 = time.process_time()
        opt.zero_grad()
        if step >= args.warmup:
            times.append(d - a)
            cpu.append(cpu1 - cpu0)
            parts.append((b - a, c - b, d - c))
    per_param = persistent_bytes_per_param(model, opt, teacher)
    return {
        "impl": impl, "params": sum(p.numel() for _, p in named), "setup_s": setup,
        "step_s": statistics.median(times), "best_s": min(times), "steps_s": times, "cpu_s": statistics.median(cpu),
        "clip_s": statistics.median(x[0] for x in parts), "adamw_s": statistics.median(x[1] for x in parts),
        "ema_s": statistics.median(x[2] for x in parts), "grad_norm": norm,
        "bytes_per_param": per_param, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", default="old,exact,lean", help="comma-separated: old, exact, lean")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--untied", action="store_true", help="a separate lm_head (the GGUF's 630 M layout)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    impls = [x.strip() for x in args.impl.split(",") if x.strip()]
    if args.child:
        print(json.dumps(run_child(impls[0], args)))
        return
    results = []
    for impl in impls:
        cmd = [sys.executable, __file__, "--child", "--impl", impl, "--layers", str(args.layers), "--vocab",
               str(args.vocab), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
        if args.untied:
            cmd.append("--untied")
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if out.returncode != 0:
            sys.exit(f"{impl} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{impl:6s} {r['params'] / 1e6:7.1f} M params  step {r['step_s']:6.2f} s (best {r['best_s']:.2f}), "
              f"CPU {r['cpu_s']:6.2f} s  (clip {r['clip_s']:.2f}, adamw {r['adamw_s']:.2f}, ema {r['ema_s']:.2f})  "
              f"persistent {r['bytes_per_param']['total']:5.2f} B/param "
              f"{ {k: round(v, 2) for k, v in r['bytes_per_param'].items() if k != 'total' and v} }  "
              f"peak RSS {r['peak_rss_gb']:.1f} GB", flush=True)
    by = {r["impl"]: r for r in results}
    if "old" in by:
        for impl in ("exact", "lean"):
            if impl in by:
                print(f"speed-up old / {impl}: {by['old']['step_s'] / by[impl]['step_s']:.1f}x")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
