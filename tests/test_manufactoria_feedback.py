"""The feedback text, line by line."""

from __future__ import annotations

from resd.envs.manufactoria.checking import TapeTest, TestRecord, run_tests
from resd.envs.manufactoria.feedback import (
    format_feedback,
    incorrect_format_feedback,
    select_failures,
)

ONLY_R = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\nEND end"


def lines_of(text: str) -> list[str]:
    return text.split("\n")


def test_runtime_error_for_a_false_rejection():
    records = run_tests(ONLY_R, [TapeTest("R", True, "", False), TapeTest("BY", True, "", False)])
    assert lines_of(format_feedback(records)) == [
        "Runtime Error",
        "Routed to NONE",
        "",
        "Last Executed Input",
        "BY",
        "",
        "Debug Output",
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


def test_only_the_first_error_is_shown_even_if_wrong_answers_are_shorter():
    tests = [
        TapeTest("B", False, "", False),  # passes
        TapeTest("RB", False, "", False),  # false acceptance (shorter)
        TapeTest("BBB", True, "", False),  # first false rejection
        TapeTest("G", True, "", False),  # second false rejection
    ]
    text = format_feedback(run_tests(ONLY_R, tests))
    assert text.startswith("Runtime Error\nRouted to NONE\n\nLast Executed Input\nBBB\n\nDebug Output\n")
    assert "Wrong Answer" not in text and text.count("Runtime Error") == 1


def test_wrong_answers_two_shortest_first_with_blank_line_between():
    tests = [
        TapeTest("RBBBB", False, "", False),  # key 5 + 4 = 9
        TapeTest("RB", False, "", False),  # key 2 + 1 = 3
        TapeTest("RBB", False, "", False),  # key 3 + 2 = 5
        TapeTest("R", True, "", False),  # passes
    ]
    assert lines_of(format_feedback(run_tests(ONLY_R, tests))) == [
        "Test Case 2: Wrong Answer",
        "",
        "Input",
        "RB",
        "",
        "Output",
        "B",
        "",
        "Debug Output",
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: p",
        "  Step 3: end",
        "Finished: True",
        "Actual output: 'B'",
        "Expected accepted: False",
        "",
        "Test Case 3: Wrong Answer",
        "",
        "Input",
        "RBB",
        "",
        "Output",
        "BB",
        "",
        "Debug Output",
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: p",
        "  Step 3: end",
        "Finished: True",
        "Actual output: 'BB'",
        "Expected accepted: False",
    ]


def test_ties_keep_test_order():
    records = [
        TestRecord(0, "BB", "", "R", False),
        TestRecord(1, "R", "", "BB", False),
        TestRecord(2, "GG", "", "Y", False),
    ]
    assert [r.index for r in select_failures(records)] == [0, 1]


def test_the_sort_key_is_input_length_plus_actual_length():
    records = [TestRecord(0, "R", "", "RRRRR", False), TestRecord(1, "RRR", "", "", False)]
    assert [r.index for r in select_failures(records)] == [1, 0]


def test_expected_is_shown_only_when_non_empty():
    records = [TestRecord(4, "R", "RB", "B", False)]
    assert lines_of(format_feedback(records)) == [
        "Test Case 5: Wrong Answer",
        "",
        "Input",
        "R",
        "",
        "Output",
        "B",
        "",
        "Expected",
        "RB",
    ]


def test_output_check_failure_shows_expected_and_debug():
    program = "START start:\n    NEXT a\nPAINTER_BLUE a:\n    NEXT end\nEND end"
    records = run_tests(program, [TapeTest("R", True, "R+", True)])
    assert lines_of(format_feedback(records)) == [
        "Test Case 1: Wrong Answer",
        "",
        "Input",
        "R",
        "",
        "Output",
        "RB",
        "",
        "Expected",
        "R+",
        "",
        "Debug Output",
        "Execution Trace:",
        "  Step 1: start",
        "  Step 2: a",
        "  Step 3: end",
        "Finished: True",
        "Actual output: 'RB'",
        "Expected output: 'R+'",
        "Expected accepted: True",
    ]


def test_empty_input_renders_as_an_empty_line():
    records = run_tests(ONLY_R, [TapeTest("", True, "", False)])
    assert lines_of(format_feedback(records))[:5] == ["Runtime Error", "Routed to NONE", "", "Last Executed Input", ""]


def test_parse_error_feedback():
    records = run_tests("START start:\n    NEXT p\nEND end", [TapeTest("R", True, "", False)])
    assert format_feedback(records) == (
        "Runtime Error\nDSL Parse Error: Line 1: Node 'start' references undefined node 'p'\n\n"
        "Last Executed Input\nNone"
    )


def test_debug_output_keeps_ten_lines_and_counts_the_rest():
    # 20 steps then NONE: a trace of 15 shown steps plus an omission line
    chain = "".join(f"PAINTER_RED n{i}:\n    NEXT n{i + 1}\n" for i in range(20))
    program = f"START start:\n    NEXT n0\n{chain}PULLER_RB n20:\n    [B] end\nEND end"
    records = run_tests(program, [TapeTest("", True, "", False)])
    debug = records[0].debug.split("\n")
    assert len(debug) == 1 + 1 + 15 + 3 + 3  # header, omission, steps, rejection block, summary
    text_lines = lines_of(format_feedback(records))
    assert text_lines[6:] == [
        "Debug Output",
        "Execution Trace:",
        "  ... (8 earlier steps omitted)",
        "  Step 9: n7",
        "  Step 10: n8",
        "  Step 11: n9",
        "  Step 12: n10",
        "  Step 13: n11",
        "  Step 14: n12",
        "  Step 15: n13",
        "  Step 16: n14",
        "... (13 more lines)",
    ]


def test_long_values_and_debug_lines_are_cut_and_marked():
    tape = "R" + "B" * 400  # wrongly accepted: the output is the tape after popping the R
    records = run_tests(ONLY_R, [TapeTest(tape, False, "", False)])
    text_lines = lines_of(format_feedback(records))
    assert text_lines[3] == "R" + "B" * 249 + "..."
    assert text_lines[6] == "B" * 250 + "..."
    actual_line = next(line for line in text_lines if line.startswith("Actual output: "))
    assert actual_line == ("Actual output: '" + "B" * 400 + "'")[:300] + "..."


def test_the_whole_text_is_capped_at_2000_characters():
    long_input = "B" * 240
    records = [
        TestRecord(0, long_input, "", long_input, False, "\n".join("x" * 400 for _ in range(12))),
        TestRecord(1, long_input, "", long_input, False, "\n".join("y" * 400 for _ in range(12))),
    ]
    text = format_feedback(records)
    assert len(text) == 2000
    assert text.startswith("Test Case 1: Wrong Answer\n\nInput\n" + long_input)
    assert text.endswith("x" * 10)  # the cap falls inside the first record's debug lines


def test_text_is_right_stripped():
    records = [TestRecord(0, "R", "", "B", False, "")]
    assert format_feedback(records) == "Test Case 1: Wrong Answer\n\nInput\nR\n\nOutput\nB"


def test_all_passing_gives_empty_feedback_and_no_records_a_notice():
    assert format_feedback(run_tests(ONLY_R, [TapeTest("R", True, "", False)])) == ""
    assert format_feedback([]) == "No test execution information available."


def test_incorrect_format_texts():
    assert incorrect_format_feedback() == "Incorrect Format: Put your code inside a ```manufactoria ... ``` block."
    assert incorrect_format_feedback(True) == "Truncated Attempt: Your previous response was too long and truncated."


def test_truncation_flag_does_not_change_test_feedback():
    records = run_tests(ONLY_R, [TapeTest("B", True, "", False)])
    assert format_feedback(records, truncated=True) == format_feedback(records)
