"""Manufactoria throughput: test cases verified per second and full ``score()`` calls per second.

Run: ``python benchmarks/manufactoria_throughput.py [--repeat 3]``. Uses the 874 generated
Manufactoria-Has problems (35 tests each) and the reference factories of
``resd.envs.manufactoria.solutions`` (automata with 2 nodes per state), single process.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

from resd.envs.manufactoria import ManufactoriaEnv, parse_program, run_program
from resd.envs.manufactoria.checking import passes, run_tests
from resd.envs.manufactoria.generator import generate_split, split_problems
from resd.envs.manufactoria.solutions import reject_all_program, solution_for

LOOP_FOREVER = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] p\n    [B] p\n    [EMPTY] p\nEND end"


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    problems = split_problems("train") + split_problems("test")
    rows = generate_split("train") + generate_split("test")
    print(f"generate 874 problems with tests and rows: {time.perf_counter() - start:.2f} s (first call, uncached)")

    codes = [solution_for(p.family, p.params) for p, _ in problems]
    programs = [parse_program(code) for code in codes]
    n_tests = sum(len(tests) for _, tests in problems)
    mean_nodes = sum(len(p.nodes) for p in programs) / len(programs)
    print(f"{len(problems)} problems, {n_tests} tests, reference factories with {mean_nodes:.1f} nodes on average")
    print(f"python {platform.python_version()} on {platform.machine()}")

    def interpret() -> None:
        for program, (_, tests) in zip(programs, problems, strict=True):
            for test in tests:
                passes(test, run_program(program, test.input))

    seconds = best_time(interpret, args.repeat)
    print(f"interpreter + pass rule (pre-parsed):   {n_tests / seconds:12,.0f} test cases/s")

    def parse_and_run() -> None:
        for code, (_, tests) in zip(codes, problems, strict=True):
            run_tests(code, tests)

    seconds = best_time(parse_and_run, args.repeat)
    print(f"run_tests (parse + run + records):      {n_tests / seconds:12,.0f} test cases/s")

    env = ManufactoriaEnv()
    cases = {
        "correct factory (score 1, no feedback)": [f"```manufactoria\n{c}\n```" for c in codes],
        "reject-all factory (Runtime Error feedback)": [f"```manufactoria\n{reject_all_program()}\n```"] * len(rows),
        "parse error": ["```manufactoria\nSTART start:\n    NEXT nowhere\nEND end\n```"] * len(rows),
        "no code block": ["I am not sure."] * len(rows),
    }
    for label, responses in cases.items():
        def score_all(rs: list[str] = responses) -> None:
            for response, row in zip(rs, rows, strict=True):
                env.score(response, row)

        seconds = best_time(score_all, args.repeat)
        print(f"score() {label:44s} {len(rows) / seconds:10,.0f} calls/s")

    subset = rows[:50]
    looping = f"```manufactoria\n{LOOP_FOREVER}\n```"
    seconds = best_time(lambda: [env.score(looping, row) for row in subset], args.repeat)
    print(f"score() worst case, 35 tests x 1000 steps  {len(subset) / seconds:10,.1f} calls/s")


if __name__ == "__main__":
    main()
