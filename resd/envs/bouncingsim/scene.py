"""Scenes of the MULTIOBJ family: several balls bouncing inside one convex regular polygon.

A scene is fully determined by ``(seed, difficulty)``; :func:`generate_scene` draws the container
(3-6 sides, circumradius 375, centred in a 1500 x 1500 world), the balls (radius 20, placed
without overlap and clear of the walls) and their velocities from ``random.Random(seed)``.
Coordinates are in metres with +Y up; time is in seconds.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

WORLD_SIZE = 1500.0
CONTAINER_RADIUS = 375.0  # circumradius: diameter 300 x factor 2.5, as in the upstream generator
BALL_RADIUS = 20.0
#: the ~15 query times of a scene, in seconds
DEFAULT_TIMES: tuple[float, ...] = tuple(round(0.1 * k, 2) for k in range(1, 16))
#: extra clearance between a new ball and the walls / other balls when placing it
PLACEMENT_MARGIN = 5.0
SCENE_TYPE = "MULTIOBJ"


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Generator settings of one difficulty level."""

    name: str
    level: int
    n_balls: tuple[int, int]  # inclusive range
    speed: tuple[float, float]
    sides: tuple[int, int]  # inclusive range


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty("easy", 1, (3, 3), (400.0, 600.0), (3, 6)),
    "medium": Difficulty("medium", 2, (4, 5), (600.0, 800.0), (3, 6)),
}


@dataclasses.dataclass(frozen=True)
class Container:
    """A fixed convex regular polygon. Vertex k sits at angle ``orientation + 2*pi*k/sides``."""

    sides: int
    radius: float
    center: tuple[float, float]
    orientation: float

    def vertices(self) -> list[tuple[float, float]]:
        """The corners, counter-clockwise."""
        cx, cy = self.center
        return [
            (
                cx + self.radius * math.cos(self.orientation + 2 * math.pi * k / self.sides),
                cy + self.radius * math.sin(self.orientation + 2 * math.pi * k / self.sides),
            )
            for k in range(self.sides)
        ]

    def edges(self) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        """The edges as (start, end) pairs, counter-clockwise."""
        v = self.vertices()
        return [(v[k], v[(k + 1) % self.sides]) for k in range(self.sides)]

    def inradius(self) -> float:
        return self.radius * math.cos(math.pi / self.sides)

    def wall_clearance(self, point: tuple[float, float]) -> float:
        """Signed distance from ``point`` to the nearest edge line (positive inside)."""
        px, py = point
        best = math.inf
        for (ax, ay), (bx, by) in self.edges():
            ex, ey = bx - ax, by - ay
            length = math.hypot(ex, ey)
            # counter-clockwise order: the inward normal is the edge direction turned left
            nx, ny = -ey / length, ex / length
            best = min(best, (px - ax) * nx + (py - ay) * ny)
        return best


@dataclasses.dataclass(frozen=True)
class Ball:
    """A rigid circular ball; all balls have the same density, hence equal mass."""

    position: tuple[float, float]
    velocity: tuple[float, float]
    radius: float = BALL_RADIUS
    angular_velocity: float = 0.0
    shape: str = "circle"


