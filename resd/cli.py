"""The ``resd`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Collection
from pathlib import Path

EPILOG = """examples:
  resd train --preset demo                      # the README's demo on the embedded model
  resd train --preset smoke                     # a tiny random model, a few seconds
  resd train --config my.yaml train.lr=1e-6 rollout.n=4
  resd train --resume runs/demo-20260101-120000  # continue a stopped run
  resd report runs/demo-20260101-120000          # HTML report of a run; several dirs: comparison
  resd eval --run runs/demo-20260101-120000 --step best
  resd solve --preset demo --example 3 --method sdpo --budget 32
  resd playbook show runs/resd-... --step 4
  resd export runs/demo-20260101-120000 --step best exported/  # a Hugging Face model directory
  resd presets                                  # list presets
  resd envs                                     # list environments
"""


def _train(args: argparse.Namespace) -> int:
    from resd.config import load_config
    from resd.trainer import build_trainer

    if args.resume:
        config = _load_run_config(Path(args.resume), args.overrides)
    else:
        if not args.preset and not args.config:
            print("error: give --preset NAME or --config FILE (see `resd presets`)", file=sys.stderr)
            return 2
        config = load_config(preset=args.preset, path=args.config, overrides=args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    if not args.resume and config.logging.run_dir:
        run_dir = Path(config.logging.run_dir)
        if run_dir.is_dir() and any(run_dir.iterdir()):
            if not args.overwrite:
                print(f"error: run directory {run_dir} exists and is not empty; continue it with "
                      f"`resd train --resume {run_dir}`, replace it with --overwrite, or choose another "
                      "logging.run_dir", file=sys.stderr)
                return 2
            import shutil

            shutil.rmtree(run_dir)
    trainer = build_trainer(config, resume=bool(args.resume))
    if args.resume and not trainer.resumed:
        logging.getLogger("resd").warning("no valid checkpoint in %s: starting from step 0", args.resume)
    run_dir = trainer.train()
    if not config.logging.console:  # (the console's closing summary names it otherwise)
        print(f"run directory: {run_dir}")
    return 0


def _load_run_config(run_dir: Path, overrides: list[str]):
    from resd.config import ConfigError, load_config
    from resd.run_dir import RunDir

    run = RunDir(run_dir)
    if not run.is_run():
        raise ConfigError(f"{run_dir} has no config.yaml; is it a run directory?")
    return load_config(path=run.config, overrides=[f"logging.run_dir={run_dir}", *overrides])


def _checkpoint_dir(run_dir: Path, which: str) -> Path:
    from resd.run_dir import RunDir

    return RunDir(run_dir).checkpoint(which)


def load_policy(config, run_dir: Path | None = None, which: str = "latest"):
    """(model, tokenizer) from a config, with a run's checkpoint weights when ``run_dir`` is given
    (see :func:`resd.models.run_weights.load_policy`)."""
    from resd.models.run_weights import load_policy as _load_policy

    return _load_policy(config, run_dir, which)


def _export(args: argparse.Namespace) -> int:
    from resd.export import describe, export_run

    out = export_run(args.run_dir, args.out_dir, step=args.step, adapter=args.adapter, overwrite=args.overwrite)
    print(f"wrote {out}:")
    print(describe(out))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from datetime import datetime

    from resd import envs
    from resd.config import load_config
    from resd.evaluation import evaluate
    from resd.evaluation.evaluate import provenance
    from resd.evaluation.metrics import alias_note, without_aliases
    from resd.rollout import HFGenerator, SamplingParams
    from resd.rollout.base import mix_seed
    from resd.run_dir import RunDir
    from resd.trainer.console import fmt_number

    run_dir = Path(args.run) if args.run else None
    if run_dir is not None:
        config = _load_run_config(run_dir, args.overrides)
    else:
        config = load_config(preset=args.preset or "demo", path=args.config, overrides=args.overrides)
    split = args.split or config.data.val_split
    data_path = args.data_path or config.data.val_path
    limit = args.limit if args.limit is not None else config.data.val_limit
    env = envs.load(config.data.env, **config.data.env_kwargs)
    rows = env.load_split(split, data_path, limit)
    # best/latest resolved to the step now, so the files name the checkpoint that was evaluated
    step = RunDir(run_dir).checkpoint_step(args.step) if run_dir is not None else None
    model, tokenizer = load_policy(config, run_dir, str(step) if step is not None else args.step)
    e = config.eval
    k = args.k or e.k
    # the seeds of the training's step-0 validation: evaluations of two checkpoints differ by the model only
    seed = mix_seed(config.seed, 0, "eval") if config.rollout.seeded else None
    sampling = SamplingParams(e.temperature, e.top_p, 0, e.max_new_tokens or config.rollout.max_new_tokens)
    result = evaluate(env, rows, HFGenerator(model, tokenizer, config.rollout.batch_size), tokenizer, sampling, k,
                      success_threshold=e.success_threshold, max_prompt_length=config.data.max_prompt_length,
                      chat_template_kwargs=config.model.chat_template_kwargs, progress=config.logging.progress,
                      seed=seed)
    if args.out:
        out = Path(args.out)
    elif run_dir is not None:
        out = RunDir(run_dir).eval_dir
    else:
        out = Path("evals") / f"{config.data.env}-{datetime.now():%Y%m%d-%H%M%S}"
    name = RunDir.eval_name(config.data.env, split, step, k)
    origin = provenance(config, split=split, k=k, seed=seed, prompts=len(rows), run_dir=run_dir, step=step,
                        checkpoint=args.step if run_dir is not None else None, data_path=data_path, limit=limit)
    summary_path, samples_path = result.write(out, name, origin)
    shown = without_aliases(result.summary, result.aliases)
    width = max(len(key) for key in shown)
    for key, value in sorted(shown.items()):
        print(f"{key:{width}s}  {fmt_number(value) if abs(value) < 1e-3 and value else f'{value:.4f}'}")
    note = alias_note(result.aliases)
    if note:
        print(f"(same values, shown once: {note})")
    print(f"wrote {summary_path} and {samples_path}")
    if run_dir is not None and config.logging.report_to:  # the run's trackers (a W&B run continues by its id)
        from resd.trainer.run_logger import RunLogger

        logger = RunLogger.for_run(RunDir(run_dir), config)
        try:
            logger.log_eval(RunDir.eval_name(config.data.env, split, None, k), result.summary, step,
                            result.records[: max(config.logging.samples_per_step, 1)])
        finally:
            logger.close()
    return 0


def _snapshots(run_dir: Path) -> dict[int, Path]:
    from resd.run_dir import RunDir

    return RunDir(run_dir).playbook_snapshots()


def _playbook_text(path: Path) -> str:
    import json

    if path.suffix == ".json":  # per-example playbooks
        texts = json.loads(path.read_text(encoding="utf-8"))
        return "\n\n".join(f"# example {key}\n{text}" for key, text in sorted(texts.items()))
    return path.read_text(encoding="utf-8").rstrip("\n")


def _pick(snapshots: dict[int, Path], step: int | None) -> Path:
    from resd.config import ConfigError

    if not snapshots:
        raise ConfigError("this run has no playbook snapshots (is it a resd run?)")
    if step is None:
        return snapshots[max(snapshots)]
    if step not in snapshots:
        raise ConfigError(f"no playbook snapshot at step {step}; steps: {min(snapshots)}..{max(snapshots)}")
    return snapshots[step]


def _playbook_show(args: argparse.Namespace) -> int:
    path = _pick(_snapshots(Path(args.run_dir)), args.step)
    print(f"# {path}")
    print(_playbook_text(path))
    return 0


def _playbook_diff(args: argparse.Namespace) -> int:
    import difflib

    snapshots = _snapshots(Path(args.run_dir))
    a, b = _pick(snapshots, args.a), _pick(snapshots, args.b)
    diff = difflib.unified_diff(_playbook_text(a).splitlines(), _playbook_text(b).splitlines(),
                                f"step {args.a}", f"step {args.b}", lineterm="", n=0)
    lines = [line for line in diff if not line.startswith("@@")]
    print("\n".join(lines) if lines else f"no change between step {args.a} and step {args.b}")
    return 0


def _solve(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    from resd import envs
    from resd.config import load_config
    from resd.rollout import HFGenerator, SamplingParams
    from resd.solve import discovery_at_k, solve_with_self_distillation, solve_without_training
    from resd.trainer import build_trainer
    from resd.trainer.rng import seed_everything

    run_dir = Path(args.run) if args.run else None

    def make_config(extra: list[str]):
        if run_dir is not None:  # the run's own config; its checkpoint is loaded below
            return _load_run_config(run_dir, [*args.overrides, *extra])
        return load_config(preset=args.preset or "demo", path=args.config, overrides=[*args.overrides, *extra])

    config = make_config([])
    env = envs.load(config.data.env, **config.data.env_kwargs)
    rows = env.load_split(args.split, None, None)
    matches = [r for r in rows if env.example_id(r) == args.example] or (
        [rows[int(args.example)]] if args.example.isdigit() and int(args.example) < len(rows) else [])
    if not matches:
        print(f"error: no example {args.example!r} in split {args.split!r} (give an id or a row index)", file=sys.stderr)
        return 2
    example = matches[0]
    out = Path(args.out or Path("runs") / f"solve-{args.method}-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    r = config.rollout
    sampling = SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens)
    results = []
    for seed in range(args.seeds):
        seed_everything(config.seed + seed)
        if args.method in ("sdpo", "resd"):
            algo = ["algorithm=resd"] if args.method == "resd" else (
                [] if config.algorithm in ("sdpo", "sdpo+ss") else ["algorithm=sdpo"])
            if config.algorithm == "grpo":  # a GRPO run's config pins loss.pg_weight=1
                algo.append("loss.pg_weight=0.0")
            cfg = make_config([*algo, f"seed={config.seed + seed}", "logging.progress=false"])
            trainer = build_trainer(cfg, env=env, train_rows=[example], run_dir=out / f"seed-{seed}")
            if run_dir is not None:
                trainer.load_weights(_checkpoint_dir(run_dir, args.step))
            result = solve_with_self_distillation(trainer, example, args.budget, config.eval.success_threshold)
        else:
            model, tokenizer = load_policy(config, run_dir, args.step)
            result = solve_without_training(args.method, env, example, HFGenerator(model, tokenizer, r.batch_size),
                                            tokenizer, sampling, args.budget, r.batch_size, config.eval.success_threshold,
                                            args.max_context, config.model.chat_template_kwargs)
        results.append(result)
        print(f"seed {seed}: {'solved at attempt ' + str(result.first_success) if result.solved else 'not solved'}"
              f" ({result.attempts} attempts, {result.seconds:.0f} s)")
    ks = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, args.budget} - {k for k in range(args.budget + 1, 10**6)})
    curve = discovery_at_k(results, ks)
    summary = {"method": args.method, "example_id": env.example_id(example), "budget": args.budget,
               "discovery_at_k": {str(k): v for k, v in curve.items()}, "runs": [x.to_dict() for x in results]}
    (out / "solve.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print("discovery@k: " + ", ".join(f"@{k}={v:.2f}" for k, v in curve.items()))
    print(f"wrote {out / 'solve.json'}")
    return 0


def _presets(_args: argparse.Namespace) -> int:
    import yaml

    from resd.config import PRESET_DIR, available_presets

    for name in available_presets():
        text = (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        summary = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
        yaml.safe_load(text)  # a broken preset should fail here, not mid-run
        print(f"{name:32s} {summary}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from resd.config import config_reference, load_config

    values = load_config(preset=args.preset, path=args.config) if args.preset or args.config else None
    print(config_reference(args.section, values))
    return 0


def _envs(args: argparse.Namespace) -> int:
    from resd import envs
    from resd.config import ConfigError

    extra: list[str] = []
    for module_name in args.modules:  # the user's modules: their @register'ed and Environment classes
        try:
            module = envs.import_target(module_name)
        except Exception as e:
            raise ConfigError(f"resd envs {module_name}: cannot import it: {type(e).__name__}: {e}") from None
        for attr, value in vars(module).items():
            if (isinstance(value, type) and issubclass(value, envs.Environment) and value is not envs.Environment
                    and value.__module__ == module.__name__ and not value.__dict__.get("name")
                    and not getattr(value, "__abstractmethods__", None)):
                extra.append(f"{module.__name__}:{attr}")
    rows = [(name, *envs.describe(name)) for name in envs.available()]
    rows += [(name, "module:Class", envs.first_doc_line(envs.resolve(name))) for name in extra]
    width = max(len(r[0]) for r in rows)
    for name, source, doc in rows:
        print(f"{name:{width}s}  {doc}  [{source}]" if doc else f"{name:{width}s}  [{source}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resd",
        description="Reinforcement learning of language models from rich environment feedback "
        "by on-policy self-distillation (SDPO, RESD) and GRPO.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Train with a preset and/or a YAML config; key=value overrides come last "
                           "(e.g. train.lr=1e-6 rollout.n=4 loss.alpha=1.0, or --train.lr=1e-6). Every key, with its "
                           "type, default and description: `resd config [SECTION]` (e.g. `resd config train`). "
                           "TRL's GRPOConfig/SDPOConfig names (learning_rate, num_generations, ...) are accepted with "
                           "a warning that names resd's key (docs/from-trl.md).")
    train.add_argument("--preset", help="a built-in preset (see `resd presets`)")
    train.add_argument("--config", help="a YAML config file (applied after the preset)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest valid checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="delete an existing, non-empty logging.run_dir first (without it such a run dir is refused)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, key=value or --key=value (keys: `resd config [SECTION]`)")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate a model or a run's checkpoint (mean@k, best@k, pass@k)",
                        description="Sample k responses per prompt of a split and score them. Writes "
                        "<env>-<split>-step<N>-k<k>_summary.json (the metrics and their provenance; without --run "
                        "<env>-<split>-k<k>) and _samples.jsonl (every sample with its feedback); --step best|latest "
                        "is resolved to its step number.")
    ev.add_argument("--run", metavar="RUN_DIR", help="evaluate this run's checkpoint (with its config)")
    ev.add_argument("--step", default="latest", help="checkpoint of --run: a step number, 'latest' or 'best'")
    ev.add_argument("--preset", help="config preset when no --run is given (default: demo)")
    ev.add_argument("--config", help="a YAML config file")
    ev.add_argument("--split", help="dataset split (default: data.val_split)")
    ev.add_argument("--data-path", help="a dataset file of the environment's row format")
    ev.add_argument("--limit", type=int, help="first N rows only")
    ev.add_argument("--k", type=int, help="samples per prompt (default: eval.k)")
    ev.add_argument("--out", help="output directory")
    ev.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, key=value or --key=value (e.g. model.name=... data.env=...; keys: "
                    "`resd config`)")
    ev.set_defaults(func=_eval)

    solve = sub.add_parser("solve", help="test-time self-distillation on one problem (and its baselines)",
                           description="Repeatedly sample attempts at one problem; with sdpo/resd take a "
                           "self-distillation step after every failed round. Reports discovery@k.")
    solve.add_argument("--run", metavar="RUN_DIR", help="start from this run's checkpoint (with its config)")
    solve.add_argument("--step", default="latest", help="checkpoint of --run: a step number, 'latest' or 'best'")
    solve.add_argument("--preset", help="config preset when no --run is given (default: demo)")
    solve.add_argument("--config", help="a YAML config file")
    solve.add_argument("--split", default="test")
    solve.add_argument("--example", required=True, help="example id or row index in the split")
    solve.add_argument("--method", default="sdpo", choices=["sdpo", "resd", "best-of-k", "multiturn-feedback", "multiturn-attempts"])
    solve.add_argument("--budget", type=int, default=64, help="maximum attempts")
    solve.add_argument("--seeds", type=int, default=1, help="independent runs (for discovery@k)")
    solve.add_argument("--max-context", type=int, default=32000, help="multi-turn prompt limit in tokens")
    solve.add_argument("--out", help="output directory")
    solve.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, key=value or --key=value (keys: `resd config`)")
    solve.set_defaults(func=_solve)

    pb = sub.add_parser("playbook", help="show a RESD run's playbook or what changed between steps")
    pb_sub = pb.add_subparsers(dest="playbook_command", metavar="SUBCOMMAND", required=True)
    show = pb_sub.add_parser("show", help="print the playbook at a step (default: the last)")
    show.add_argument("run_dir")
    show.add_argument("--step", type=int)
    show.set_defaults(func=_playbook_show)
    diff = pb_sub.add_parser("diff", help="bullets added (+), removed or changed (-) from step A to step B")
    diff.add_argument("run_dir")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    diff.set_defaults(func=_playbook_diff)

    export = sub.add_parser(
        "export", help="write a run's model as a Hugging Face model directory (transformers, vLLM, PEFT)",
        description="Write the student of a run's checkpoint as a model directory that "
        "AutoModelForCausalLM.from_pretrained and vLLM load: config.json, generation_config.json, the tokenizer "
        "with its chat template, safetensors weights. A LoRA run's adapter is merged into the base model, or with "
        "--adapter saved as a PEFT adapter directory.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--step", default="latest", help="checkpoint: a step number, 'latest' or 'best' (default: latest)")
    export.add_argument("out_dir", metavar="OUT_DIR", help="output directory (must be empty or absent)")
    export.add_argument("--adapter", action="store_true",
                        help="LoRA runs: save the adapter (PEFT) instead of merging it into the base model")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    export.set_defaults(func=_export)

    presets = sub.add_parser("presets", help="list the built-in presets")
    presets.set_defaults(func=_presets)
    config = sub.add_parser(
        "config", help="list the configuration keys with their types, defaults and descriptions",
        description="Print every configuration key under SECTION (a section such as train or model.lora, or one "
        "key; default: all) as its dotted path, type, default and description. With --preset or --config, "
        "the values of that preset or file are shown, with the default where it differs. Set a key as key=value "
        "or --key=value after resd train / eval / solve, or in a YAML file.")
    config.add_argument("section", nargs="?", metavar="SECTION", help="e.g. train, model.lora, train.lr")
    config.add_argument("--preset", help="show this preset's values")
    config.add_argument("--config", help="show the values of this YAML config file (after --preset)")
    config.set_defaults(func=_config)
    env_list = sub.add_parser(
        "envs", help="list the available environments",
        description="List the built-in environments, those registered by imported modules and those of installed "
        "packages' 'resd.envs' entry points, each with the first line of its docstring. Name modules of your own "
        "(importable from here) to list their environments too; use them as data.env=module:Class.")
    env_list.add_argument("modules", nargs="*", metavar="MODULE", help="import these modules first (e.g. my_envs)")
    env_list.set_defaults(func=_envs)

    from resd.report import add_report_parser

    add_report_parser(sub)
    return parser


#: commands that take configuration overrides
_OVERRIDE_COMMANDS = ("train", "eval", "solve")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _option(sub: argparse.ArgumentParser, name: str, config_keys: Collection[str] = ()) -> argparse.Action | None:
    """The option ``name`` stands for: itself, or the one option it abbreviates (as argparse allows).
    A config key is never taken for an abbreviation (``resd solve --seed=3`` sets ``seed``, not ``--seeds``)."""
    options = sub._option_string_actions
    if name in options:
        return options[name]
    if "." in name or name[2:] in config_keys:
        return None
    matches = {options[o] for o in options if o.startswith(name) and name.startswith("--")}
    return matches.pop() if len(matches) == 1 else None


def _gather_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with the config overrides of train/eval/solve, written ``key=value``, ``--key=value`` or
    ``--key value`` (a known key), moved in their order behind the options as ``key=value``.

    An ``--option`` that is neither the command's nor a config key fails here, with a suggestion."""
    command = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    sub = _subparser(parser, argv[command]) if command is not None and argv[command] in _OVERRIDE_COMMANDS else None
    if sub is None:
        return argv
    from resd.config import Config, known_keys
    from resd.config_aliases import TRL_NAMES

    keys = set(known_keys()) | set(TRL_NAMES)
    kept, overrides = argv[: command + 1], []
    rest = argv[command + 1 :]
    i = 0
    while i < len(rest):
        token = rest[i]
        if token == "--":
            overrides += rest[i + 1 :]
            break
        if not token.startswith("-"):
            overrides.append(token)  # key=value; anything else is refused as an override later
        else:
            name, eq, value = token.partition("=")
            action = _option(sub, name, keys | set(Config.model_fields))
            key = name[2:]
            if action is not None:
                kept.append(token)
                if not eq and action.nargs != 0 and i + 1 < len(rest):  # the option's value
                    kept.append(rest[i + 1])
                    i += 1
            elif name.startswith("--") and ("." in key or key in keys or key in Config.model_fields):
                if eq:
                    overrides.append(f"{key}={value}")
                elif key in keys and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                    overrides.append(f"{key}={rest[i + 1]}")
                    i += 1
                else:
                    sub.error(f"{name}: give its value as {name}=VALUE (or {key}=VALUE)")
            else:
                import difflib

                long_options = [o for o in sub._option_string_actions if o.startswith("--")]
                close = difflib.get_close_matches(name, long_options, n=1)
                sub.error(f"unrecognized option {name}" + (f"; did you mean {close[0]}?" if close else "")
                          + " (config keys are set as key=value or --key=value; see `resd config`)")
        i += 1
    return [*kept, "--", *overrides] if overrides else kept


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_gather_overrides(parser, list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from resd.config import ConfigError
    from resd.envs.base import DataError
    from resd.trainer.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
