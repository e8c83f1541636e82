"""Generator of the Manufactoria-Has dataset (Hugging Face ``manufactoria/has_train`` and
``manufactoria/has_test``, the Manufactoria task of RESD, arXiv 2605.12741).

Three families, all four-colour (R, B, Y, G) and easy:

- ``contains_count`` (194 problems): "Accept if the tape has at least N <c>s; reject otherwise.",
  with one to three conditions joined by " and ". Colours are named by their letters, so the
  criteria read "at least 2 Rs and at least 1 Gs" (the same letters the tape and the DSL use).
  The 194 problems are a seeded sample of the 224 combinations: one colour with N in 1..5, two
  colours with N, M in 1..4, three colours with each N in 1..3.
- ``contains_ordered`` (340): every pattern of length 1 to 4 (4 + 16 + 64 + 256), as a
  subsequence.
- ``contains_substring`` (340): the same patterns, as consecutive substrings.

874 problems are shuffled with ``random.Random(seed)`` and split 85/15: 742 train / 132 test
with seed 42. Every problem has 35 distinct test tapes: the empty tape and the four one-symbol
tapes, pattern-specific cases (the pattern itself, near misses, long tapes of up to 20 symbols),
tapes built to satisfy or narrowly miss the criterion (up to 12 symbols) until each label has 8
tapes, then random tapes of length 1 to 12. So every problem has at least 8 accepted and 8
rejected tapes (the upstream data has at least 3 of each). Every label is computed from the
criterion, never assumed. Each problem draws from its own ``random.Random`` seeded by the seed
and its name, so the output is deterministic.

Command line: ``python -m resd.envs.manufactoria.generator OUT_DIR [--format jsonl|parquet]
[--layout hf|verl] [--seed 42]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import random
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from resd.envs.base import DataError
from resd.envs.manufactoria.checking import TapeTest
from resd.envs.manufactoria.prompt import build_prompt

COLOURS = "RBYG"
SEED = 42
TRAIN_RATIO = 0.85
FAMILY_SIZES = {"contains_count": 194, "contains_ordered": 340, "contains_substring": 340}
MAX_TESTS = 35
MIN_PER_LABEL = 3
#: built (not random) tapes are added until each label has this many, so that a factory cannot
#: pass by accepting only a handful of tapes
BALANCE_TARGET = 8
RANDOM_MAX_LEN = 12
COMPLEX_MAX_LEN = 20
DATASET = "manufactoria"
DIFFICULTY = "easy"
DATA_SOURCE = "manufactoria-has"


@dataclasses.dataclass(frozen=True)
class HasProblem:
    """One Manufactoria-Has problem.

    ``requirements`` (colour -> minimum count) is set for ``contains_count``, ``pattern`` for the
    two pattern families.
    """

    family: str
    name: str
    criteria: str
    requirements: tuple[tuple[str, int], ...] = ()
    pattern: str = ""

    def accepts(self, tape: str) -> bool:
        """Ground truth: whether a tape satisfies the criterion."""
        if self.family == "contains_count":
            return all(tape.count(c) >= n for c, n in self.requirements)
        if self.family == "contains_ordered":
            return _is_subsequence(self.pattern, tape)
        return self.pattern in tape

    @property
    def params(self) -> dict[str, Any]:
        """Parameters for :func:`resd.envs.manufactoria.solutions.solution_for`."""
        if self.family == "contains_count":
            return {"requirements": dict(self.requirements)}
        return {"pattern": self.pattern}


def _is_subsequence(pattern: str, tape: str) -> bool:
    symbols = iter(tape)
    return all(c in symbols for c in pattern)  # `in` advances the iterator


# ---------------------------------------------------------------------------------------------
# problems


def count_problem(requirements: Mapping[str, int]) -> HasProblem:
    """The ``contains_count`` problem for ``{colour: minimum}`` (colours in R, B, Y, G order)."""
    reqs = tuple((c, requirements[c]) for c in COLOURS if c in requirements)
    conditions = " and ".join(f"at least {n} {c}s" for c, n in reqs)
    name = "has_count_" + "_".join(f"{n}{c}" for c, n in reqs)
    return HasProblem("contains_count", name, f"Accept if the tape has {conditions}; reject otherwise.", reqs)


def ordered_problem(pattern: str) -> HasProblem:
    """The ``contains_ordered`` (subsequence) problem for ``pattern``."""
    criteria = (
        f"Accept if the tape contains the subsequence {pattern} (does not have to be consecutive); reject otherwise."
    )
    return HasProblem("contains_ordered", f"has_subseq_{pattern}", criteria, pattern=pattern)


def substring_problem(pattern: str) -> HasProblem:
    """The ``contains_substring`` (consecutive) problem for ``pattern``."""
    criteria = f"Accept if the tape contains the substring '{pattern}' (must be consecutive); reject otherwise."
    return HasProblem("contains_substring", f"has_substr_{pattern}", criteria, pattern=pattern)


def _count_space() -> list[dict[str, int]]:
    space: list[dict[str, int]] = []
    for k, max_n in ((1, 5), (2, 4), (3, 3)):
        for colours in itertools.combinations(COLOURS, k):
            for counts in itertools.product(range(1, max_n + 1), repeat=k):
                space.append(dict(zip(colours, counts, strict=True)))
    return space


def _patterns() -> list[str]:
    return ["".join(p) for length in range(1, 5) for p in itertools.product(COLOURS, repeat=length)]


def generate_problems(seed: int = SEED) -> list[HasProblem]:
    """All 874 problems in family order (count, ordered, substring), deduplicated by criteria."""
    rng = random.Random(seed)
    counts = [count_problem(r) for r in rng.sample(_count_space(), FAMILY_SIZES["contains_count"])]
    ordered = [ordered_problem(p) for p in _patterns()]
    substring = [substring_problem(p) for p in _patterns()]
    problems: dict[str, HasProblem] = {}
    for problem in counts + ordered + substring:
        problems.setdefault(problem.criteria, problem)
    return list(problems.values())


# ---------------------------------------------------------------------------------------------
# test tapes


def _random_tape(rng: random.Random, length: int, colours: str = COLOURS) -> str:
    return "".join(rng.choice(colours) for _ in range(length))


def _insert_fillers(rng: random.Random, core: str, total: int, colours: str) -> str:
    """``core`` with random symbols from ``colours`` inserted at random places, up to ``total`` long."""
    tape = list(core)
    if colours:
        for _ in range(max(0, total - len(core))):
            tape.insert(rng.randint(0, len(tape)), rng.choice(colours))
    return "".join(tape)


# Each maker returns a tape of ``length`` symbols, or of the shortest possible length if more.


def _count_positive(problem: HasProblem, rng: random.Random, length: int) -> str:
    base = [c for c, n in problem.requirements for _ in range(n)]
    base += _random_tape(rng, max(0, length - len(base)))
    rng.shuffle(base)
    return "".join(base)


def _count_negative(problem: HasProblem, rng: random.Random, length: int) -> str:
    short, _ = rng.choice(problem.requirements)
    base = [c for c, n in problem.requirements for _ in range(n - (c == short))]
    base += _random_tape(rng, max(0, length - len(base)), COLOURS.replace(short, ""))
    rng.shuffle(base)
    return "".join(base)


def _ordered_positive(problem: HasProblem, rng: random.Random, length: int) -> str:
    return _insert_fillers(rng, problem.pattern, length, COLOURS)


def _ordered_negative(problem: HasProblem, rng: random.Random, length: int) -> str:
    # Dropping one symbol x and never adding x leaves too few x's: no subsequence (nor substring).
    p = problem.pattern
    i = rng.randrange(len(p))
    return _insert_fillers(rng, p[:i] + p[i + 1 :], length, COLOURS.replace(p[i], ""))


def _in_context(rng: random.Random, core: str, length: int) -> str:
    room = max(0, length - len(core))
    before = rng.randint(0, room)
    return _random_tape(rng, before) + core + _random_tape(rng, room - before)


def _substring_positive(problem: HasProblem, rng: random.Random, length: int) -> str:
    return _in_context(rng, problem.pattern, length)


def _substring_negative(problem: HasProblem, rng: random.Random, length: int) -> str:
    p = problem.pattern
    for _ in range(50):
        if len(p) > 1 and rng.random() < 0.5:  # a subsequence that is not consecutive
            i = rng.randint(1, len(p) - 1)
            near = p[:i] + rng.choice(COLOURS) + p[i:]
        else:  # one symbol changed
            i = rng.randrange(len(p))
            near = p[:i] + rng.choice(COLOURS.replace(p[i], "")) + p[i + 1 :]
        tape = _in_context(rng, near, length)
        if not problem.accepts(tape):
            return tape
    return _ordered_negative(problem, rng, length)


_Maker = Callable[[HasProblem, random.Random, int], str]
_EXAMPLES: dict[str, tuple[_Maker, _Maker]] = {
    "contains_count": (_count_positive, _count_negative),
    "contains_ordered": (_ordered_positive, _ordered_negative),
    "contains_substring": (_substring_positive, _substring_negative),
}


def _example(problem: HasProblem, rng: random.Random, accepted: bool, length: int) -> str:
    positive, negative = _EXAMPLES[problem.family]
    return positive(problem, rng, length) if accepted else negative(problem, rng, length)


def _special_cases(problem: HasProblem, rng: random.Random) -> list[tuple[str, str]]:
    """Pattern-specific corner cases: (tape, description)."""
    cases: list[tuple[str, str]] = []
    if problem.family == "contains_count":
        minimum = "".join(c * n for c, n in problem.requirements)
        shuffled = list(minimum)
        rng.shuffle(shuffled)
        cases += [(minimum, "exactly the required symbols"), ("".join(shuffled), "required symbols shuffled")]
        for c, n in problem.requirements:
            cases.append((minimum.replace(c, "", 1), f"one {c} short of the requirement"))
            if len(problem.requirements) > 1:
                cases.append((c * (n + 3), f"many {c}s but nothing else"))
        others = "".join(c for c in COLOURS if c not in dict(problem.requirements))
        cases.append((_random_tape(rng, rng.randint(6, 10), others), "only colours that are not counted"))
    else:
        p = problem.pattern
        cases.append((p, "the pattern itself"))
        if p[::-1] != p:
            cases.append((p[::-1], "the pattern reversed"))
        for i in range(len(p)):
            cases.append((p[:i] + p[i + 1 :], f"the pattern without symbol {i + 1}"))
        if len(p) > 1:
            spread = "".join(c + rng.choice(COLOURS) for c in p[:-1]) + p[-1]
            cases.append((spread, "the pattern with a symbol after each of its symbols"))
            cases.append((p[:-1] * 2, "the pattern prefix repeated"))
    for _ in range(3):
        length = rng.randint(RANDOM_MAX_LEN + 1, COMPLEX_MAX_LEN)
        cases.append((_example(problem, rng, True, length), "long tape built to satisfy the criterion"))
        length = rng.randint(RANDOM_MAX_LEN + 1, COMPLEX_MAX_LEN)
        cases.append((_example(problem, rng, False, length), "long near miss"))
    return cases


def make_tests(problem: HasProblem, rng: random.Random) -> list[TapeTest]:
    """Up to 35 distinct test tapes with at least 3 accepted and 3 rejected, labelled by the criterion."""
    chosen: dict[str, str] = {}

    def add(tape: str, description: str) -> None:
        if tape not in chosen and len(chosen) < MAX_TESTS:
            chosen[tape] = description

    add("", "empty tape")
    for c in COLOURS:
        add(c, f"single {c}")
    for tape, description in _special_cases(problem, rng):
        add(tape, description)
    for accepted in (True, False):
        for _ in range(200):
            if sum(problem.accepts(t) == accepted for t in chosen) >= BALANCE_TARGET:
                break
            description = "tape built to satisfy the criterion" if accepted else "near miss"
            add(_example(problem, rng, accepted, rng.randint(1, RANDOM_MAX_LEN)), description)
    for _ in range(1000):
        if len(chosen) >= MAX_TESTS:
            break
        length = rng.randint(1, RANDOM_MAX_LEN)
        add(_random_tape(rng, length), f"random tape of length {length}")
    tests = [TapeTest(tape, problem.accepts(tape), "", False, description) for tape, description in chosen.items()]
    accepted = sum(t.expected_accepted for t in tests)
    if accepted < MIN_PER_LABEL or len(tests) - accepted < MIN_PER_LABEL:
        raise RuntimeError(f"{problem.name}: could not find {MIN_PER_LABEL} accepted and rejected tapes")
    return tests


# ---------------------------------------------------------------------------------------------
# rows, split, files


def _problem_rng(seed: int, problem: HasProblem, purpose: str) -> random.Random:
    return random.Random(f"manufactoria-has:{seed}:{purpose}:{problem.name}")


def problem_row(problem: HasProblem, tests: list[TapeTest], seed: int = SEED) -> dict[str, Any]:
    """A row in the upstream Hugging Face format (``manufactoria/has_train``)."""
    example_id = uuid.UUID(int=_problem_rng(seed, problem, "id").getrandbits(128), version=4)
    return {
        "messages": [{"role": "user", "content": build_prompt(problem.criteria)}],
        "ground_truth": [
            {
                "input": t.input,
                "expected_output": t.expected_output,
                "expected_accepted": t.expected_accepted,
                "check_output": t.check_output,
                "description": t.description,
            }
            for t in tests
        ],
        "dataset": DATASET,
        "difficulty": DIFFICULTY,
        "id": str(example_id),
        "problem_family": problem.family,
        "name": problem.name,
    }


def to_verl_row(row: Mapping[str, Any], split: str) -> dict[str, Any]:
    """The veRL parquet layout of a row (``reward_model.ground_truth`` is a JSON string)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": row["messages"],
        "ability": "manufactoria",
        "reward_model": {"style": "rule", "ground_truth": json.dumps(row["ground_truth"])},
        "extra_info": {
            "split": split,
            "index": row["id"],
            "difficulty": row["difficulty"],
            "problem_family": row["problem_family"],
            "name": row["name"],
        },
    }


