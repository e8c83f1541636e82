"""The solution buffer and the teacher's solution priority."""

import json

import pytest

from resd.context.solution_buffer import SolutionBuffer, select_solution

RAW = "<think>try START -> END</think>\nSTART -> END"


def test_store_keeps_raw_text_and_get_strips_thinking_on_request():
    buffer = SolutionBuffer()
    buffer.store("ex-1", RAW)
    assert buffer.get("ex-1") == RAW
    assert buffer.get("ex-1", remove_thinking=True) == "START -> END"
    assert buffer.get("ex-2") is None and buffer.get("ex-2", remove_thinking=True) is None
    assert "ex-1" in buffer and "ex-2" not in buffer and len(buffer) == 1


def test_later_success_replaces_the_earlier_one():
    buffer = SolutionBuffer()
    buffer.store(7, "first")
    buffer.store(7, "second")
    assert buffer.get(7) == "second" and len(buffer) == 1


def test_state_round_trip_keeps_integer_ids_usable():
    buffer = SolutionBuffer()
    buffer.store(3, RAW)
    buffer.store("a", "x")
    restored = SolutionBuffer.from_state(json.loads(json.dumps(buffer.to_state())))
    assert restored.get(3) == RAW and restored.get("a") == "x"


RESPONSES = ["<think>a</think>own", "<think>b</think>peer-1", "peer-2", "other group"]


@pytest.mark.parametrize(
    "index, successes, groups, buffered, allow_self, expected",
    [
        (0, [True, True, True, True], ["g", "g", "g", "h"], "buf", True, ("own", "self")),
        # a success without its own text gets nothing (issue 21, bug 5): no peer, no buffer entry
        (0, [True, True, True, True], ["g", "g", "g", "h"], "buf", False, (None, "none")),
        (1, [True, False, True, True], ["g", "g", "g", "h"], "buf", False, ("own", "peer")),
        (0, [False, False, True, True], ["g", "g", "g", "h"], "buf", True, ("peer-2", "peer")),
        (0, [False, False, False, True], ["g", "g", "g", "h"], "<think>z</think>buf", True, ("buf", "buffer")),
        (0, [False, False, False, True], ["g", "g", "g", "h"], None, True, (None, "none")),
        (0, [True, False, False, False], ["g", "h", "i", "j"], "buf", False, (None, "none")),
        (1, [True, False, False, False], ["g", "h", "i", "j"], "buf", False, ("buf", "buffer")),
        (1, [True, False, False, False], ["g", "g", "i", "j"], None, True, ("own", "peer")),
    ],
)
def test_solution_priority(index, successes, groups, buffered, allow_self, expected):
    assert select_solution(index, RESPONSES, successes, groups, buffered, allow_self=allow_self) == expected


def test_thinking_can_be_kept():
    assert select_solution(0, RESPONSES, [True] * 4, ["g"] * 4, None, remove_thinking=False) == (
        "<think>a</think>own", "self")
