"""Every rule and message of the Manufactoria DSL parser."""

from __future__ import annotations

import pytest

from resd.envs.manufactoria.dsl import ParseError, Route, parse_program

VALID = """\
START start:
    NEXT p
PULLER_RB p:
    [R] end
    [B] paint
    [EMPTY] q
PULLER_YG q:
    [Y] NONE
    [G] p
PAINTER_GREEN paint:
    NEXT end
END end"""


def error_of(text: str) -> str:
    with pytest.raises(ParseError) as info:
        parse_program(text)
    return str(info.value)


def test_valid_program_keeps_nodes_routes_and_lines_in_order():
    program = parse_program(VALID)
    assert list(program.nodes) == ["start", "p", "q", "paint", "end"]
    p = program.nodes["p"]
    assert p.node_type == "PULLER_RB" and p.line == 3
    assert p.routes == (Route("R", "end"), Route("B", "paint"), Route("EMPTY", "q"))
    assert program.nodes["start"].routes == (Route(None, "p"),)
    assert program.nodes["paint"].node_type == "PAINTER_GREEN"
    assert program.nodes["end"].routes == () and program.nodes["end"].line == 12


def test_parse_error_is_a_value_error_with_line_attribute():
    with pytest.raises(ValueError) as info:
        parse_program("START start:\n    NEXT end\nBOGUS\nEND end")
    assert isinstance(info.value, ParseError)
    assert info.value.line == 3 and info.value.message == "Invalid node declaration: BOGUS"


# --- lines, comments, fences ------------------------------------------------------------------


def test_blank_and_comment_lines_are_skipped_but_still_counted():
    text = (
        "# a comment\n\nSTART start:\n    # comment between routes\n\n    NEXT end\n   \n"
        "  # indented comment\nBAD LINE\nEND end"
    )
    assert error_of(text) == "Line 9: Invalid node declaration: BAD LINE"


def test_line_numbers_count_from_the_stripped_text():
    text = "\n\n   \nSTART start:\n    NEXT end\nnope\nEND end\n\n"
    assert error_of(text) == "Line 3: Invalid node declaration: nope"


def test_leading_fence_line_is_dropped_before_numbering():
    assert error_of("```\nSTART start:\n    NEXT end\nnope\nEND end\n```") == "Line 3: Invalid node declaration: nope"
    assert parse_program("```\nSTART start:\n    NEXT end\nEND end\n```").nodes.keys() == {"start", "end"}


def test_only_a_bare_fence_is_dropped():
    assert error_of("```manufactoria\nSTART start:\n    NEXT end\nEND end") == (
        "Line 1: Invalid node declaration: ```manufactoria"
    )
    assert error_of("START start:\n    NEXT end\n```\nEND end") == "Line 3: Invalid node declaration: ```"


def test_trailing_fence_is_dropped_only_at_the_end():
    assert parse_program("START start:\n    NEXT end\nEND end\n   ```   ").nodes.keys() == {"start", "end"}


@pytest.mark.parametrize("text", ["", "   \n\n ", "# only\n   # comments", "```\n```", "```", "```\n# c\n```"])
def test_empty_program_has_no_line_prefix(text):
    assert error_of(text) == "Empty program"


def test_crlf_line_endings_are_accepted():
    program = parse_program("START start:\r\n    NEXT end\r\nEND end\r\n")
    assert program.nodes["start"].routes == (Route(None, "end"),)


# --- declarations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["FOO bar:", "start start:", "PULLER_RB:", "PULLER_RB a b:", "START start: extra", "PULLER-RB p:", "PULLER_RB p::"],
)
def test_invalid_node_declaration_quotes_the_stripped_line(line):
    assert error_of(f"START start:\n    NEXT end\n  {line}  \nEND end") == f"Line 3: Invalid node declaration: {line}"


@pytest.mark.parametrize(
    "node_type", ["START", "PULLER_RB", "PULLER_YG", "PAINTER_RED", "PAINTER_BLUE", "PAINTER_YELLOW", "PAINTER_GREEN"]
)
def test_colon_is_required_except_on_end(node_type):
    node_id = "start" if node_type == "START" else "n"
    text = f"START start:\n    NEXT end\n{node_type} {node_id}\nEND end"
    assert error_of(text) == f"Line 3: {node_type} nodes must have a colon"


