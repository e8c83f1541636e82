"""An exact solution written by hand: an event-driven simulator in pure Python.

:func:`event_driven` jumps from collision to collision: for every ball it computes when it next
reaches a wall line or another ball, moves everything to the earliest such moment and reflects
the velocities. It uses only :mod:`math`, so its source doubles as a model-style answer:
:func:`reference_program` wraps it into a ``predict_position(t)`` program for one scene that
obeys the task's rules. It is also the independent check of the pymunk ground truth
(:func:`exact_positions`). Scenes with gravity are not supported.
"""

from __future__ import annotations

import inspect
import math

from resd.envs.bouncingsim.scene import Scene


def event_driven(state: list, walls: list, radius: float, duration: float) -> list:
    """Advance balls ``state`` ([[x, y, vx, vy], ...], modified in place) by ``duration`` seconds.

    ``walls`` holds (x, y, nx, ny): a point on each container edge and its unit normal pointing
    into the container. Balls have equal radius and mass; all collisions are elastic.
    """
    n = len(state)
    now = 0.0
    for _ in range(1000000):
        wait = duration - now
        event = None
        for i in range(n):
            x, y, vx, vy = state[i]
            for ax, ay, nx, ny in walls:
                approach = vx * nx + vy * ny
                if approach < 0:
                    gap = (x - ax) * nx + (y - ay) * ny - radius
                    dt = max(gap, 0.0) / -approach
                    if dt < wait:
                        wait, event = dt, (i, -1, nx, ny)
        for i in range(n):
            for j in range(i + 1, n):
                dx = state[j][0] - state[i][0]
                dy = state[j][1] - state[i][1]
                dvx = state[j][2] - state[i][2]
                dvy = state[j][3] - state[i][3]
                closing = dx * dvx + dy * dvy
                if closing >= 0:
                    continue
                a = dvx * dvx + dvy * dvy
                c = dx * dx + dy * dy - 4 * radius * radius
                disc = closing * closing - a * c
                if disc < 0:
                    continue
                dt = max((-closing - math.sqrt(disc)) / a, 0.0)
                if dt < wait:
                    wait, event = dt, (i, j, 0.0, 0.0)
        for s in state:
            s[0] += s[2] * wait
            s[1] += s[3] * wait
        now += wait
        if event is None:
            return state
        i, j, nx, ny = event
        p = state[i]
        if j < 0:
            approach = p[2] * nx + p[3] * ny
            p[2] -= 2 * approach * nx
            p[3] -= 2 * approach * ny
        else:
            q = state[j]
            dist = math.hypot(q[0] - p[0], q[1] - p[1])
            ux, uy = (q[0] - p[0]) / dist, (q[1] - p[1]) / dist
            # equal masses: the two balls swap their velocity components along the line of centres
            exchange = (p[2] - q[2]) * ux + (p[3] - q[3]) * uy
            p[2] -= exchange * ux
            p[3] -= exchange * uy
            q[2] += exchange * ux
            q[3] += exchange * uy
    return state


def _walls(scene: Scene) -> list[tuple[float, float, float, float]]:
    walls = []
    for (ax, ay), (bx, by) in scene.container.edges():
        length = math.hypot(bx - ax, by - ay)
        walls.append((ax, ay, -(by - ay) / length, (bx - ax) / length))
    return walls


def _check_supported(scene: Scene) -> None:
    if any(scene.gravity):
        raise ValueError("the event-driven solution handles scenes without gravity only")
    if len({b.radius for b in scene.balls}) > 1:
        raise ValueError("the event-driven solution assumes balls of equal radius")


def exact_positions(scene: Scene, times: tuple[float, ...] | None = None) -> list[list[list[float]]]:
    """Unrounded ball centres at each query time (ascending), by :func:`event_driven`."""
    _check_supported(scene)
    times = scene.times if times is None else tuple(times)
    state = [[b.position[0], b.position[1], b.velocity[0], b.velocity[1]] for b in scene.balls]
    walls = _walls(scene)
    radius = scene.balls[0].radius
    out = []
    now = 0.0
    for t in times:
        event_driven(state, walls, radius, t - now)
        now = t
        out.append([[s[0], s[1]] for s in state])
    return out


_WRAPPER = '''

def predict_position(t):
    sides = {sides}
    circumradius = {radius!r}
    cx, cy = {cx!r}, {cy!r}
    orientation = {orientation!r}
    state = {state!r}
    walls = []
    for k in range(sides):
        a = orientation + 2 * math.pi * k / sides
        b = orientation + 2 * math.pi * (k + 1) / sides
        ax, ay = cx + circumradius * math.cos(a), cy + circumradius * math.sin(a)
        bx, by = cx + circumradius * math.cos(b), cy + circumradius * math.sin(b)
        length = math.hypot(bx - ax, by - ay)
        walls.append((ax, ay, -(by - ay) / length, (bx - ax) / length))
    event_driven(state, walls, {ball_radius!r}, t)
    return [[round(s[0], 2) + 0.0, round(s[1], 2) + 0.0] for s in state]
'''


def reference_program(scene: Scene) -> str:
    """Source of a correct ``predict_position`` for ``scene``: only ``math``, no globals."""
    _check_supported(scene)
    c = scene.container
    return "import math\n\n\n" + inspect.getsource(event_driven) + _WRAPPER.format(
        sides=c.sides,
        radius=c.radius,
        cx=c.center[0],
        cy=c.center[1],
        orientation=c.orientation,
        ball_radius=scene.balls[0].radius,
        state=[[b.position[0], b.position[1], b.velocity[0], b.velocity[1]] for b in scene.balls],
    )


def reference_response(scene: Scene) -> str:
    """A whole model-style response: a sentence and the program in a python fence."""
    return "I simulate the scene collision by collision.\n\n```python\n" + reference_program(scene) + "```\n"
