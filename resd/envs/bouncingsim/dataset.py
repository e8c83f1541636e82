"""BouncingSim datasets: rows in the upstream format, veRL rows, and files on disk.

Seeds (fixed, so every install generates the same data): row ``i`` of split ``s`` (train 0,
test 1) at level ``L`` (easy 1, medium 2) uses the first seed of
``L*10**9 + s*10**8 + 1000*i + a`` (a = 0, 1, ...) whose scene passes :func:`ground_truth_agrees`.
Train and test scenes therefore never share a seed.

Rejected scenes. Several balls in a box are chaotic: a tiny error in one bounce can grow until
the positions are unpredictable, and then the "ground truth" is only one arbitrary numerical
outcome. A scene is kept only if the pymunk ground truth and an independent exact event-driven
solver (:mod:`resd.envs.bouncingsim.reference`) agree within ``AGREEMENT_TOLERANCE`` metres of
mean distance at every query time. With the default times (0.1 .. 1.5 s) this rejects almost
no easy scene and a few medium ones (see the benchmark).
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

from resd.envs.base import DataError
from resd.envs.bouncingsim.checks import encode_ground_truth, make_assert
from resd.envs.bouncingsim.physics import round_positions, simulate
from resd.envs.bouncingsim.prompt import build_prompt
from resd.envs.bouncingsim.reference import exact_positions
from resd.envs.bouncingsim.scene import DIFFICULTIES, Scene, generate_scene

DATASET_NAME = "bouncingsim"
#: rows per split as in the paper's runs (easy 640/100; medium: first 320 train rows used, 100 test)
DEFAULT_SIZES: dict[str, dict[str, int]] = {"easy": {"train": 640, "test": 100}, "medium": {"train": 320, "test": 100}}
SPLITS = ("train", "test")
AGREEMENT_TOLERANCE = 1.0
MAX_ATTEMPTS = 1000


def base_seed(difficulty: str, split: str, index: int) -> int:
    """The first seed tried for row ``index`` of ``split``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; BouncingSim has {', '.join(SPLITS)}")
    level = DIFFICULTIES[difficulty].level
    return level * 10**9 + SPLITS.index(split) * 10**8 + 1000 * index


def ground_truth_agrees(
    scene: Scene, positions: list[list[list[float]]], tolerance: float = AGREEMENT_TOLERANCE
) -> bool:
    """True if ``positions`` (pymunk) match the exact event-driven solution at every time."""
    exact = exact_positions(scene)
    for got, want in zip(positions, exact):
        mean = sum(math.dist(p, q) for p, q in zip(got, want)) / len(want)
        if not mean <= tolerance:
            return False
    return True


def checked_scene(difficulty: str, split: str, index: int) -> tuple[Scene, list[list[list[float]]]]:
    """The scene of one row and its pymunk positions at the scene's times."""
    first = base_seed(difficulty, split, index)
    for attempt in range(MAX_ATTEMPTS):
        scene = generate_scene(first + attempt, difficulty)
        try:
            positions = simulate(scene)
        except RuntimeError:  # the engine got stuck (never seen so far): draw another scene
            continue
        if ground_truth_agrees(scene, positions):
            return scene, positions
    raise RuntimeError(f"no well-posed scene among {MAX_ATTEMPTS} seeds from {first}")


def scene_tests(scene: Scene, positions: list[list[list[float]]]) -> list[str]:
    """The assert lines of a scene."""
    return [make_assert(t, round_positions(p)) for t, p in zip(scene.times, positions)]


def make_row(scene: Scene, positions: list[list[list[float]]], row_id: str) -> dict[str, Any]:
    """A row in the upstream (Hugging Face) format."""
    return {
        "messages": [{"role": "user", "content": build_prompt(scene)}],
        "ground_truth": scene_tests(scene, positions),
        "dataset": DATASET_NAME,
        "difficulty": DIFFICULTIES[scene.difficulty].level,
        "id": row_id,
        "scene_config": scene.to_config(),
    }


def generate_row(difficulty: str, split: str, index: int) -> dict[str, Any]:
    """Row ``index`` of a generated split (a fresh copy; rows are cached per process)."""
    return copy.deepcopy(_cached_row(difficulty, split, index))


@functools.lru_cache(maxsize=4096)
def _cached_row(difficulty: str, split: str, index: int) -> dict[str, Any]:
    scene, positions = checked_scene(difficulty, split, index)
    return make_row(scene, positions, f"{DATASET_NAME}-{difficulty}-{split}-{index:05d}")


def generate_rows(difficulty: str, split: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    """Rows ``start .. start+n-1`` of a generated split."""
    return [generate_row(difficulty, split, i) for i in range(start, start + n)]


def to_verl_row(row: dict[str, Any], split: str) -> dict[str, Any]:
    """The row as RESD's veRL preprocessing writes it (``prompt``, ``reward_model``, ``extra_info``)."""
    level = row.get("difficulty")
    suffix = next((name for name, d in DIFFICULTIES.items() if d.level == level), str(level))
    meta = (row.get("scene_config") or {}).get("meta") or {}
    return {
        "data_source": f"{row.get('dataset', DATASET_NAME)}-{suffix}",
        "prompt": row["messages"],
        "ability": DATASET_NAME,
        "reward_model": {"style": DATASET_NAME, "ground_truth": json.dumps(row["ground_truth"])},
        "extra_info": {
            "split": split,
            "index": str(row["id"]),
            "difficulty": level,
            "axes": meta.get("scene_type", ""),
        },
    }


def write_dataset(
    out_dir: str | Path,
    difficulty: str = "easy",
    n_train: int | None = None,
    n_test: int | None = None,
    fmt: str = "jsonl",
    *,
    verl: bool = False,
    compress_ground_truth: bool = False,
) -> dict[str, Path]:
    """Generate the train and test splits and write ``<out_dir>/{train,test}.{jsonl,parquet}``.

    ``verl=True`` writes veRL rows instead of upstream rows; ``compress_ground_truth`` stores the
    asserts as base64(zlib(pickle)) like some upstream files (upstream rows only).
    Parquet needs pyarrow. Returns the written paths by split.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {sorted(DIFFICULTIES)}")
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"unknown format {fmt!r}; use 'jsonl' or 'parquet'")
    sizes = {"train": n_train, "test": n_test}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in SPLITS:
        n = DEFAULT_SIZES[difficulty][split] if sizes[split] is None else sizes[split]
        rows = generate_rows(difficulty, split, n)
        if verl:
            rows = [to_verl_row(r, split) for r in rows]
        elif compress_ground_truth:
            rows = [{**r, "ground_truth": encode_ground_truth(r["ground_truth"])} for r in rows]
        path = out / f"{split}.{fmt}"
        _write_rows(rows, path, fmt)
        written[split] = path
    return written


def _write_rows(rows: list[dict[str, Any]], path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("writing parquet needs pyarrow (pip install pyarrow)") from e
    pq.write_table(pa.Table.from_pylist(rows), path)