def test_colon_is_forbidden_on_end():
    assert error_of("START start:\n    NEXT end\nEND end:") == "Line 3: END nodes should not have a colon"


def test_colon_check_ignores_comments():
    assert parse_program("START start:\n    NEXT end\nEND end # note: done").nodes["end"].line == 3
    assert error_of("START start:\n    NEXT end\nPULLER_RB p # p: reads\nEND end") == (
        "Line 3: PULLER_RB nodes must have a colon"
    )


def test_declaration_allows_comment_and_spacing():
    program = parse_program("START   start:   # entry\n    NEXT end\nEND\tend   # exit")
    assert program.nodes.keys() == {"start", "end"}


def test_start_and_end_ids_are_fixed():
    assert error_of("START begin:\n    NEXT end\nEND end") == "Line 1: START node must have ID 'start'"
    assert error_of("START start:\n    NEXT end\nEND finish") == "Line 3: END node must have ID 'end'"


def test_duplicate_ids_including_a_second_start_or_end():
    assert error_of("START start:\n    NEXT a\nPAINTER_RED a:\n    NEXT end\nPULLER_RB a:\nEND end") == (
        "Line 5: Duplicate node ID: a"
    )
    assert error_of("START start:\n    NEXT end\nSTART start:\n    NEXT end\nEND end") == (
        "Line 3: Duplicate node ID: start"
    )
    assert error_of("START start:\n    NEXT end\nEND end\nEND end") == "Line 4: Duplicate node ID: end"


def test_duplicate_check_comes_before_the_start_id_check():
    # "start" used by a puller first: the real START line is then a duplicate
    text = "PULLER_RB start:\n    [R] end\nSTART start:\n    NEXT end\nEND end"
    assert error_of(text) == "Line 3: Duplicate node ID: start"


def test_program_must_have_start_and_end():
    assert error_of("PULLER_RB p:\n    [R] end\nEND end") == "Program must have a START node"
    assert error_of("START start:\n    NEXT p\nPULLER_RB p:\n    [R] NONE") == "Program must have an END node"
    # a non-START node with id 'start' is not a START node
    assert error_of("PULLER_RB start:\n    [R] end\nEND end") == "Program must have a START node"


# --- route lines ------------------------------------------------------------------------------


def test_routes_may_be_indented_by_four_spaces_or_a_tab():
    program = parse_program("START start:\n\tNEXT p\nPULLER_RB p:\n        [R] end\n\t  [B] NONE\nEND end")
    assert program.nodes["start"].routes == (Route(None, "p"),)
    assert program.nodes["p"].routes == (Route("R", "end"), Route("B", "NONE"))


def test_a_line_with_fewer_than_four_spaces_is_a_declaration():
    # the puller (which may have no routes) ends before the 3-space line, which must then declare a node
    text = "START start:\n    NEXT p\nPULLER_RB p:\n   [R] end\nEND end"
    assert error_of(text) == "Line 4: Invalid node declaration: [R] end"
    # START's route count is checked as soon as its routes end
    assert error_of("START start:\n   NEXT end\nEND end") == "Line 1: START node must have exactly one NEXT route"


def test_an_indented_declaration_is_read_as_a_route_of_the_node_above():
    assert error_of("START start:\n    NEXT p\n    PULLER_RB p:\n        [R] end\nEND end") == (
        "Line 3: Invalid NEXT route format: PULLER_RB p:"
    )
    assert error_of("START start:\n    NEXT p\nPULLER_RB p:\n    PAINTER_RED x:\nEND end") == (
        "Line 4: Invalid puller route format: PAINTER_RED x:"
    )


def test_end_cannot_have_routes():
    assert error_of("START start:\n    NEXT end\nEND end\n    NEXT start") == "Line 4: END nodes cannot have routes"


@pytest.mark.parametrize(
    "route", ["[r] end", "[R]end", "[RB] end", "[EMPTY]", "[R] a b", "R end", "[R] end;", "NEXT end", "[NONE] end"]
)
def test_invalid_puller_routes(route):
    assert error_of(f"START start:\n    NEXT p\nPULLER_RB p:\n    {route}\nEND end") == (
        f"Line 4: Invalid puller route format: {route}"
    )


