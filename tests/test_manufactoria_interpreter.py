"""Interpreter branches, the pass rule, test records and debug lines."""

from __future__ import annotations

import pytest

from resd.envs.manufactoria.checking import (
    TapeTest,
    debug_lines,
    format_trace,
    output_matches,
    run_tests,
    passes,
)
from resd.envs.manufactoria.dsl import Node, Program, Route, parse_program
from resd.envs.manufactoria.interpreter import MAX_STEPS, ExecutionResult, run_program


def run(text: str, tape: str, max_steps: int = MAX_STEPS) -> ExecutionResult:
    return run_program(parse_program(text), tape, max_steps)


RB_ALL = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] r\n    [B] b\n    [EMPTY] e\n" + (
    "PAINTER_RED r:\n    NEXT end\nPAINTER_BLUE b:\n    NEXT end\nPAINTER_GREEN e:\n    NEXT end\nEND end"
)
YG_ALL = "START start:\n    NEXT p\nPULLER_YG p:\n    [Y] y\n    [G] g\n    [EMPTY] e\n" + (
    "PAINTER_YELLOW y:\n    NEXT end\nPAINTER_GREEN g:\n    NEXT end\nPAINTER_RED e:\n    NEXT end\nEND end"
)


# --- interpreter ------------------------------------------------------------------------------


def test_start_then_end_accepts_with_the_tape_untouched():
    result = run("START start:\n    NEXT end\nEND end", "RBYG")
    assert result == ExecutionResult(True, "RBYG", ["start", "end"], None)


def test_routed_to_none_rejects():
    result = run("START start:\n    NEXT NONE\nEND end", "R")
    assert result == ExecutionResult(False, "R", ["start", "NONE"], "Routed to NONE")


def test_capital_end_passes_the_parser_but_is_an_unknown_node_at_run_time():
    result = run("START start:\n    NEXT END\nEND end", "")
    assert result == ExecutionResult(False, "", ["start", "END"], "Unknown node: END")


def test_puller_rb_pops_its_colours_and_takes_their_branches():
    assert run(RB_ALL, "RYB") == ExecutionResult(True, "YBR", ["start", "p", "r", "end"])
    assert run(RB_ALL, "BG") == ExecutionResult(True, "GB", ["start", "p", "b", "end"])


def test_puller_rb_takes_empty_on_an_empty_tape():
    assert run(RB_ALL, "") == ExecutionResult(True, "G", ["start", "p", "e", "end"])


@pytest.mark.parametrize("tape", ["Y", "GR", "X"])
def test_puller_rb_routes_an_unreadable_symbol_to_empty_without_popping(tape):
    assert run(RB_ALL, tape) == ExecutionResult(True, tape + "G", ["start", "p", "e", "end"])


def test_puller_yg_mirrors_puller_rb():
    assert run(YG_ALL, "YR") == ExecutionResult(True, "RY", ["start", "p", "y", "end"])
    assert run(YG_ALL, "G") == ExecutionResult(True, "G", ["start", "p", "g", "end"])
    assert run(YG_ALL, "") == ExecutionResult(True, "R", ["start", "p", "e", "end"])
    assert run(YG_ALL, "BY") == ExecutionResult(True, "BYR", ["start", "p", "e", "end"])


def test_missing_colour_branch_goes_to_none_after_popping():
    result = run("START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\nEND end", "BY")
    assert result == ExecutionResult(False, "Y", ["start", "p", "NONE"], "Routed to NONE")


def test_missing_empty_branch_goes_to_none_without_popping():
    text = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\nEND end"
    assert run(text, "G") == ExecutionResult(False, "G", ["start", "p", "NONE"], "Routed to NONE")
    assert run(text, "") == ExecutionResult(False, "", ["start", "p", "NONE"], "Routed to NONE")


def test_painters_append_their_colour_at_the_back():
    text = (
        "START start:\n    NEXT a\nPAINTER_RED a:\n    NEXT b\nPAINTER_BLUE b:\n    NEXT c\n"
        "PAINTER_YELLOW c:\n    NEXT d\nPAINTER_GREEN d:\n    NEXT end\nEND end"
    )
    assert run(text, "G").final_tape == "GRBYG"