@dataclasses.dataclass(frozen=True)
class Scene:
    """One MULTIOBJ scene: a container, its balls, the physics and the query times."""

    container: Container
    balls: tuple[Ball, ...]
    times: tuple[float, ...] = DEFAULT_TIMES
    gravity: tuple[float, float] = (0.0, 0.0)
    restitution: float = 1.0
    friction: float = 0.0
    difficulty: str = "easy"
    seed: int | None = None

    def to_config(self) -> dict[str, Any]:
        """The JSON-able ``scene_config`` stored with a dataset row."""
        return {
            "meta": {
                "scene_type": SCENE_TYPE,
                "difficulty": self.difficulty,
                "level": DIFFICULTIES[self.difficulty].level if self.difficulty in DIFFICULTIES else None,
                "seed": self.seed,
            },
            "world": {"width": WORLD_SIZE, "height": WORLD_SIZE},
            "containers": [
                {
                    "shape": "regular_polygon",
                    "sides": self.container.sides,
                    "radius": self.container.radius,
                    "center": list(self.container.center),
                    "orientation": self.container.orientation,
                }
            ],
            "objects": [
                {
                    "shape": b.shape,
                    "radius": b.radius,
                    "position": list(b.position),
                    "velocity": list(b.velocity),
                    "angular_velocity": b.angular_velocity,
                }
                for b in self.balls
            ],
            "physics": {
                "gravity": list(self.gravity),
                "restitution": self.restitution,
                "friction": self.friction,
            },
            "times": list(self.times),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Scene:
        """Inverse of :meth:`to_config`."""
        c = config["containers"][0]
        meta = config.get("meta", {})
        physics = config.get("physics", {})
        return cls(
            container=Container(int(c["sides"]), float(c["radius"]), _pair(c["center"]), float(c["orientation"])),
            balls=tuple(
                Ball(
                    position=_pair(o["position"]),
                    velocity=_pair(o["velocity"]),
                    radius=float(o.get("radius", BALL_RADIUS)),
                    angular_velocity=float(o.get("angular_velocity", 0.0)),
                    shape=str(o.get("shape", "circle")),
                )
                for o in config["objects"]
            ),
            times=tuple(float(t) for t in config.get("times", DEFAULT_TIMES)),
            gravity=_pair(physics.get("gravity", (0.0, 0.0))),
            restitution=float(physics.get("restitution", 1.0)),
            friction=float(physics.get("friction", 0.0)),
            difficulty=str(meta.get("difficulty", "easy")),
            seed=meta.get("seed"),
        )


def _pair(value: Any) -> tuple[float, float]:
    return (float(value[0]), float(value[1]))


def generate_scene(
    seed: int,
    difficulty: str = "easy",
    *,
    times: tuple[float, ...] = DEFAULT_TIMES,
    gravity: tuple[float, float] = (0.0, 0.0),
) -> Scene:
    """Draw one scene deterministically from ``seed``.

    Positions and velocities are rounded to 2 decimals so that the numbers printed in the prompt
    are exactly the ones simulated.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {sorted(DIFFICULTIES)}")
    spec = DIFFICULTIES[difficulty]
    rng = random.Random(seed)
    sides = rng.randint(*spec.sides)
    orientation = round(rng.uniform(0.0, 2 * math.pi), 4)
    centre = (WORLD_SIZE / 2, WORLD_SIZE / 2)
    container = Container(sides, CONTAINER_RADIUS, centre, orientation)
    n_balls = rng.randint(*spec.n_balls)
    positions = _place_balls(rng, container, n_balls, BALL_RADIUS)
    balls = []
    for position in positions:
        speed = rng.uniform(*spec.speed)
        angle = rng.uniform(0.0, 2 * math.pi)
        velocity = (round(speed * math.cos(angle), 2), round(speed * math.sin(angle), 2))
        balls.append(Ball(position=position, velocity=velocity))
    return Scene(container, tuple(balls), tuple(times), gravity, 1.0, 0.0, difficulty, seed)


def _place_balls(rng: random.Random, container: Container, n: int, radius: float) -> list[tuple[float, float]]:
    """Rejection-sample ``n`` centres clear of the walls and of each other."""
    cx, cy = container.center
    reach = container.radius
    placed: list[tuple[float, float]] = []
    for _ in range(100_000):
        if len(placed) == n:
            return placed
        p = (round(rng.uniform(cx - reach, cx + reach), 2), round(rng.uniform(cy - reach, cy + reach), 2))
        if container.wall_clearance(p) < radius + PLACEMENT_MARGIN:
            continue
        if any(math.dist(p, q) < 2 * radius + PLACEMENT_MARGIN for q in placed):
            continue
        placed.append(p)
    raise RuntimeError(f"could not place {n} balls of radius {radius} in a {container.sides}-gon")
