"""The task prompt of a BouncingSim scene (one user message).

Written for this project; it follows the structure of upstream's "function" prompt: a header,
the general mechanics, the constraints on the answer, the scene (containers, objects, physics,
dynamics, conventions), the task and the output format.
"""

from __future__ import annotations

from resd.envs.bouncingsim.scene import Scene

HEADER = "# Polygon Dynamics Prediction"

MECHANICS = """## General mechanics
- Between collisions every object moves with constant acceleration: p(t) = p0 + v0*t + a*t^2/2 and \
v(t) = v0 + a*t, where a is the gravity vector (zero when there is no gravity).
- A collision with a wall of unit normal n reflects the velocity: v' = v - 2*(v . n)*n. With restitution 1 \
no speed is lost; without friction the tangential velocity is unchanged.
- Objects have a finite size. A ball touches a wall when the distance from its centre to that wall segment \
equals its radius, and two balls touch when the distance between their centres equals the sum of their radii. \
Colliding balls of equal mass exchange the components of their velocities along the line joining their centres.
- Units: metres (m), seconds (s), radians (rad). The Y axis points up."""

CONSTRAINTS = """## Constraints on your answer
- Define exactly one function, `predict_position(t)`, taking the time t in seconds (t >= 0).
- Do not use global variables: put every constant and helper inside the function.
- Do not import anything except `math`.
- No input or output of any kind: no prints, no files, no network.
- Be deterministic: no randomness.
- Round every coordinate with `round(value, 2)` and turn -0.0 into 0.0.
- Every call must be independent of the previous ones: simulate from t = 0 each time and keep no state \
between calls.
- Assume a ball that reaches a wall hits it and bounces back; it never passes through or sticks."""


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def scene_section(scene: Scene) -> str:
    """The description of the containers, objects, physics and conventions of one scene."""
    c = scene.container
    lines = [
        "## Scene",
        "### Containers",
        f"- Container 1: a regular polygon with {c.sides} sides, circumradius {_fmt(c.radius)} m, centre "
        f"({_fmt(c.center[0])}, {_fmt(c.center[1])}), orientation {c.orientation:.4f} rad. Vertex k "
        f"(k = 0 .. {c.sides - 1}) is at centre + circumradius * (cos(orientation + 2*pi*k/{c.sides}), "
        f"sin(orientation + 2*pi*k/{c.sides})). The container is fixed: it neither rotates nor moves. "
        "Its walls are the straight edges between consecutive vertices.",
        "### Objects",
    ]
    for i, b in enumerate(scene.balls, 1):
        lines.append(
            f"- Ball {i}: {b.shape}, radius {_fmt(b.radius)} m, initial position ({_fmt(b.position[0])}, "
            f"{_fmt(b.position[1])}) m, initial velocity ({_fmt(b.velocity[0])}, {_fmt(b.velocity[1])}) m/s, "
            f"angular velocity {_fmt(b.angular_velocity)} rad/s."
        )
    gx, gy = scene.gravity
    gravity = "none (zero gravity)" if not (gx or gy) else f"({_fmt(gx)}, {_fmt(gy)}) m/s^2"
    lines += [
        "### Physics",
        f"- Gravity: {gravity}.",
        f"- Restitution: {scene.restitution:g} for every collision (perfectly elastic). Friction: {scene.friction:g}.",
        "- All balls have the same density, so balls of equal radius have equal mass. The container has "
        "infinite mass.",
        "### Dynamics",
        "- Balls bounce off the container walls and off each other; nothing else acts on them.",
        "### Conventions",
        "- Positions are the centres of the balls, in metres, in a 1500 x 1500 world with the origin at the "
        "bottom-left corner; +X points right and +Y points up. Time starts at t = 0 with the state above.",
    ]
    return "\n".join(lines)


def task_section(scene: Scene) -> str:
    n = len(scene.balls)
    example = ", ".join(f"[x{i}, y{i}]" for i in range(1, n + 1))
    return (
        "## Task\n"
        f"Number of balls: {n}\n"
        "Write `predict_position(t)` returning the position of every ball at time t. Think it through, then "
        "give your final answer as one complete program inside a ```python ... ``` code block; only the last "
        "such block is graded.\n\n"
        "## Output format\n"
        f"`predict_position(t)` returns a list of {n} [x, y] pairs in the order of the balls above: "
        f"[{example}], each coordinate rounded to 2 decimals."
    )


def build_prompt(scene: Scene) -> str:
    """The whole user message for ``scene``."""
    intro = (
        "Predict where a set of balls will be at any moment as they bounce inside a polygonal container. "
        "Write a Python function that computes their positions."
    )
    return "\n\n".join([HEADER, intro, MECHANICS, CONSTRAINTS, scene_section(scene), task_section(scene)])
