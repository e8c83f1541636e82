"""Sandbox overhead per program: in-process exec, a plain subprocess, and each sandbox mode.

Usage: python benchmarks/sandbox_overhead.py [--runs 30] [--before PATH/TO/OLD/resd/sandbox.py]

Prints milliseconds per program (median and mean over the runs, one program at a time) for
in-process ``exec``, ``subprocess.run([python, "-I", "-B", "-c", ...])``, ``resd.sandbox.run_python``
in every mode that works here, ``resd.sandbox.run_tests`` with one and with ten function-call tests,
and the code environment scoring a 10-test response; the overhead is the median minus the plain
subprocess's. ``--before`` loads an older, single-file ``resd/sandbox.py`` (e.g. from a
``git worktree`` of an earlier commit) and measures its ``run_python`` and ``run_tests`` in the same
run, interleaved with the current ones, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import resd.envs
from resd import sandbox

PROGRAM = "print(sum(range(100)))"
FUNCTION = "def f(x):\n    return x + 1\n"


def _load(path: str):  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location("resd_sandbox_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--before", default=None, help="an older single-file resd/sandbox.py to compare with")
    opts = parser.parse_args()
    os.environ.setdefault(sandbox.UNISOLATED_OPT_IN, "1")  # measure the weak modes too

    def in_process() -> None:
        exec(compile(PROGRAM, "main.py", "exec"), {"__name__": "__main__", "print": lambda *a: None})

    def plain_subprocess() -> None:
        subprocess.run([sys.executable, "-I", "-B", "-c", PROGRAM], capture_output=True, check=True)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("in-process exec", in_process),
        ("plain subprocess", plain_subprocess),
    ]

    def suite(module, label: str) -> None:  # noqa: ANN001 - either sandbox module
        for mode in module.available_modes():

            def run(mode: str = mode) -> None:
                result = module.run_python(PROGRAM, mode=mode)
                assert result.status == "ok", result

            cases.append((f"{label}run_python[{mode}]", run))
        for n in (1, 10):

            def harness(n: int = n) -> None:
                out = module.run_tests(FUNCTION, [{"kind": "call", "fn_name": "f", "args": [k]} for k in range(n)])
                assert [o.value for o in out] == [str(k + 1) for k in range(n)]

            cases.append((f"{label}run_tests, {n} test{'s' * (n > 1)} [{module.mode()}]", harness))

    if opts.before:
        suite(_load(opts.before), "before: ")
    suite(sandbox, "")
    env = resd.envs.load("code")
    tests = {"inputs": [json.dumps(k) for k in range(10)], "outputs": [json.dumps(k + 1) for k in range(10)]}
    example = {"prompt": "add one", "tests": json.dumps({**tests, "testtype": "functional", "fn_name": "f"})}
    response = f"```python\n{FUNCTION}```"

    def score() -> None:
        assert env.score(response, example).score == 1.0

    cases.append(("code env: score a 10-test response", score))

    timings: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _, fn in cases:
        fn()  # warm-up (also the sandbox mode probes)
    for _ in range(opts.runs):  # interleaved: every case sees the same load over time
        for name, fn in cases:
            start = time.perf_counter()
            fn()
            timings[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(timings["plain subprocess"])
    print(f"sandbox overhead per program ({opts.runs} runs each, interleaved); default mode: {sandbox.mode()}")
    print(f"{'method':44s} {'median ms':>10s} {'mean ms':>10s} {'overhead ms':>12s}")
    for name, times in timings.items():
        med = statistics.median(times)
        print(f"{name:44s} {med:10.2f} {statistics.fmean(times):10.2f} {med - base:12.2f}")


if __name__ == "__main__":
    main()
