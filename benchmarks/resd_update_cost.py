"""What a RESD update costs against an SDPO update, measured in one run on the efficacy benchmark's
arithmetic task (embedded 0.5B policy as its own reflector and curator, LoRA, n = 1).

Each arm is a ``resd train`` of the efficacy arm's exact configuration (``benchmarks/efficacy``),
shortened to ``--batches`` outer batches without evaluation, run one after another in fresh
processes with the same seed. An update is one training step of the stream loop (rollouts, for
RESD the context update, then one optimizer step); the first outer batch is a warm-up and is left
out. Reported per arm: seconds per update and their parts (rollout, context update, optimizer step), the
reflections that parsed, the curations that validated and the playbook's size, and RESD / SDPO.

    python benchmarks/resd_update_cost.py [--batches 4] [--arms sdpo,resd,resd-free] [--json out.json]

Arms: ``sdpo``, ``resd`` (the efficacy arm ``resd-constrained``: reflector output under JSON schemas)
and ``resd-free`` (the efficacy arm ``resd``: free text and the tolerant parsers).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
#: arm -> the efficacy benchmark's method whose configuration it runs
ARMS = {"sdpo": "sdpo", "resd": "resd-constrained", "resd-free": "resd"}


def efficacy_config(method: str) -> dict:
    spec = importlib.util.spec_from_file_location("efficacy_run", HERE / "efficacy" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config, _ = module.run_config("arithmetic", method, None)
    return config


def run_arm(arm: str, batches: int, seed: int, work: Path) -> dict:
    config = efficacy_config(ARMS[arm])
    algorithm = config["algorithm"]
    path = work / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = work / arm
    command = [sys.executable, "-m", "resd.cli", "train", "--config", str(path), f"seed={seed}",
               f"stream.num_batches={batches}", "eval.before_train=false", "eval.every_rollouts=0",
               "logging.save_final=false", "logging.progress=false", f"logging.run_dir={run_dir}"]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in rows if "time/step_s" in r]
    per_batch = len(steps) // batches
    timed = steps[per_batch:]  # the first outer batch warms up

    def mean(key: str) -> float:
        return statistics.fmean(r.get(key, 0.0) for r in timed)

    out = {"arm": arm, "updates": len(timed), "wall_s": round(wall, 1), "step_s": mean("time/step_s"),
           "rollout_s": mean("time/rollout_s"), "context_update_s": mean("time/context_update_s"),
           "update_s": mean("time/update_s")}
    if algorithm == "resd":
        reflections = sum(r.get("reflection/count", 0) for r in steps)
        failures = sum(r.get("parse/reflector_failures", 0) for r in steps)
        curations = [json.loads(x) for x in (run_dir / "curation.jsonl").read_text().splitlines() if x.strip()] \
            if (run_dir / "curation.jsonl").is_file() else []
        out.update({"reflections": int(reflections), "reflections_parsed": int(reflections - failures),
                    "curations": len(curations), "curations_valid": sum(bool(c["ok"]) for c in curations),
                    "playbook_size": [r.get("playbook/size") for r in steps]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4, help="outer batches per arm (the first is a warm-up)")
    parser.add_argument("--arms", default="sdpo,resd", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or args.batches < 2:
        parser.error(f"unknown arms {unknown}" if unknown else "--batches must be at least 2 (one is a warm-up)")
    work = Path(tempfile.mkdtemp(prefix="resd-update-cost-"))
    results = [run_arm(arm, args.batches, args.seed, work) for arm in arms]
    base = next((r["step_s"] for r in results if r["arm"] == "sdpo"), None)
    print("\n| arm | updates timed | s per update | rollout | context update | optimizer step | x SDPO | "
          "reflections parsed | curations valid |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['step_s'] / base:.2f}" if base else "-"
        parsed = f"{r['reflections_parsed']}/{r['reflections']}" if "reflections" in r else "-"
        valid = f"{r['curations_valid']}/{r['curations']}" if "curations" in r else "-"
        print(f"| {r['arm']} | {r['updates']} | {r['step_s']:.1f} | {r['rollout_s']:.1f} | "
              f"{r['context_update_s']:.1f} | {r['update_s']:.1f} | {ratio} | {parsed} | {valid} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
