"""BouncingSim speed: scene generation, ground truth, dataset rows and scoring cost.

Run: ``python benchmarks/bouncingsim_speed.py [--scenes 100] [--responses 5]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from resd.envs.bouncingsim import BouncingSimEnv
from resd.envs.bouncingsim.dataset import base_seed, checked_scene, generate_row
from resd.envs.bouncingsim.physics import simulate
from resd.envs.bouncingsim.reference import exact_positions, reference_response
from resd.envs.bouncingsim.scene import Scene, generate_scene


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def scenes(n: int) -> None:
    for difficulty in ("easy", "medium"):
        gen = [_timed(generate_scene, seed, difficulty)[1] for seed in range(n)]
        sim, worst = [], []
        for seed in range(n):
            scene = generate_scene(seed, difficulty)
            positions, seconds = _timed(simulate, scene)
            sim.append(seconds)
            exact = exact_positions(scene)
            worst.append(max(sum(math.dist(p, q) for p, q in zip(a, b)) / len(a) for a, b in zip(positions, exact)))
        rows, attempts = [], 0
        for i in range(n):
            (scene, _), seconds = _timed(checked_scene, difficulty, "train", i)
            rows.append(seconds)
            attempts += scene.seed - base_seed(difficulty, "train", i) + 1
        print(
            f"{difficulty:6s} generate_scene {statistics.mean(gen) * 1e6:7.1f} us | pymunk ground truth "
            f"{statistics.mean(sim) * 1e3:6.1f} ms/scene | checked row {statistics.mean(rows) * 1e3:6.1f} ms "
            f"({attempts / n:.2f} scenes drawn per row, {1 - n / attempts:.1%} rejected) | pymunk vs exact: "
            f"median worst-time error {statistics.median(worst):.4f} m, max {max(worst):.3f} m"
        )


def scoring(n: int) -> None:
    env = BouncingSimEnv()
    row = generate_row("easy", "test", 0)
    scene = Scene.from_config(row["scene_config"])
    cases = {
        "reference (event-driven)": reference_response(scene),
        "constant answer": "```python\ndef predict_position(t):\n    return [[750.0, 750.0]] * 3\n```",
        "safety-filtered": "```python\nimport os\ndef predict_position(t):\n    return []\n```",
    }
    for name, response in cases.items():
        times = [_timed(env.score, response, row)[1] for _ in range(n)]
        per = statistics.mean(times)
        print(f"score {name:26s} {per * 1e3:7.1f} ms/response ({per / 15 * 1e3:5.1f} ms per test, 15 tests)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--responses", type=int, default=5)
    args = parser.parse_args()
    scenes(args.scenes)
    scoring(args.responses)


if __name__ == "__main__":
    main()
