"""What computing a micro-batch's shared context prefix once (``train.share_prefix``) saves in an update.

One process, one batch of real rollouts of the embedded 0.5B policy (LoRA, bf16) under an efficacy
benchmark configuration (``benchmarks/efficacy``); the same samples are then updated with the
prefix shared and without, alternating, ``--repeats`` times each. Reported: seconds per update of
each (median), their ratio, and the context tokens that the forwards compute in each case.

    python benchmarks/shared_prefix.py --task arithmetic --method resd-constrained --warm-batches 2
    python benchmarks/shared_prefix.py --task manufactoria --method grpo train.batch_size=2 \\
        train.skip_zero_advantage=false

``--warm-batches`` trains that many outer batches first (RESD's playbook grows into the teacher's
context). Extra ``key=value`` arguments override the configuration.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def efficacy_config(task: str, method: str) -> dict:
    spec = importlib.util.spec_from_file_location("efficacy_run", HERE / "efficacy" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_config(task, method, None)[0]


def context_tokens(learner, samples) -> dict[str, int]:
    """Context tokens the forwards of one update compute, with and without the shared prefix."""
    from resd.trainer.forward import pack_rows

    counts = {"student": 0, "student_shared": 0, "teacher": 0, "teacher_shared": 0}
    active = [s for s in samples if learner._carries_loss(s)]
    for mini in learner._mini_batches(active):
        for micro in learner._micro_batches(mini):
            responses = [s.response_ids for s in micro]
            sides = [("student", [s.prompt_ids for s in micro])]
            if learner.teacher is not None:
                sides.append(("teacher", [s.teacher_ids for s in micro]))
            for side, contexts in sides:
                prefix = pack_rows(contexts, responses, 0, share_prefix=True).prefix
                counts[side] += sum(map(len, contexts))
                counts[f"{side}_shared"] += sum(map(len, contexts)) - (len(contexts) - 1) * prefix
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--method", default="resd-constrained")
    parser.add_argument("--warm-batches", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import yaml

    from resd.config import load_config
    from resd.trainer import build_trainer

    work = Path(tempfile.mkdtemp(prefix="shared-prefix-"))
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(efficacy_config(args.task, args.method)))
    config = load_config(path=path, overrides=[f"seed={args.seed}", "eval.before_train=false", "eval.every_rollouts=0",
                                               "logging.progress=false", "logging.console=false",
                                               f"logging.run_dir={work / 'run'}", *args.overrides])
    trainer = build_trainer(config)
    for _ in range(args.warm_batches * config.stream.inner_steps if config.stream.enabled else args.warm_batches):
        trainer.train_step()
    samples, _ = trainer.sample(trainer.schedule.next_batch())
    trainer.algorithm.prepare(samples, trainer.step + 1)
    trainer.learner.tokenize_teacher_prompts(samples)
    learner = trainer.learner
    tokens = context_tokens(learner, samples)
    times: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(args.repeats):
        for share in ((True, False) if repeat % 2 == 0 else (False, True)):
            learner.share_prefix = share
            batch = copy.deepcopy(samples)
            start = time.perf_counter()
            learner.update(batch)
            times[share].append(time.perf_counter() - start)
            print(f"repeat {repeat} share_prefix={share}: {times[share][-1]:.1f} s", flush=True)
    shared, plain = statistics.median(times[True]), statistics.median(times[False])
    result = {"args": vars(args), "samples": len(samples), "tokens": tokens,
              "update_s": {"shared": shared, "plain": plain}, "ratio": shared / plain, "times": {str(k): v for k, v in times.items()}}
    print(json.dumps(result, indent=1))
    print(f"{args.task}/{args.method}: {len(samples)} samples; update {shared:.1f} s shared vs {plain:.1f} s plain "
          f"({shared / plain:.2f}x); context tokens computed: student {tokens['student_shared']} of {tokens['student']}, "
          f"teacher {tokens['teacher_shared']} of {tokens['teacher']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
