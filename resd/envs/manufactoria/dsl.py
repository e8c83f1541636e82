"""Parser of the Manufactoria factory DSL (the grammar of horizon-llm/RESD's
``selfevolve/resd/feedback/manufactoria/verifier/manufactoria_parser.py``).

A program is a list of node declarations, each followed by its indented route lines::

    START start:
        NEXT check
    PULLER_RB check:
        [R] end
        [B] NONE
    END end

Every error is a :class:`ParseError` whose text starts with ``Line N: `` (N counts the lines of
the stripped text after a leading code-fence line is removed), except the three whole-program
errors ("Empty program", "Program must have a START node", "Program must have an END node").
"""

from __future__ import annotations

import dataclasses
import re

START = "START"
END = "END"
PULLER_RB = "PULLER_RB"
PULLER_YG = "PULLER_YG"
PAINTER_RED = "PAINTER_RED"
PAINTER_BLUE = "PAINTER_BLUE"
PAINTER_YELLOW = "PAINTER_YELLOW"
PAINTER_GREEN = "PAINTER_GREEN"

NODE_TYPES = (START, END, PULLER_RB, PULLER_YG, PAINTER_RED, PAINTER_BLUE, PAINTER_YELLOW, PAINTER_GREEN)
#: colour appended by each painter
PAINT_COLOUR = {PAINTER_RED: "R", PAINTER_BLUE: "B", PAINTER_YELLOW: "Y", PAINTER_GREEN: "G"}
#: colours each puller can read (and pop); any other front symbol takes the EMPTY branch
PULLER_COLOURS = {PULLER_RB: ("R", "B"), PULLER_YG: ("Y", "G")}
#: the branch label that also catches colours the puller cannot read
EMPTY = "EMPTY"
#: route target that rejects the robot
NONE = "NONE"
START_ID = "start"
END_ID = "end"

# Possessive quantifiers (++, *+): giving characters back can never help the rest of a pattern
# match, and backtracking over them made a long failing model-written line ten times slower.
_DECLARATION = re.compile(
    r"^(START|END|PULLER_RB|PULLER_YG|PAINTER_RED|PAINTER_BLUE|PAINTER_YELLOW|PAINTER_GREEN)\s++(\w++):?\s*+(?:#.*)?$"
)
_PULLER_ROUTE = re.compile(r"^\[([RBYG]|EMPTY)\]\s++(\w++|NONE|END)\s*+(?:#.*)?$")
_NEXT_ROUTE = re.compile(r"^NEXT\s++(\w++|NONE|END)\s*+(?:#.*)?$")
_FENCE = "```"


class ParseError(ValueError):
    """A syntax or validation error in a factory program; ``line`` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"Line {line}: {message}" if line else message)


@dataclasses.dataclass(frozen=True)
class Route:
    """One outgoing edge: ``condition`` is R/B/Y/G/EMPTY for pullers and None for NEXT routes."""

    condition: str | None
    target: str


@dataclasses.dataclass(frozen=True)
class Node:
    """A declared node with its routes in source order and the line it was declared on."""

    node_id: str
    node_type: str
    routes: tuple[Route, ...]
    line: int


@dataclasses.dataclass(frozen=True)
class Program:
    """A parsed factory: nodes by id, in declaration order."""

    nodes: dict[str, Node]


def _program_lines(text: str) -> list[tuple[int, str]]:
    """Numbered raw lines that carry code (no blank lines, comments or code fences)."""
    lines = text.strip().split("\n")
    if lines and lines[0].strip() == _FENCE:
        lines = lines[1:]
    if lines and lines[-1].strip() == _FENCE:
        lines = lines[:-1]
    kept = []
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            kept.append((number, raw))
    return kept


def _is_route_line(raw: str) -> bool:
    # Tested on the raw line: an indented declaration is read as a route of the node above.
    return raw.startswith("    ") or raw.startswith("\t")


def _parse_declaration(raw: str, number: int) -> tuple[str, str]:
    stripped = raw.strip()
    match = _DECLARATION.match(stripped)
    if match is None:
        raise ParseError(f"Invalid node declaration: {stripped}", number)
    node_type, node_id = match.group(1), match.group(2)
    has_colon = ":" in raw.split("#")[0]
    if node_type == END and has_colon:
        raise ParseError("END nodes should not have a colon", number)
    if node_type != END and not has_colon:
        raise ParseError(f"{node_type} nodes must have a colon", number)
    return node_type, node_id


def _parse_route(raw: str, number: int, node_type: str) -> Route:
    stripped = raw.strip()
    if node_type in PULLER_COLOURS:
        match = _PULLER_ROUTE.match(stripped)
        if match is None:
            raise ParseError(f"Invalid puller route format: {stripped}", number)
        return Route(match.group(1), match.group(2))
    if node_type == END:
        raise ParseError("END nodes cannot have routes", number)
    match = _NEXT_ROUTE.match(stripped)  # START and painters
    if match is None:
        raise ParseError(f"Invalid NEXT route format: {stripped}", number)
    return Route(None, match.group(1))


def _check_routes(node_type: str, routes: list[Route], number: int) -> None:
    if node_type == START and len(routes) != 1:
        raise ParseError("START node must have exactly one NEXT route", number)
    if node_type in PAINT_COLOUR and len(routes) != 1:
        raise ParseError("PAINTER nodes must have exactly one NEXT route", number)
    if node_type in PULLER_COLOURS:
        allowed = (*PULLER_COLOURS[node_type], EMPTY)
        for route in routes:  # the first offending route in source order is reported
            if route.condition not in allowed:
                raise ParseError(f"Invalid condition '{route.condition}' for {node_type}", number)


def parse_program(text: str) -> Program:
    """Parse DSL text into a :class:`Program`; raise :class:`ParseError` on any violation."""
    lines = _program_lines(text)
    if not lines:
        raise ParseError("Empty program")
    nodes: dict[str, Node] = {}
    index = 0
    while index < len(lines):
        number, raw = lines[index]
        node_type, node_id = _parse_declaration(raw, number)
        if node_id in nodes:
            raise ParseError(f"Duplicate node ID: {node_id}", number)
        if node_type == START and node_id != START_ID:
            raise ParseError("START node must have ID 'start'", number)
        if node_type == END and node_id != END_ID:
            raise ParseError("END node must have ID 'end'", number)
        index += 1
        routes = []
        while index < len(lines) and _is_route_line(lines[index][1]):
            routes.append(_parse_route(lines[index][1], lines[index][0], node_type))
            index += 1
        _check_routes(node_type, routes, number)
        nodes[node_id] = Node(node_id, node_type, tuple(routes), number)
    # START/END ids are fixed and ids are unique, so "exactly one" reduces to "present".
    if not any(node.node_type == START for node in nodes.values()):
        raise ParseError("Program must have a START node")
    if not any(node.node_type == END for node in nodes.values()):
        raise ParseError("Program must have an END node")
    for node in nodes.values():
        for route in node.routes:
            if route.target not in (NONE, END) and route.target not in nodes:
                raise ParseError(f"Node '{node.node_id}' references undefined node '{route.target}'", node.line)
    return Program(nodes)
