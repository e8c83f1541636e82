"""The ``resd`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """examples:
  resd train --preset demo                      # the README's demo on the embedded model
  resd train --preset smoke                     # a tiny random model, a few seconds
  resd train --config my.yaml train.lr=1e-6 rollout.n=4
  resd train --resume runs/demo-20260101-120000  # continue a stopped run
  resd presets                                  # list presets
  resd envs                                     # list environments
"""


def _train(args: argparse.Namespace) -> int:
    from resd.config import load_config
    from resd.trainer import build_trainer

    if args.resume:
        run_dir = Path(args.resume)
        config_file = run_dir / "config.yaml"
        if not config_file.is_file():
            print(f"error: {run_dir} has no config.yaml; is it a run directory?", file=sys.stderr)
            return 2
        config = load_config(path=config_file, overrides=[f"logging.run_dir={run_dir}", *args.overrides])
    else:
        if not args.preset and not args.config:
            print("error: give --preset NAME or --config FILE (see `resd presets`)", file=sys.stderr)
            return 2
        config = load_config(preset=args.preset, path=args.config, overrides=args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    trainer = build_trainer(config)
    if args.resume and not trainer.resume():
        logging.getLogger("resd").warning("no valid checkpoint in %s: starting from step 0", args.resume)
    run_dir = trainer.train()
    print(f"run directory: {run_dir}")
    return 0


def _presets(_args: argparse.Namespace) -> int:
    import yaml

    from resd.config import PRESET_DIR, available_presets

    for name in available_presets():
        text = (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        summary = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
        yaml.safe_load(text)  # a broken preset should fail here, not mid-run
        print(f"{name:24s} {summary}")
    return 0


def _envs(_args: argparse.Namespace) -> int:
    from resd import envs

    for name in envs.available():
        print(name)
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
                           "(e.g. train.lr=1e-6 rollout.n=4 loss.alpha=1.0).")
    train.add_argument("--preset", help="a built-in preset (see `resd presets`)")
    train.add_argument("--config", help="a YAML config file (applied after the preset)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest valid checkpoint")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    train.set_defaults(func=_train)

    presets = sub.add_parser("presets", help="list the built-in presets")
    presets.set_defaults(func=_presets)
    env_list = sub.add_parser("envs", help="list the available environments")
    env_list.set_defaults(func=_envs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from resd.config import ConfigError
    from resd.envs.base import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