@functools.lru_cache(maxsize=4)
def _generated(seed: int) -> tuple[tuple[tuple[HasProblem, tuple[TapeTest, ...]], ...], ...]:
    problems = generate_problems(seed)
    with_tests = [(p, tuple(make_tests(p, _problem_rng(seed, p, "tests")))) for p in problems]
    random.Random(seed).shuffle(with_tests)
    n_train = int(len(with_tests) * TRAIN_RATIO)
    return tuple(with_tests[:n_train]), tuple(with_tests[n_train:])


def split_problems(split: str, seed: int = SEED) -> list[tuple[HasProblem, list[TapeTest]]]:
    """The problems of ``split`` ("train" or "test") with their tests, in dataset order."""
    if split not in ("train", "test"):
        raise DataError(f"Manufactoria-Has has splits 'train' and 'test', not {split!r}")
    train, test = _generated(seed)
    return [(p, list(t)) for p, t in (train if split == "train" else test)]


def generate_split(split: str, seed: int = SEED) -> list[dict[str, Any]]:
    """The rows of a split in the upstream format (742 train / 132 test with seed 42)."""
    return [problem_row(p, tests, seed) for p, tests in split_problems(split, seed)]


def write_dataset(
    out_dir: str | Path, fmt: str = "jsonl", *, layout: str = "hf", seed: int = SEED
) -> dict[str, Path]:
    """Write ``train`` and ``test`` files to ``out_dir``; return their paths by split.

    ``fmt`` is "jsonl" or "parquet" (needs pyarrow); ``layout`` is "hf" (the upstream rows) or
    "verl" (``prompt``, ``reward_model``, ``extra_info``).
    """
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"fmt must be 'jsonl' or 'parquet', not {fmt!r}")
    if layout not in ("hf", "verl"):
        raise ValueError(f"layout must be 'hf' or 'verl', not {layout!r}")
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise RuntimeError("writing parquet needs pyarrow (pip install pyarrow); use fmt='jsonl'") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "test"):
        rows = generate_split(split, seed)
        if layout == "verl":
            rows = [to_verl_row(r, split) for r in rows]
        path = out / f"{split}.{fmt}"
        if fmt == "jsonl":
            with path.open("w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            pq.write_table(pa.Table.from_pylist(rows), path)
        paths[split] = path
    return paths


def load_split(split: str, path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a split: read from ``path`` if given, else generated in memory (cached)."""
    if path is not None:
        from resd.data import read_rows

        rows = read_rows(path)
    else:
        rows = generate_split(split)
    return rows[:limit] if limit is not None else rows


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: write the dataset."""
    parser = argparse.ArgumentParser(description="Write the Manufactoria-Has dataset (train and test).")
    parser.add_argument("out_dir", help="directory for train.<fmt> and test.<fmt>")
    parser.add_argument("--format", dest="fmt", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--layout", choices=("hf", "verl"), default="hf", help="upstream rows or veRL rows")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    for split, path in write_dataset(args.out_dir, args.fmt, layout=args.layout, seed=args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
