"""Ground truth for BouncingSim scenes, computed with the pymunk 2-D physics engine.

Why pymunk (Chipmunk2D) rather than Box2D, which upstream used:

- pymunk ships prebuilt wheels for every current CPython and platform and is already a
  dependency of this project; the Box2D bindings on PyPI (``box2d-py``/``Box2D``) need SWIG
  and a compiler on recent Pythons and are barely maintained.
- Chipmunk corrects overlaps with separate "bias" velocities that are discarded after each
  step, so restitution 1 conserves kinetic energy; Box2D ignores restitution below a velocity
  threshold and feeds position correction back into the velocities.
- It has exactly what the scenes need: static segments for the container walls, circles for
  the balls, elasticity and friction per shape.

Step sizes. A discrete engine notices a contact only once the shapes overlap, so a fixed step
``dt`` resolves every bounce up to ``dt`` late and with a slightly wrong contact normal. Grazing
ball-ball hits amplify that error, and several balls in a box are chaotic: with fixed steps of
1/4000 s, 12 of the first 50 easy scenes ended more than 50 m (mean over balls) away from the
exact trajectory within 3 s. We therefore step *adaptively* (conservative advancement, a
standard continuous-collision technique): before each step we compute, from the current
positions and velocities, the earliest time any ball can touch a wall or another ball, and never
step past that moment by more than ``OVERSHOOT`` seconds, so the engine meets each contact at
most ~0.01 mm deep. Steps are also capped at ``MAX_STEP`` and land exactly on each query time.
The engine still does all the physics: contact detection, restitution impulses, integration.
With this, pymunk matches an exact event-driven solver to about a millimetre on typical scenes
(``benchmarks/bouncingsim_speed.py``); scenes where it does not are rejected by the dataset
generator (see :mod:`resd.envs.bouncingsim.dataset`).
"""

from __future__ import annotations

import math

import pymunk

from resd.envs.bouncingsim.scene import Scene

#: longest step, seconds (matters for gravity, where positions are integrated numerically)
MAX_STEP = 1.0 / 1000.0
#: how far past a predicted contact we step so that the engine sees the overlap, seconds
OVERSHOOT = 1e-8
#: allowed overlap before Chipmunk pushes shapes apart (its default of 0.1 m is too loose)
COLLISION_SLOP = 1e-6
#: safety valve against a runaway loop in one call of ``advance`` (a 1.5 s scene takes ~1500 steps)
MAX_STEPS = 2_000_000

State = tuple[float, float, float, float]  # x, y, vx, vy


class _World:
    """A pymunk space holding one scene, plus the wall geometry used to plan steps."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.space = pymunk.Space()
        self.space.gravity = scene.gravity
        self.space.collision_slop = COLLISION_SLOP
        self.space.iterations = 20
        self.walls: list[tuple[float, float, float, float]] = []  # point on wall, inward normal
        for (ax, ay), (bx, by) in scene.container.edges():
            segment = pymunk.Segment(self.space.static_body, (ax, ay), (bx, by), 0.0)
            segment.elasticity = scene.restitution
            segment.friction = scene.friction
            self.space.add(segment)
            length = math.hypot(bx - ax, by - ay)
            self.walls.append((ax, ay, -(by - ay) / length, (bx - ax) / length))
        self.bodies: list[pymunk.Body] = []
        self.radii: list[float] = []
        for ball in scene.balls:
            mass = math.pi * ball.radius**2  # uniform density: equal radii, equal masses
            body = pymunk.Body(mass, pymunk.moment_for_circle(mass, 0.0, ball.radius))
            body.position = ball.position
            body.velocity = ball.velocity
            body.angular_velocity = ball.angular_velocity
            shape = pymunk.Circle(body, ball.radius)
            # Chipmunk multiplies the elasticities of the two shapes: 1 x the wall's restitution
            # for a wall contact, 1 x 1 between balls.
            shape.elasticity = 1.0
            shape.friction = 1.0 if scene.friction else 0.0
            self.space.add(body, shape)
            self.bodies.append(body)
            self.radii.append(ball.radius)

    def states(self) -> list[State]:
        return [(b.position.x, b.position.y, b.velocity.x, b.velocity.y) for b in self.bodies]

    def time_to_contact(self) -> float:
        """A lower bound on the time until any new contact starts (``inf`` if none is coming)."""
        states = self.states()
        gx, gy = self.scene.gravity
        best = math.inf
        for (x, y, vx, vy), r in zip(states, self.radii):
            for ax, ay, nx, ny in self.walls:
                gap = (x - ax) * nx + (y - ay) * ny - r
                best = min(best, _first_root(gap, vx * nx + vy * ny, gx * nx + gy * ny))
        # all balls feel the same gravity, so relative motion is uniform and the distance between
        # two centres is convex in time: a closing pair meets no sooner than gap / closing speed
        for i in range(len(states)):
            xi, yi, vxi, vyi = states[i]
            for j in range(i + 1, len(states)):
                xj, yj, vxj, vyj = states[j]
                dx, dy = xj - xi, yj - yi
                dist = math.hypot(dx, dy)
                if dist == 0.0:
                    continue
                closing = -(dx * (vxj - vxi) + dy * (vyj - vyi)) / dist
                if closing > 0:
                    best = min(best, max(dist - self.radii[i] - self.radii[j], 0.0) / closing)
        return best

    def advance(self, duration: float) -> None:
        """Step the engine forward by ``duration`` seconds in contact-aware steps."""
        remaining = duration
        for _ in range(MAX_STEPS):
            if remaining <= 1e-12:
                return
            step = min(remaining, MAX_STEP, self.time_to_contact() + OVERSHOOT)
            self.space.step(step)
            remaining -= step
        raise RuntimeError("simulation did not finish: too many steps")


def _first_root(gap: float, rate: float, accel: float) -> float:
    """Earliest t > 0 with gap + rate*t + accel*t^2/2 <= 0 (a lower bound), or inf."""
    if accel == 0.0:
        return max(gap, 0.0) / -rate if rate < 0 else math.inf
    # bound the motion by its worst case over one MAX_STEP: with |accel| the gap can shrink
    # faster later, so use the speed at the end of the longest possible step
    worst_rate = rate - abs(accel) * MAX_STEP
    return max(gap, 0.0) / -worst_rate if worst_rate < 0 else math.inf


def simulate_states(scene: Scene, times: tuple[float, ...] | None = None) -> list[list[State]]:
    """``(x, y, vx, vy)`` of every ball at each query time (seconds, ascending, >= 0)."""
    times = scene.times if times is None else tuple(times)
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError("query times must be ascending")
    if times and times[0] < 0:
        raise ValueError("query times must be non-negative")
    world = _World(scene)
    out = []
    now = 0.0
    for t in times:
        world.advance(t - now)
        now = t
        out.append(world.states())
    return out


def simulate(scene: Scene, times: tuple[float, ...] | None = None) -> list[list[list[float]]]:
    """Ball centres ``[[x1, y1], ...]`` (unrounded) at each query time, in the order of the balls."""
    return [[[x, y] for x, y, _, _ in states] for states in simulate_states(scene, times)]


def round_positions(positions: list[list[float]]) -> list[list[float]]:
    """Round to 2 decimals and turn -0.0 into 0.0, as the task asks of the model."""
    return [[round(x, 2) + 0.0, round(y, 2) + 0.0] for x, y in positions]
