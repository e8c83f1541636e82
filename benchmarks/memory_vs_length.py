"""Peak memory of one training step against the response length (chunked loss + gradient checkpointing).

Each length runs in a fresh process: the trainer is built from the ``demo`` preset (embedded 0.5B
model in bf16 with float32 master weights, EMA teacher) with gradient checkpointing on, one
synthetic sample of ``64 + L`` tokens with a teacher prompt is built, and one SDPO update
(student forward/backward, teacher forward, chunked top-k loss, AdamW, EMA) runs. Printed: peak
RSS of the step and its increase over the RSS before it (measured after a warm-up update that
allocates the optimizer state; the peak is reset through /proc/self/clear_refs, so Linux only),
and seconds.

    python benchmarks/memory_vs_length.py --lengths 512 1024 2048 4096 8192
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def one(length: int, model: str) -> dict:
    import torch

    from resd.config import load_config
    from resd.sample import Sample
    from resd.trainer.trainer import Trainer
    from resd.envs.base import Feedback

    cfg = load_config("demo", overrides=[f"model.name={model}", "model.gradient_checkpointing=true",
                                         "train.rollout_is_threshold=null", "logging.progress=false",
                                         "logging.run_dir=/tmp/resd-memory-bench", "train.micro_batch_tokens=100000"])
    trainer = Trainer(cfg)
    g = torch.Generator().manual_seed(0)

    def sample(n: int) -> Sample:
        prompt = trainer.tokenizer.apply_chat_template([{"role": "user", "content": "Write a long essay."}],
                                                       add_generation_prompt=True, return_dict=False)
        response = torch.randint(0, 150_000, (n,), generator=g).tolist()
        s = Sample({}, 0, [], list(prompt), response, None, True, feedback=Feedback(0.0, 0.0, "wrong"))
        s.teacher_ids = list(prompt) + prompt[:8]
        s.sd_mask = True
        return s

    trainer.learner.update([sample(64)])  # allocates AdamW state; the baseline after it
    phase: dict[str, float] = {}
    clip = trainer.learner.optimizer.clip_and_check

    def clip_after_backward(max_norm):  # the peak of forward + backward, before the optimizer
        phase["forward_backward"] = _status("VmHWM")
        return clip(max_norm)

    trainer.learner.optimizer.clip_and_check = clip_after_backward
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak (VmHWM) to the current RSS
        f.write("5")
    t0 = time.perf_counter()
    trainer.learner.update([sample(length)])
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    return {"length": length, "peak_mib": peak, "extra_mib": peak - base,
            "fwd_bwd_extra_mib": phase["forward_backward"] - base, "seconds": seconds}


def _status(field: str) -> float:
    """A memory field of /proc/self/status in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.model)))
        return
    rows = []
    for length in args.lengths:
        out = subprocess.run([sys.executable, __file__, "--one", str(length), "--model", args.model],
                             capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"length {length} failed:\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(line[len("RESULT "):]))
        r = rows[-1]
        print(f"{r['length']:>6} tokens: peak {r['peak_mib']:8.0f} MiB, step above its start {r['extra_mib']:7.0f} MiB, "
              f"forward+backward above its start {r['fwd_bwd_extra_mib']:7.0f} MiB, {r['seconds']:6.1f} s", flush=True)
    if len(rows) >= 2:
        slope = (rows[-1]["fwd_bwd_extra_mib"] - rows[0]["fwd_bwd_extra_mib"]) / (rows[-1]["length"] - rows[0]["length"])
        print(f"forward+backward: {slope:.3f} MiB per response token between {rows[0]['length']} and {rows[-1]['length']}")
        print("| response tokens | peak RSS of the step (MiB) | step above its start (MiB) | forward+backward above its start (MiB) | seconds |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['length']:,} | {r['peak_mib']:,.0f} | {r['extra_mib']:,.0f} | {r['fwd_bwd_extra_mib']:,.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
