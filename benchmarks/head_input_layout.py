"""Time of the output projection on a strided ``hidden[:, -1:, :]`` view against a contiguous copy.

transformers applies the LM head to ``hidden[:, -1:, :]`` at every prefill and wherever
``logits_to_keep=1`` is passed. On CPU, ``F.linear`` on that strided view with a weight that does
not require grad takes a batched-matmul path that copies the whole weight once per row; resd makes
the head's input contiguous (``resd.models.loading.contiguous_head_input``). Qwen2.5's head shape
(151,936 x 896), bf16.

    python benchmarks/head_input_layout.py [--rows 7] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    weight = torch.randn(151_936, 896).to(torch.bfloat16)
    hidden = torch.randn(args.rows, 100, 896).to(torch.bfloat16)
    view = hidden[:, -1:, :]
    with torch.no_grad():
        strided = timed(lambda: torch.nn.functional.linear(view, weight), args.repeats)
        contiguous = timed(lambda: torch.nn.functional.linear(view.contiguous(), weight), args.repeats)
    print(f"rows {args.rows}: strided view {strided:.3f} s, contiguous copy {contiguous:.4f} s, "
          f"ratio {strided / contiguous:.0f}x (torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
