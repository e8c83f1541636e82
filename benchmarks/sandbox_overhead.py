"""Sandbox overhead per trivial program: in-process exec vs a plain subprocess vs each sandbox mode.

Usage: python benchmarks/sandbox_overhead.py [--runs 30]

Prints milliseconds per program (median and mean over the runs, one program at a time) for:
in-process ``exec``, ``subprocess.run([python, "-I", "-B", "-c", ...])``, ``resd.sandbox.run_python``
in every mode that works here, and ``resd.sandbox.run_tests`` with one function-call test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from resd import sandbox

PROGRAM = "print(sum(range(100)))"


def _measure(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up (also the sandbox mode probe)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs

    def in_process() -> None:
        exec(compile(PROGRAM, "main.py", "exec"), {"__name__": "__main__", "print": lambda *a: None})

    def plain_subprocess() -> None:
        subprocess.run([sys.executable, "-I", "-B", "-c", PROGRAM], capture_output=True, check=True)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("in-process exec", in_process),
        ("plain subprocess", plain_subprocess),
    ]
    for mode in sandbox.available_modes():

        def run(mode: str = mode) -> None:
            result = sandbox.run_python(PROGRAM, mode=mode)
            assert result.status == "ok", result

        cases.append((f"run_python[{mode}]", run))

    def harness() -> None:
        out = sandbox.run_tests("def f(x):\n    return x + 1\n", [{"kind": "call", "fn_name": "f", "args": [1]}])
        assert out[0].value == "2"

    cases.append((f"run_tests, 1 test [{sandbox.mode()}]", harness))

    print(f"sandbox overhead per trivial program ({runs} runs each, sequential)")
    print(f"default mode: {sandbox.mode()}")
    print(f"{'method':40s} {'median ms':>10s} {'mean ms':>10s}")
    for name, fn in cases:
        times = _measure(fn, runs)
        print(f"{name:40s} {statistics.median(times):10.2f} {statistics.fmean(times):10.2f}")


if __name__ == "__main__":
    main()