def test_the_first_route_with_a_condition_wins():
    text = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\n    [R] NONE\nEND end"
    assert run(text, "R").finished


def test_an_infinite_loop_is_cut_at_1000_iterations():
    # paint R, pull it again, forever; the last (1000th) iteration ran the painter
    text = "START start:\n    NEXT a\nPAINTER_RED a:\n    NEXT p\nPULLER_RB p:\n    [R] a\nEND end"
    result = run(text, "R")
    assert not result.finished
    assert result.rejection_reason == "Maximum iterations exceeded (possible infinite loop)"
    assert len(result.path) == 1000 and result.path[-3:] == ["a", "p", "a"] and result.final_tape == "RR"


def test_the_step_cap_counts_path_entries_including_end():
    # start, then the puller once per R plus once on the empty tape, then end: n + 3 entries
    text = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] p\n    [EMPTY] end\nEND end"
    assert run(text, "R" * 997).finished and len(run(text, "R" * 997).path) == 1000
    over = run(text, "R" * 998)
    assert not over.finished and len(over.path) == 1000 and over.final_tape == ""
    assert not run(text, "RR", max_steps=4).finished and run(text, "RR", max_steps=5).finished


def test_an_exception_in_a_node_rejects_with_its_message():
    # a START without routes cannot come from the parser; built by hand it makes the node fail
    program = Program({"start": Node("start", "START", (), 1), "end": Node("end", "END", (), 2)})
    result = run_program(program, "RB")
    assert result == ExecutionResult(
        False, "RB", ["start"], "Error processing node start: tuple index out of range"
    )
    odd = Program({"start": Node("start", "START", (Route(None, "x"),), 1), "x": Node("x", "END", (), 2)})
    assert run_program(odd, "").rejection_reason == "Error processing node x: Unknown node type: END"


# --- pass rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("finished", [True, False])
@pytest.mark.parametrize("expected", [True, False])
def test_without_output_check_only_acceptance_counts(finished, expected):
    result = ExecutionResult(finished, "anything", ["start"])
    assert passes(TapeTest("R", expected, "something else", False), result) == (finished == expected)


def test_output_equality_when_no_regex_characters():
    assert output_matches("RB", "RB") and not output_matches("RB", "RBR") and output_matches("", "")


def test_output_regex_must_match_the_whole_tape():
    assert output_matches("R+", "RRR") and not output_matches("R+", "RRB")
    assert output_matches("(RB)*", "") and output_matches("R|B", "B") and output_matches("R.B", "RYB")
    assert output_matches("B?", "") and not output_matches("R+", "")


@pytest.mark.parametrize(
    ("expected", "tape"), [("R.", "RB"), ("R+", "RR"), ("RB*", "R"), ("RB?", "R"), ("R|B", "B"), ("(R)", "R")]
)
def test_each_regex_character_switches_to_regex_matching(expected, tape):
    assert output_matches(expected, tape) and expected != tape


def test_an_invalid_regex_falls_back_to_equality():
    assert output_matches("(", "(") and not output_matches("(", "")


@pytest.mark.parametrize(
    ("finished", "tape", "expected_accepted", "verdict"),
    [
        (True, "RB", True, True),  # accepted with the right tape
        (True, "BB", True, False),  # accepted with the wrong tape
        (False, "RB", True, False),  # rejected
        (True, "BB", False, True),  # accepted but wrong tape counts as rejected: expected
        (True, "RB", False, False),  # accepted with the right tape although rejection expected
        (False, "RB", False, True),
    ],
)
def test_with_output_check_acceptance_needs_the_right_tape(finished, tape, expected_accepted, verdict):
    test = TapeTest("", expected_accepted, "RB", True)
    assert passes(test, ExecutionResult(finished, tape, ["start"])) is verdict


# --- records ----------------------------------------------------------------------------------


ONLY_R = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\nEND end"


def test_records_of_passing_and_failing_tests():
    tests = [TapeTest("R", True, "", False), TapeTest("B", True, "", False), TapeTest("RB", False, "", False)]
    passing, rejected, accepted = run_tests(ONLY_R, tests)
    assert (passing.index, passing.input, passing.actual, passing.passed, passing.debug) == (0, "R", "", True, "")
    assert (rejected.index, rejected.actual, rejected.passed) == (1, "Error: Routed to NONE", False)
    assert (accepted.index, accepted.actual, accepted.passed) == (2, "B", False)  # the final tape
    assert rejected.debug and accepted.debug