@pytest.mark.parametrize("route", ["[R] end # comment", "[R]   end", "[EMPTY] NONE", "[B] END", "[R] p"])
def test_valid_puller_routes(route):
    parse_program(f"START start:\n    NEXT p\nPULLER_RB p:\n    {route}\nEND end")


@pytest.mark.parametrize("route", ["next end", "NEXT", "NEXTend", "NEXT a b", "[R] end", "NEXT: end"])
def test_invalid_next_routes(route):
    for node in ("START start:", "PAINTER_BLUE x:"):
        head = "START start:\n    NEXT x\n" if node != "START start:" else ""
        text = f"{head}{node}\n    {route}\nEND end"
        line = 4 if head else 2
        assert error_of(text) == f"Line {line}: Invalid NEXT route format: {route}"


@pytest.mark.parametrize("route", ["NEXT end # go", "NEXT    end", "NEXT NONE", "NEXT END"])
def test_valid_next_routes(route):
    parse_program(f"START start:\n    {route}\nEND end")


def test_start_needs_exactly_one_next():
    assert error_of("START start:\nEND end") == "Line 1: START node must have exactly one NEXT route"
    assert error_of("START start:\n    NEXT end\n    NEXT end\nEND end") == (
        "Line 1: START node must have exactly one NEXT route"
    )


@pytest.mark.parametrize("painter", ["PAINTER_RED", "PAINTER_BLUE", "PAINTER_YELLOW", "PAINTER_GREEN"])
def test_painter_needs_exactly_one_next(painter):
    assert error_of(f"START start:\n    NEXT x\n{painter} x:\nEND end") == (
        "Line 3: PAINTER nodes must have exactly one NEXT route"
    )
    assert error_of(f"START start:\n    NEXT x\n{painter} x:\n    NEXT end\n    NEXT x\nEND end") == (
        "Line 3: PAINTER nodes must have exactly one NEXT route"
    )


def test_puller_conditions_must_be_its_own_colours_or_empty():
    assert error_of("START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\n    [Y] end\nEND end") == (
        "Line 3: Invalid condition 'Y' for PULLER_RB"
    )
    assert error_of("START start:\n    NEXT p\nPULLER_YG p:\n    [G] end\n    [B] end\nEND end") == (
        "Line 3: Invalid condition 'B' for PULLER_YG"
    )
    # the first offending route is the one reported
    assert error_of("START start:\n    NEXT p\nPULLER_YG p:\n    [R] end\n    [B] end\nEND end") == (
        "Line 3: Invalid condition 'R' for PULLER_YG"
    )


def test_pullers_may_omit_branches_or_have_none():
    program = parse_program("START start:\n    NEXT p\nPULLER_RB p:\nPULLER_YG q:\n    [EMPTY] end\nEND end")
    assert program.nodes["p"].routes == ()


# --- references -------------------------------------------------------------------------------


def test_undefined_reference_names_the_referencing_node_and_its_line():
    text = "START start:\n    NEXT p\n\nPULLER_RB p:\n    [R] end\n    [B] nowhere\nEND end"
    assert error_of(text) == "Line 4: Node 'p' references undefined node 'nowhere'"


def test_references_are_checked_after_all_nodes_are_declared():
    # forward references are fine; the first undefined one in declaration order is reported
    text = "START start:\n    NEXT later\nPAINTER_RED later:\n    NEXT ghost\nPULLER_RB p:\n    [R] ghost2\nEND end"
    assert error_of(text) == "Line 3: Node 'later' references undefined node 'ghost'"


def test_none_and_capital_end_are_valid_targets_at_parse_time():
    program = parse_program("START start:\n    NEXT p\nPULLER_RB p:\n    [R] END\n    [B] NONE\nEND end")
    assert program.nodes["p"].routes == (Route("R", "END"), Route("B", "NONE"))


def test_start_can_be_targeted_and_ids_may_be_unicode_words():
    program = parse_program("START start:\n    NEXT café_1\nPAINTER_RED café_1:\n    NEXT start\nEND end")
    assert program.nodes["café_1"].routes == (Route(None, "start"),)
