"""Running one robot through a parsed factory.

As ``RobotFactory.process_robot`` of horizon-llm/RESD's Manufactoria verifier
(``selfevolve/resd/feedback/manufactoria/verifier/``).
"""

from __future__ import annotations

import dataclasses

from resd.envs.manufactoria.dsl import (
    EMPTY,
    END_ID,
    NONE,
    PAINT_COLOUR,
    PULLER_COLOURS,
    START,
    START_ID,
    Node,
    Program,
)

#: iteration cap; reaching it counts as an infinite loop
MAX_STEPS = 1000
ROUTED_TO_NONE = "Routed to NONE"
MAX_ITERATIONS = "Maximum iterations exceeded (possible infinite loop)"


@dataclasses.dataclass
class ExecutionResult:
    """Outcome of one run.

    Attributes:
        finished: True iff the robot reached ``end`` (accepted).
        final_tape: the tape when the run stopped.
        path: every node id visited, one per iteration, including a final ``NONE``/``end``.
        rejection_reason: why the robot was rejected; None when accepted.
    """

    finished: bool
    final_tape: str
    path: list[str]
    rejection_reason: str | None = None


def _branch(node: Node, condition: str) -> str:
    """Target of the first route with ``condition``; a missing branch means NONE."""
    for route in node.routes:
        if route.condition == condition:
            return route.target
    return NONE


def _step(node: Node, tape: str, head: int) -> tuple[str, str, int]:
    """Process one node: return (next node id, tape, head). The unread tape is ``tape[head:]``."""
    node_type = node.node_type
    readable = PULLER_COLOURS.get(node_type)
    if readable is not None:
        if head >= len(tape):
            return _branch(node, EMPTY), tape, head
        front = tape[head]
        if front in readable:
            return _branch(node, front), tape, head + 1
        return _branch(node, EMPTY), tape, head  # a colour it cannot read: EMPTY branch, no pop
    colour = PAINT_COLOUR.get(node_type)
    if colour is not None:
        return node.routes[0].target, tape + colour, head
    if node_type == START:
        return node.routes[0].target, tape, head
    raise ValueError(f"Unknown node type: {node_type}")


def run_program(program: Program, tape: str, max_steps: int = MAX_STEPS) -> ExecutionResult:
    """Run a robot carrying ``tape`` from ``start`` for at most ``max_steps`` iterations."""
    nodes = program.nodes
    path: list[str] = []
    head = 0
    current = START_ID
    for _ in range(max_steps):
        path.append(current)
        if current == NONE:
            return ExecutionResult(False, tape[head:], path, ROUTED_TO_NONE)
        if current == END_ID:
            return ExecutionResult(True, tape[head:], path)
        node = nodes.get(current)
        if node is None:  # e.g. a route to "END" in capitals, which the parser lets through
            return ExecutionResult(False, tape[head:], path, f"Unknown node: {current}")
        try:
            current, tape, head = _step(node, tape, head)
        except Exception as e:  # noqa: BLE001 - a broken node rejects the robot, as upstream does
            return ExecutionResult(False, tape[head:], path, f"Error processing node {current}: {e}")
    return ExecutionResult(False, tape[head:], path, MAX_ITERATIONS)