def test_a_correct_rejection_keeps_the_tape_as_actual():
    (record,) = run_tests(ONLY_R, [TapeTest("BR", False, "", False)])
    assert record.passed and record.actual == "R"


def test_a_parse_failure_is_one_failing_record_without_input():
    records = run_tests("START start:\n    NEXT nowhere\nEND end", [TapeTest("R", True)] * 5)
    assert len(records) == 1
    record = records[0]
    assert (record.index, record.input, record.expected, record.passed, record.debug) == (0, None, None, False, "")
    assert record.actual == "Error: DSL Parse Error: Line 1: Node 'start' references undefined node 'nowhere'"


def test_an_unexpected_parser_failure_is_also_a_record():
    (record,) = run_tests(None, [TapeTest("R", True)])  # type: ignore[arg-type]
    assert record.actual.startswith("Error: Unexpected parse error: ") and record.input is None


def test_a_broken_test_fails_with_an_error_record_instead_of_raising():
    (record,) = run_tests(ONLY_R, [TapeTest("R", True, None, True)])  # type: ignore[arg-type]
    assert not record.passed and record.actual.startswith("Error: ")


# --- debug lines ------------------------------------------------------------------------------


def test_trace_format_and_omission():
    assert format_trace(["start", "NONE"]) == ["  Step 1: start", "  Step 2: NONE"]
    path = [f"n{i}" for i in range(1, 18)]
    assert format_trace(path) == ["  ... (2 earlier steps omitted)"] + [f"  Step {k}: n{k}" for k in range(3, 18)]
    assert len(format_trace(path[:15])) == 15


def test_debug_for_routed_to_none():
    program = parse_program(ONLY_R)
    result = run_program(program, "BY")
    assert debug_lines(program, TapeTest("BY", True, "", False), result) == [
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: p",
        "  Step 3: NONE",
        "Rejection: Routed to NONE",
        "Routing node: p (PULLER_RB)",
        "Front tape character at rejection: Y",
        "Finished: False",
        "Actual output: 'Y'",
        "Expected accepted: True",
    ]


def test_debug_for_routed_to_none_on_an_empty_tape_with_output_check():
    program = parse_program("START start:\n    NEXT NONE\nEND end")
    result = run_program(program, "")
    assert debug_lines(program, TapeTest("", True, "R+", True), result) == [
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: NONE",
        "Rejection: Routed to NONE",
        "Routing node: start (START)",
        "Front tape character at rejection: EMPTY",
        "Finished: False",
        "Actual output: ''",
        "Expected output: 'R+'",
        "Expected accepted: True",
    ]


def test_debug_for_an_infinite_loop():
    # a puller that cannot read Y loops on its own EMPTY branch
    program = parse_program("START start:\n    NEXT p\nPULLER_RB p:\n    [EMPTY] p\nEND end")
    result = run_program(program, "YB")
    assert debug_lines(program, TapeTest("YB", True, "", False), result) == [
        "Stuck at node: p (PULLER_RB)",
        "Front tape character: Y",
        "Remaining tape: 'YB'",
        "Finished: False",
        "Actual output: 'YB'",
        "Expected accepted: True",
    ]
    empty = run_program(program, "")
    assert debug_lines(program, TapeTest("", True, "", False), empty)[1] == "Front tape character: EMPTY"


def test_debug_for_an_unknown_node():
    program = parse_program("START start:\n    NEXT END\nEND end")
    result = run_program(program, "G")
    assert debug_lines(program, TapeTest("G", True, "", False), result) == [
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: END",
        "Rejection: Unknown node: END",
        "Finished: False",
        "Actual output: 'G'",
        "Expected accepted: True",
    ]


def test_debug_for_a_false_acceptance_has_no_rejection_line():
    program = parse_program(ONLY_R)
    result = run_program(program, "RB")
    assert debug_lines(program, TapeTest("RB", False, "", False), result) == [
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: p",
        "  Step 3: end",
        "Finished: True",
        "Actual output: 'B'",
        "Expected accepted: False",
    ]
