"""Peak memory and time of the chunked top-k self-distillation loss against a naive full-vocabulary one.

Setting (issue 2): top-k 100 with the tail bin, alpha 0.5 (generalized JSD), vocabulary 151,936,
4,096 response tokens, hidden size 896 (the embedded Qwen2.5-Coder-0.5B), forward + backward. The
inputs are the final hidden states of the student (with grad) and of the teacher, and one LM head
per model: the student's head is trained (it gets a gradient, as the tied embedding does in the
trainer), the teacher's is a constant (EMA copy).

- ``chunked``: the trainer's path, :func:`resd.losses.token_terms` over :func:`resd.trainer.forward.logits_fn`,
  which applies the LM head ``chunk_size`` tokens at a time under activation checkpointing.
- ``fused``: :func:`resd.losses.distillation.fused_token_loss`, the same chunks with the gradients
  with respect to the hidden states and the head computed in the forward (no recompute; one
  head-sized gradient buffer, accumulated in place).
- ``naive``: written here: logits = h @ W.T for all tokens, full log-softmax on both sides, top-k of
  the student, gather, tail bins, JSD, backward.

Each variant runs in its own fresh subprocess; its extra memory is the peak RSS (``ru_maxrss``)
minus the RSS measured right after the inputs were allocated.

Run: ``python benchmarks/loss_memory.py`` (about 5 minutes on 2 quiet cores; options: ``--tokens``,
``--chunk-size``, ``--repeats``, ``--threads``, ``--variants``, ``--rounds``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

VOCAB = 151_936
HIDDEN = 896
TOPK = 100
ALPHA = 0.5
VARIANTS = ("chunked", "fused", "naive")


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_inputs(tokens: int, seed: int):
    """Hidden states, heads, sampled ids and per-token weights (one sequence: weight 1/tokens each)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    h_student = torch.randn(tokens, HIDDEN, generator=gen).requires_grad_(True)
    h_teacher = torch.randn(tokens, HIDDEN, generator=gen)
    w_student = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, generator=gen) * 0.05)
    w_teacher = w_student.detach() + 0.01 * torch.randn(VOCAB, HIDDEN, generator=gen)
    ids = torch.randint(0, VOCAB, (tokens,), generator=gen)
    weights = torch.full((tokens,), 1.0 / tokens)
    return h_student, h_teacher, w_student, w_teacher, ids, weights


def naive_loss(h_student, h_teacher, w_student, w_teacher, weights):
    """Full-vocabulary logits and log-softmax for every token at once (what the trainer must avoid)."""
    import torch

    s_logp = torch.log_softmax(h_student @ w_student.T, dim=-1)
    with torch.no_grad():
        t_logp = torch.log_softmax(h_teacher @ w_teacher.T, dim=-1)
    idx = s_logp.detach().topk(TOPK, dim=-1).indices
    s_top = s_logp.gather(-1, idx)
    t_top = t_logp.gather(-1, idx)

    def with_tail(logp):
        covered = torch.logsumexp(logp, dim=-1, keepdim=True).clamp(max=-1e-7)
        return torch.cat([logp, torch.log(-torch.expm1(covered))], dim=-1)

    s, t = with_tail(s_top), with_tail(t_top)
    log_m = torch.logaddexp(s + math.log(1 - ALPHA), t + math.log(ALPHA))
    div = (1 - ALPHA) * (s.exp() * (s - log_m)).sum(-1) + ALPHA * (t.exp() * (t - log_m)).sum(-1)
    return (weights * div).sum()


def chunked_loss(h_student, h_teacher, w_student, w_teacher, ids, weights, chunk_size: int):
    """The trainer's path: LM head and loss applied chunk by chunk, recomputed in backward."""
    import torch

    from resd.losses import DistillationSpec, token_terms
    from resd.trainer.forward import logits_fn

    # Built on the meta device so that no throw-away [V, H] weight is allocated (or randomly initialized).
    student_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False, device="meta")
    student_head.weight = w_student  # the same Parameter: its .grad is read back
    teacher_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False, device="meta")
    teacher_head.weight = torch.nn.Parameter(w_teacher, requires_grad=False)
    spec = DistillationSpec(alpha=ALPHA, topk=TOPK, add_tail=True)
    _, div = token_terms(
        logits_fn([(student_head, h_student, 1.0)]),
        logits_fn([(teacher_head, h_teacher, 1.0)]),
        ids,
        spec,
        chunk_size=chunk_size,
        recompute=True,
    )
    return (weights * div).sum()


def fused_loss(h_student, h_teacher, w_student, w_teacher, ids, weights, chunk_size: int):
    """The fused path: per chunk, logits, loss and its gradients wrt the hidden states and the head, no recompute."""
    import torch

    from resd.losses import DistillationSpec
    from resd.losses.distillation import fused_token_loss
    from resd.trainer.forward import logits_fn

    student_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False, device="meta")
    student_head.weight = w_student
    teacher_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False, device="meta")
    teacher_head.weight = torch.nn.Parameter(w_teacher, requires_grad=False)
    spec = DistillationSpec(alpha=ALPHA, topk=TOPK, add_tail=True)
    loss, _, _ = fused_token_loss(
        h_student,
        student_head,
        logits_fn([(teacher_head, h_teacher, 1.0)]),
        ids,
        spec,
        lambda logp, div, rows: (weights[rows] * div).sum(),
        chunk_size=chunk_size,
    )
    return loss


