"""Do RESD's reflector and curator prompts work for a small policy? Default vs compact prompts at
several output budgets, on real failures of the efficacy benchmark's arithmetic task.

The embedded 0.5B model first answers training problems at T = 1.0 (the policy's own attempts, as
in training); its failures then go through :class:`resd.context.updater.ContextUpdater` in batches
of 8, exactly as in a RESD step, once per (prompt set, token budget) with the same sampling seeds.
Reported per setting: reflections whose JSON parsed, curator outputs that passed validation (the
rest drop all their operations), outputs cut by the token budget, the playbook's size after the
batches, bullets added per update, seconds per update, and the lessons it ended with.

``--constrained off,on`` runs every setting twice: free text (the tolerant parsers) and under the
per-call JSON schemas (``resd.reflector.constrained``, llguidance; docs/structured-output.md), whose
string lengths are sized to the setting's budget times ``--chars-per-token``. ``--model tiny`` is a
smoke check of the script (the random model fails every attempt and writes nonsense).

    python benchmarks/reflection_prompts.py [--problems 24] [--settings default:64,compact:64,...]
        [--constrained off,on] [--model embedded]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=24, help="training problems the policy attempts")
    parser.add_argument("--batch", type=int, default=8, help="failures per context update")
    parser.add_argument("--settings", default="default:64,default:128,compact:64,compact:96",
                        help="prompt set:max new tokens, comma-separated")
    parser.add_argument("--constrained", default="off", help="off, on, or off,on (both, compared)")
    parser.add_argument("--chars-per-token", type=float, default=3.0,
                        help="constrained: JSON characters per token of the budget (resd.reflector.schema_chars_per_token)")
    parser.add_argument("--curator-min-operations", type=int, default=0,
                        help="constrained: operations each curation must propose (resd.curator_min_operations)")
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="recompute the prompts' shared prefix in every row (HFGenerator(prefix_cache=False))")
    parser.add_argument("--model", default="embedded", help="embedded (the measurement) or tiny (a smoke check)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    modes = [m.strip() for m in args.constrained.split(",")]
    if not set(modes) <= {"off", "on"}:
        parser.error("--constrained takes off, on or off,on")

    from resd.context.prompts import PROMPT_SETS
    from resd.context.updater import ContextUpdater, UpdaterConfig, UpdateItem
    from resd.envs import load as load_env
    from resd.models import chat_prompt_ids, load_model, load_tokenizer
    from resd.rollout.base import SamplingParams
    from resd.rollout.hf import HFGenerator
    from resd.rollout.text import PolicyTextGenerator

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, "fp32" if args.model == "tiny" else "bf16", tokenizer)
    model.requires_grad_(False)
    generator = HFGenerator(model, tokenizer, batch_size=8, record_logprobs=False, prefix_cache=not args.no_prefix_cache)
    # the efficacy benchmark's task (benchmarks/efficacy/configs/arithmetic.yaml)
    env = load_env("arithmetic", op="mul", digits=[2, 2], n_train=512, n_test=64, feedback="answer", instruction="answer")
    rows = env.load_split("train")[: args.problems]
    prompts = [env.prompt_messages(row) for row in rows]
    attempts = generator.generate([chat_prompt_ids(tokenizer, m)[0] for m in prompts], 1,
                                  SamplingParams(1.0, 1.0, 0, 24), seeds=list(range(len(rows))))
    items = []
    for row, messages, rollout in zip(rows, prompts, attempts, strict=True):
        text = tokenizer.decode(rollout.response_ids, skip_special_tokens=True)
        fb = env.score(text, row, truncated=rollout.truncated)
        items.append(UpdateItem(env.example_id(row), messages[-1]["content"], text, fb.feedback, fb.acc))
    failures = [it for it in items if it.acc < 1.0]
    batches = [failures[i : i + args.batch] for i in range(0, len(failures) - args.batch + 1, args.batch)]
    print(f"{len(rows)} problems, {len(failures)} failed attempts, {len(batches)} updates of {args.batch} per setting")

    # one short throw-away call so that the first timed setting does not pay the kernels' first use
    # (constrained: nor llguidance's one-off view of the tokenizer, about a second)
    warm_up = [[{"role": "user", "content": PROMPT_SETS["default"].curator}]] * 2
    PolicyTextGenerator(generator, tokenizer, SamplingParams(0.7, 0.95, 0, 8), 2048)(warm_up)
    if "on" in modes:
        from resd.context.output_schema import reflection_schema

        PolicyTextGenerator(generator, tokenizer, SamplingParams(0.7, 0.95, 0, 8), 2048)(
            warm_up, schemas=[reflection_schema([], ["key_insight"], 4)] * 2)

    class Recording:
        """The rollout backend, keeping each rollout so that cut outputs are counted exactly."""

        def __init__(self) -> None:
            self.rollouts: list = []

        def generate(self, *args, **kwargs):
            out = generator.generate(*args, **kwargs)
            self.rollouts.extend(out)
            return out

    results = []
    for setting, mode in itertools.product(args.settings.split(","), modes):
        name, budget = setting.split(":")
        prompt_set = PROMPT_SETS[name]
        constrained = mode == "on"
        counter = itertools.count()
        recording = Recording()
        generate = PolicyTextGenerator(recording, tokenizer, SamplingParams(0.7, 0.95, 0, int(budget)), 2048,
                                       seed_fn=lambda n, c=counter: [next(c) for _ in range(n)])

        updater = ContextUpdater(UpdaterConfig(concise_frequency=None, max_bullets=20,
                                               reflector_template=prompt_set.reflector,
                                               success_reflector_template=prompt_set.success_reflector,
                                               curator_template=prompt_set.curator, constrained=constrained,
                                               output_chars=max(1, int(int(budget) * args.chars_per_token)),
                                               curator_min_operations=args.curator_min_operations))
        reflected = reflector_failures = curations = curator_valid = proposed = added = 0
        examples: list[str] = []
        started = time.perf_counter()
        for batch in batches:
            _, metrics = updater.update(batch, generate)
            reflected += int(metrics["reflection/count"])
            reflector_failures += int(metrics["parse/reflector_failures"])
            curations += len(updater.last_curations)
            curator_valid += sum(c["ok"] for c in updater.last_curations)
            proposed += sum(len(c["operations"]) for c in updater.last_curations)
            added += int(metrics.get("playbook/added", 0))
            examples += [c["output"] for c in updater.last_curations[:2]]
        seconds = (time.perf_counter() - started) / max(1, len(batches))
        cut = sum(r.truncated for r in recording.rollouts)
        lessons = [b.content for b in updater.playbook().bullets()]
        results.append({"prompts": name, "max_new_tokens": int(budget), "constrained": constrained,
                        "reflections": reflected,
                        "reflections_parsed": reflected - reflector_failures, "curations": curations,
                        "curations_valid": curator_valid, "operations_proposed": proposed, "bullets_added": added,
                        "outputs": len(recording.rollouts), "outputs_cut": cut,
                        "output_tokens": sum(len(r.response_ids) for r in recording.rollouts),
                        "bullets_added_per_update": round(added / max(1, len(batches)), 2),
                        "playbook_size": len(lessons), "seconds_per_update": round(seconds, 1), "lessons": lessons,
                        "curator_output_examples": examples})
        print(f"done {setting} constrained={mode}: {results[-1]['curations_valid']}/{curations} valid curations, "
              f"{len(lessons)} bullets, {seconds:.1f} s per update", flush=True)

    def percent(part: int, whole: int) -> str:
        return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else "0/0"

    print("\n| prompts | max new tokens | constrained | reflections parsed | curations valid | outputs cut at the "
          "budget | bullets added per update | playbook bullets | output tokens | s per update (x first row) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = results[0]["seconds_per_update"] or 1.0
    for r in results:
        print(f"| {r['prompts']} | {r['max_new_tokens']} | {'on' if r['constrained'] else 'off'} | "
              f"{percent(r['reflections_parsed'], r['reflections'])} | {percent(r['curations_valid'], r['curations'])} | "
              f"{r['outputs_cut']}/{r['outputs']} | {r['bullets_added_per_update']} | {r['playbook_size']} | "
              f"{r['output_tokens']} | {r['seconds_per_update']} ({r['seconds_per_update'] / base:.2f}x) |")
    for r in results:
        print(f"\n{r['prompts']}:{r['max_new_tokens']} constrained={r['constrained']} lessons:")
        for lesson in r["lessons"]:
            print(f"  - {lesson}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
