"""BouncingSim scenes and ground truth: the generator's ranges, pymunk against physics laws,
analytic cases and an independent exact solver."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from resd.envs.bouncingsim.physics import round_positions, simulate, simulate_states
from resd.envs.bouncingsim.reference import exact_positions, reference_program
from resd.envs.bouncingsim.runner import blocked_pattern
from resd.envs.bouncingsim.scene import (
    BALL_RADIUS,
    CONTAINER_RADIUS,
    DEFAULT_TIMES,
    PLACEMENT_MARGIN,
    Ball,
    Container,
    Scene,
    generate_scene,
)

FINE_TIMES = tuple(round(0.01 * k, 2) for k in range(1, 151))


def test_default_times_are_15_steps_of_a_tenth():
    assert len(DEFAULT_TIMES) == 15
    assert DEFAULT_TIMES[0] == 0.1 and DEFAULT_TIMES[-1] == 1.5


def test_generation_is_deterministic_and_seed_dependent():
    assert generate_scene(7, "medium") == generate_scene(7, "medium")
    assert generate_scene(7, "medium") != generate_scene(8, "medium")
    assert generate_scene(7, "easy") != generate_scene(7, "medium")


@pytest.mark.parametrize(
    ("difficulty", "counts", "speeds"), [("easy", {3}, (400, 600)), ("medium", {4, 5}, (600, 800))]
)
def test_generator_ranges(difficulty, counts, speeds):
    seen_sides, seen_counts = set(), set()
    for seed in range(300):
        scene = generate_scene(seed, difficulty)
        c = scene.container
        seen_sides.add(c.sides)
        seen_counts.add(len(scene.balls))
        assert 3 <= c.sides <= 6
        assert c.radius == CONTAINER_RADIUS and c.center == (750.0, 750.0)
        assert scene.gravity == (0.0, 0.0) and scene.restitution == 1.0 and scene.friction == 0.0
        for ball in scene.balls:
            assert ball.radius == BALL_RADIUS
            # velocities are rounded to 2 decimals after drawing the speed
            assert speeds[0] - 0.01 <= math.hypot(*ball.velocity) <= speeds[1] + 0.01
            assert c.wall_clearance(ball.position) >= BALL_RADIUS + PLACEMENT_MARGIN
        for a, b in itertools.combinations(scene.balls, 2):
            assert math.dist(a.position, b.position) >= 2 * BALL_RADIUS + PLACEMENT_MARGIN
    assert seen_sides == {3, 4, 5, 6}
    assert seen_counts == counts


def test_unknown_difficulty_is_rejected():
    with pytest.raises(ValueError, match="difficulty"):
        generate_scene(0, "hard")


def test_scene_config_round_trip():
    scene = generate_scene(3, "medium")
    assert Scene.from_config(scene.to_config()) == scene
    assert scene.to_config()["meta"]["scene_type"] == "MULTIOBJ"


def test_container_geometry():
    square = Container(4, 100.0, (0.0, 0.0), 0.0)
    assert square.vertices()[1] == pytest.approx((0.0, 100.0))
    assert square.inradius() == pytest.approx(100 / math.sqrt(2))
    assert square.wall_clearance((0.0, 0.0)) == pytest.approx(100 / math.sqrt(2))
    assert square.wall_clearance((200.0, 0.0)) < 0


def _one_ball_square(velocity, position=(750.0, 750.0)):
    # orientation pi/4 puts the vertices on the diagonals: the walls are axis-aligned
    container = Container(4, CONTAINER_RADIUS, (750.0, 750.0), math.pi / 4)
    return Scene(container, (Ball(position=position, velocity=velocity),), times=(0.25, 1.0))


def test_head_on_wall_bounce_matches_the_analytic_answer():
    scene = _one_ball_square((500.0, 0.0))
    wall_x = 750.0 + CONTAINER_RADIUS * math.cos(math.pi / 4)
    t_hit = (wall_x - BALL_RADIUS - 750.0) / 500.0
    expected = [750.0 + 500.0 * 0.25, wall_x - BALL_RADIUS - 500.0 * (1.0 - t_hit)]
    for got, x in zip(simulate(scene), expected):
        assert got[0][0] == pytest.approx(x, abs=1e-3)
        assert got[0][1] == pytest.approx(750.0, abs=1e-6)
    for got, x in zip(exact_positions(scene), expected):
        assert got[0][0] == pytest.approx(x, abs=1e-9)


def test_oblique_bounce_keeps_the_tangential_velocity():
    scene = _one_ball_square((400.0, 300.0))
    # the right wall (x = 1015.17) is reached at t = 0.61, the top one only at t = 0.82
    (x, y, vx, vy), = simulate_states(scene, (0.7,))[0]
    assert vx == pytest.approx(-400.0, abs=1e-6)
    assert vy == pytest.approx(300.0, abs=1e-6)
    assert y == pytest.approx(750.0 + 300.0 * 0.7, abs=1e-3)


def test_head_on_equal_masses_exchange_velocities():
    container = Container(4, CONTAINER_RADIUS, (750.0, 750.0), math.pi / 4)
    balls = (Ball(position=(650.0, 750.0), velocity=(300.0, 0.0)), Ball(position=(850.0, 750.0), velocity=(-100.0, 0.0)))
    scene = Scene(container, balls, times=(0.5,))
    (a, b), = simulate_states(scene)
    assert a[2] == pytest.approx(-100.0, abs=1e-6) and b[2] == pytest.approx(300.0, abs=1e-6)
    # they touch when 200 - 400 t = 40, i.e. at t = 0.4, then move apart for 0.1 s
    assert a[0] == pytest.approx(650.0 + 300.0 * 0.4 - 100.0 * 0.1, abs=1e-3)
    assert b[0] == pytest.approx(850.0 - 100.0 * 0.4 + 300.0 * 0.1, abs=1e-3)


def test_gravity_is_integrated():
    container = Container(4, CONTAINER_RADIUS, (750.0, 750.0), math.pi / 4)
    scene = Scene(container, (Ball(position=(750.0, 900.0), velocity=(0.0, 0.0)),), times=(0.5,), gravity=(0.0, -100.0))
    (pos,), = simulate(scene)
    assert pos[1] == pytest.approx(900.0 - 0.5 * 100.0 * 0.25, abs=0.05)


def test_query_times_must_be_ascending():
    with pytest.raises(ValueError, match="ascending"):
        simulate(generate_scene(0), (0.5, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        simulate(generate_scene(0), (-0.1,))


@pytest.mark.parametrize("difficulty", ["easy", "medium"])
def test_invariants_along_the_trajectory(difficulty):
    """Kinetic energy, containment and non-overlap at 150 instants of 12 scenes."""
    for seed in range(12):
        scene = generate_scene(seed, difficulty)
        energy0 = sum(b.velocity[0] ** 2 + b.velocity[1] ** 2 for b in scene.balls)
        for states in simulate_states(scene, FINE_TIMES):
            energy = sum(vx * vx + vy * vy for _, _, vx, vy in states)
            assert abs(energy - energy0) <= 1e-9 * energy0
            for x, y, _, _ in states:
                assert scene.container.wall_clearance((x, y)) >= BALL_RADIUS - 1e-3
            for a, b in itertools.combinations(states, 2):
                assert math.dist(a[:2], b[:2]) >= 2 * BALL_RADIUS - 1e-3


@pytest.mark.parametrize("difficulty", ["easy", "medium"])
def test_pymunk_agrees_with_the_exact_solver(difficulty):
    worst = []
    for seed in range(20):
        scene = generate_scene(seed, difficulty)
        per_time = [
            sum(math.dist(p, q) for p, q in zip(a, b)) / len(a) for a, b in zip(simulate(scene), exact_positions(scene))
        ]
        worst.append(max(per_time))
    assert sorted(worst)[len(worst) // 2] < 0.05  # typical scenes: centimetres
    assert max(worst) < 1.0


def test_a_perturbed_scene_is_detected_by_the_exact_check():
    """The comparison can fail: a 5 m shift of one ball shows up."""
    scene = generate_scene(1)
    moved = dataclasses.replace(scene.balls[0], position=(scene.balls[0].position[0] + 5.0, scene.balls[0].position[1]))
    shifted = dataclasses.replace(scene, balls=(moved, *scene.balls[1:]))
    diff = max(
        sum(math.dist(p, q) for p, q in zip(a, b)) / 3 for a, b in zip(simulate(shifted), exact_positions(scene))
    )
    assert diff > 1.0


def test_round_positions_normalizes_negative_zero():
    assert round_positions([[-0.001, 1.005], [2.0, -0.0]]) == [[0.0, 1.0], [2.0, 0.0]]
    assert math.copysign(1.0, round_positions([[-0.001, 0.0]])[0][0]) == 1.0


def test_reference_program_obeys_the_rules_and_matches_exact_positions():
    scene = generate_scene(11)
    program = reference_program(scene)
    imports = [line for line in program.splitlines() if line.startswith(("import", "from"))]
    assert imports == ["import math"]
    assert blocked_pattern(program) is None
    namespace: dict = {}
    exec(compile(program, "<reference>", "exec"), namespace)
    for t, want in zip(scene.times, exact_positions(scene)):
        assert namespace["predict_position"](t) == round_positions(want)
    # independent calls: asking again for an earlier time gives the same answer
    assert namespace["predict_position"](0.1) == round_positions(exact_positions(scene, (0.1,))[0])


def test_reference_refuses_gravity():
    scene = dataclasses.replace(generate_scene(0), gravity=(0.0, -9.8))
    with pytest.raises(ValueError, match="gravity"):
        reference_program(scene)


def test_agreement_check_accepts_the_engine_and_rejects_a_drift():
    from resd.envs.bouncingsim.dataset import ground_truth_agrees

    scene = generate_scene(5, "medium")
    positions = simulate(scene)
    assert ground_truth_agrees(scene, positions)
    drifted = [[[x + 1.5, y] for x, y in balls] if k == 14 else balls for k, balls in enumerate(positions)]
    assert not ground_truth_agrees(scene, drifted)