def run_variant(variant: str, tokens: int, chunk_size: int, repeats: int, threads: int, seed: int) -> dict:
    """Body of one subprocess: allocate inputs, measure baseline RSS, run forward+backward ``repeats`` times."""
    import torch

    torch.set_num_threads(threads)
    h_s, h_t, w_s, w_t, ids, weights = make_inputs(tokens, seed)
    baseline = rss_mib()
    seconds, cpu_seconds, loss_value, grad_norms = [], [], None, None
    for _ in range(repeats):
        h_s.grad = None
        w_s.grad = None
        start, cpu_start = time.perf_counter(), time.process_time()
        if variant == "naive":
            loss = naive_loss(h_s, h_t, w_s, w_t, weights)
        elif variant == "fused":
            loss = fused_loss(h_s, h_t, w_s, w_t, ids, weights, chunk_size)
        else:
            loss = chunked_loss(h_s, h_t, w_s, w_t, ids, weights, chunk_size)
        loss.backward()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        loss_value = float(loss.detach())
        grad_norms = (float(h_s.grad.norm()), float(w_s.grad.norm()))
        del loss
    peak = peak_rss_mib()
    return {
        "variant": variant,
        "baseline_mib": baseline,
        "peak_mib": peak,
        "extra_mib": peak - baseline,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "loss": loss_value,
        "grad_norm_hidden": grad_norms[0],
        "grad_norm_head": grad_norms[1],
    }


def launch(variant: str, args: argparse.Namespace) -> dict:
    """Run one variant in a fresh Python process and parse its JSON result."""
    cmd = [
        sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens),
        "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats),
        "--threads", str(args.threads), "--seed", str(args.seed),
    ]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # stderr passes through
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: list[dict], args: argparse.Namespace) -> None:
    logits_mib = args.tokens * VOCAB * 4 / 2**20
    print(f"top-k {TOPK} + tail, alpha {ALPHA}, vocab {VOCAB:,}, {args.tokens:,} tokens, hidden {HIDDEN}, "
          f"fp32, forward+backward, {args.threads} threads; chunk size {args.chunk_size}")
    print(f"(one fp32 [tokens x vocab] tensor = {logits_mib:,.0f} MiB; the student head's gradient, "
          f"{VOCAB * HIDDEN * 4 / 2**20:,.0f} MiB, is part of every peak)")
    print()
    print("| variant | extra peak RSS (MiB) | peak RSS (MiB) | s / fwd+bwd (each run) | CPU s (each run) | loss | "
          "|grad h| | |grad W| |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
        cpu = ", ".join(f"{s:.2f}" for s in r["cpu_seconds"])
        print(f"| {r['variant']} | {r['extra_mib']:,.0f} | {r['peak_mib']:,.0f} | {runs} | {cpu} | {r['loss']:.8f} | "
              f"{r['grad_norm_hidden']:.6e} | {r['grad_norm_head']:.6e} |")
    by = {r["variant"]: r for r in results}
    for name in ("chunked", "fused"):
        if {name, "naive"} <= by.keys():
            c, n = by[name], by["naive"]
            print()
            print(f"extra memory {name} / naive: {c['extra_mib'] / n['extra_mib']:.3f}")
            print(f"time {name} / naive (best run): {min(c['seconds']) / min(n['seconds']):.2f} wall-clock, "
                  f"{min(c['cpu_seconds']) / min(n['cpu_seconds']):.2f} CPU time (this process's, less sensitive "
                  "to other load)")
            rel = abs(c["loss"] - n["loss"]) / max(abs(n["loss"]), 1e-30)
            g_rel = max(abs(c[k] - n[k]) / max(abs(n[k]), 1e-30) for k in ("grad_norm_hidden", "grad_norm_head"))
            same = rel < 1e-5 and g_rel < 1e-4
            print(f"loss relative difference {rel:.2e}, gradient-norm relative difference {g_rel:.2e}: "
                  f"{'same' if same else 'DIFFERENT'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=VARIANTS,
                        help="run only this variant, in this process (JSON output)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk-size", type=int, default=512, help="the trainer's train.loss_chunk_size default")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants to compare")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the variants in turn this many times (fresh processes), to spread other load "
                             "over all of them; peaks are the maxima, times are listed per run")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.tokens, args.chunk_size, args.repeats, args.threads, args.seed)))
        return
    load_before = os.getloadavg()[0]
    variants = args.variants.split(",")
    merged: dict[str, dict] = {}
    for _ in range(max(1, args.rounds)):
        for v in variants:
            r = launch(v, args)
            if v not in merged:
                merged[v] = r
                continue
            m = merged[v]
            for key in ("seconds", "cpu_seconds"):
                m[key] = m[key] + r[key]
            for key in ("extra_mib", "peak_mib"):
                m[key] = max(m[key], r[key])
    results = [merged[v] for v in variants]
    report(results, args)
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
