"""Write BouncingSim datasets: ``python -m resd.envs.bouncingsim --out data/bsim --difficulty easy medium``."""

from __future__ import annotations

import argparse
import time

from resd.envs.bouncingsim.dataset import write_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resd.envs.bouncingsim", description=__doc__)
    parser.add_argument("--out", required=True, help="output folder; each difficulty gets a subfolder")
    parser.add_argument("--difficulty", nargs="+", choices=["easy", "medium"], default=["easy", "medium"])
    parser.add_argument("--n-train", type=int, default=None, help="train rows (default: 640 easy, 320 medium)")
    parser.add_argument("--n-test", type=int, default=None, help="test rows (default: 100)")
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    parser.add_argument("--verl", action="store_true", help="write veRL rows (prompt, reward_model, extra_info)")
    parser.add_argument("--compress", action="store_true", help="store asserts as base64(zlib(pickle))")
    args = parser.parse_args(argv)
    for difficulty in args.difficulty:
        start = time.perf_counter()
        paths = write_dataset(
            f"{args.out}/{difficulty}",
            difficulty,
            args.n_train,
            args.n_test,
            args.format,
            verl=args.verl,
            compress_ground_truth=args.compress,
        )
        elapsed = time.perf_counter() - start
        print(f"{difficulty}: wrote {', '.join(str(p) for p in paths.values())} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
