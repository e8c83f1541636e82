"""Time ``resd report`` on a synthetic long run (many steps, every validation metric, a growing
playbook, samples every step) and print the time, the page size and the number of PNGs.

    python benchmarks/report_build.py [--steps 1000] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import yaml

from resd.report import write_report

VAL_KEYS = [f"{g}/{m}@4" for g in ("task", "test_case", "score", "acc") for m in ("mean", "best")]
VAL_KEYS += [f"{g}/best@4_bootstrap" for g in ("task", "test_case", "score", "acc")]
VAL_KEYS += ["pass@1", "pass@4", "response_length/mean", "response_length/p90", "response_length/truncated_fraction"]


def synthetic_run(root: Path, steps: int, seed: int) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    config = {"name": f"run-{seed}", "algorithm": "resd", "model": {"name": "embedded"}, "data": {"env": "manufactoria"}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "playbook").mkdir()
    bullets: list[str] = []
    with (root / "metrics.jsonl").open("w") as m, (root / "samples.jsonl").open("w") as s:
        for step in range(1, steps + 1):
            row = {"step": step, "reward/mean": rng.random() * step / steps, "acc/mean": rng.random() * step / steps,
                   "loss/distill": rng.random(), "self_distillation/reprompt_sample_fraction": rng.random(),
                   "response_length/mean": 500 + 100 * rng.random(), "playbook/size": float(len(bullets)),
                   "actor/grad_norm": rng.random(), "progress/rollouts": 32.0 * step, "progress/elapsed_s": 40.0 * step}
            m.write(json.dumps(row) + "\n")
            if step % 10 == 0:
                val = {f"val/{k}": rng.random() for k in VAL_KEYS}
                m.write(json.dumps({"step": step, **val, "progress/rollouts": 32.0 * step}) + "\n")
            for i in range(2):
                s.write(json.dumps({"step": step, "example_id": f"ex-{i}", "prompt": "p" * 2000, "response": "r" * 4000,
                                    "score": rng.random(), "feedback": "f" * 500, "reflection": "x" * 800,
                                    "teacher_prompt": "t" * 8000, "sd_mask": True}) + "\n")
            bullets.append(f"[sai-{step:05d}] helpful={rng.randint(0, 5)} harmful=0 :: lesson {step} " + "w " * 20)
            bullets = bullets[-60:]
            (root / "playbook" / f"step-{step:06d}.txt").write_text("## STRATEGIES & INSIGHTS\n" + "\n".join(bullets))
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [synthetic_run(Path(tmp) / f"run{i}", args.steps, i) for i in range(args.runs)]
        t0 = time.perf_counter()
        page = write_report(dirs, Path(tmp) / "out" / "index.html")
        seconds = time.perf_counter() - t0
        pngs = len(list((page.parent / "plots").glob("*.png")))
        print(f"runs={args.runs} steps={args.steps}: {seconds:.2f} s, page {page.stat().st_size / 1e6:.2f} MB, {pngs} PNGs")


if __name__ == "__main__":
    main()
