"""Parsing of reflector/curator outputs and the prompt templates."""

import json
import random
import string
import time

import pytest

from resd.context import prompts
from resd.context.parsing import (
    balanced_objects,
    extract_json_object,
    parse_curator,
    parse_reflection,
    regex_bullet_tags,
    strip_thinking,
)
from resd.context.playbook import SECTION_HEADERS, normalize_section

REFLECTION_JSON = {
    "reasoning": "The program never reads the last symbol.",
    "error_identification": "Missing branch for an empty tape.",
    "root_cause_analysis": "Assumed the input is never empty.",
    "correct_approach": "Route the empty tape straight to END.",
    "key_insight": "Always handle the empty input.",
    "bullet_tags": [{"id": "sai-00001", "tag": "helpful"}, {"id": "prob-00002", "tag": "Harmful"}],
}
CURATOR_JSON = {
    "reasoning": "One new lesson.",
    "operations": [
        {"type": "ADD", "section": "common_mistakes_to_avoid", "content": "Handle the empty tape."},
        {"type": "update", "id": "sai-00001", "content": "Read the whole {prompt}."},
        {"type": "DELETE", "id": "err-00003"},
        {"type": "MERGE", "ids": ["sai-00001", "sai-00004"]},
    ],
}
REAL_REFLECTION = (
    "Okay, let me look at what went wrong. The feedback says {\"failed\": 3} tests...\n"
    "Maybe I should tag sai-00001.\n</think>\n\n"
    "Here is my analysis:\n```json\n" + json.dumps(REFLECTION_JSON, indent=2) + "\n```\n"
    "I hope this helps! Let me know if {you} need more."
)


# ----------------------------------------------------------------------------- thinking
@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>plan</think>answer", "answer"),
        ("reasoning opened by the template</think>\nanswer", "answer"),
        ("before <think>x</think> after", "before  after"),
        ("a</think>b<think>c</think>d", "bd"),
        ("answer <think>cut off by the length lim", "answer"),
        ("no thinking at all", "no thinking at all"),
        (None, ""),
        (b"<think>x</think>y", ""),
    ],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


# ----------------------------------------------------------------------------- JSON extraction
def test_whole_text_json():
    assert extract_json_object('  {"a": 1}\n') == ({"a": 1}, "whole")


def test_fenced_json_block_and_plain_fence():
    assert extract_json_object('Sure:\n```json\n{"a": 1}\n```\nbye') == ({"a": 1}, "fence")
    assert extract_json_object('Sure:\n```\n{"a": 2}\n```') == ({"a": 2}, "fence")
    assert extract_json_object('```JSON{"a": 3}```') == ({"a": 3}, "fence")


def test_first_parseable_fence_wins():
    text = '```json\n{"a": 1,,}\n```\nthen\n```json\n{"b": 2}\n```\n```json\n{"c": 3}\n```'
    assert extract_json_object(text) == ({"b": 2}, "fence")


def test_balanced_object_in_prose_with_braces_inside_strings():
    text = 'I think {not json} but here: {"a": "x } y", "b": {"c": "\\" {"}} and trailing prose.'
    assert extract_json_object(text) == ({"a": "x } y", "b": {"c": '" {'}}, "braces")


def test_first_balanced_object_that_parses_even_when_nested_in_a_broken_one():
    text = 'prefix {"outer": oops, "inner": {"ok": true}} suffix {"later": 1}'
    assert extract_json_object(text) == ({"ok": True}, "braces")


def test_non_object_json_is_not_accepted():
    assert extract_json_object("[1, 2, 3]") == (None, "none")
    assert extract_json_object('"just a string"') == (None, "none")
    assert extract_json_object('[{"a": 1}]') == ({"a": 1}, "braces")


def test_balanced_objects_spans():
    text = 'x {a {b} "}" } {'
    assert balanced_objects(text) == [(2, 14), (5, 8)]


# ----------------------------------------------------------------------------- regex fallback
def test_regex_fallback_any_key_order_and_any_slug_length():
    text = ('truncated {"bullet_tags": [{"id": "ph-00001", "tag": "helpful"}, '
            '{"tag": "HARMFUL", "id": "prob-00002"}, {"id": "calc-000')
    assert regex_bullet_tags(text) == [("ph-00001", "helpful"), ("prob-00002", "harmful")]
    assert regex_bullet_tags(12) == []


# ----------------------------------------------------------------------------- reflector
def test_parse_real_looking_reflection():
    result = parse_reflection(REAL_REFLECTION)
    assert result.ok and result.source == "fence"
    assert result.bullet_tags == [("sai-00001", "helpful"), ("prob-00002", "harmful")]
    assert result.fields["key_insight"] == "Always handle the empty input."
    assert set(result.fields) == set(REFLECTION_JSON) - {"bullet_tags"}
    assert "</think>" not in result.text and result.text.startswith("Here is my analysis")


def test_reflection_with_unfenced_json_and_trailing_prose():
    result = parse_reflection("Analysis follows. " + json.dumps(REFLECTION_JSON) + " Done {really}.")
    assert result.ok and result.source == "braces" and len(result.bullet_tags) == 2


def test_truncated_reflection_uses_the_regex_fallback():
    truncated = json.dumps(REFLECTION_JSON)[:-40]
    result = parse_reflection(truncated)
    assert result.ok and result.source == "regex" and result.bullet_tags == [("sai-00001", "helpful")]
    assert result.fields == {}


def test_reflection_with_wrong_types():
    result = parse_reflection(json.dumps({"reasoning": 5, "key_insight": "k", "bullet_tags": [
        {"id": "sai-00001", "tag": "helpful"}, {"id": 7, "tag": "helpful"}, "sai-00002", None]}))
    assert result.ok and result.fields == {"key_insight": "k"}
    assert result.bullet_tags == [("sai-00001", "helpful")] and result.malformed_tags == 3
    result = parse_reflection(json.dumps({"reasoning": "r", "bullet_tags": "sai-00001 helpful"}))
    assert result.ok and result.bullet_tags == [] and result.fields == {"reasoning": "r"}


@pytest.mark.parametrize("bad", [None, 3, b"{}", ["x"], "", "no json, no tags", "INCORRECT_DUE_TO_EMPTY_RESPONSE {}"])
def test_reflection_failures(bad):
    result = parse_reflection(bad)
    assert not result.ok and result.error and result.bullet_tags == []


# ----------------------------------------------------------------------------- curator
def test_parse_valid_curator_output():
    result = parse_curator("<think>hmm {x}</think>\n" + json.dumps(CURATOR_JSON))
    assert result.ok and result.source == "whole" and result.reasoning == "One new lesson."
    assert [op["type"] for op in result.operations] == ["ADD", "UPDATE", "DELETE", "MERGE"]
    assert result.operations[1]["content"] == "Read the whole {prompt}."


def test_unknown_operation_types_pass_validation():
    result = parse_curator(json.dumps({"reasoning": "", "operations": [{"type": "CREATE_META", "x": 1}]}))
    assert result.ok and result.operations == [{"type": "CREATE_META", "x": 1}]


def test_empty_operations_is_valid():
    result = parse_curator('```json\n{"reasoning": "nothing new", "operations": []}\n```')
    assert result.ok and result.operations == []


@pytest.mark.parametrize(
    "obj",
    [
        {"operations": [{"type": "ADD", "section": "others", "content": "x"}]},
        {"reasoning": 1, "operations": []},
        {"reasoning": "r"},
        {"reasoning": "r", "operations": {"type": "ADD"}},
        {"reasoning": "r", "operations": ["ADD"]},
        {"reasoning": "r", "operations": [{"section": "others", "content": "x"}]},
        {"reasoning": "r", "operations": [{"type": None}]},
        {"reasoning": "r", "operations": [{"type": "ADD", "content": "x"}]},
        {"reasoning": "r", "operations": [{"type": "ADD", "section": "others"}]},
        {"reasoning": "r", "operations": [{"type": "ADD", "section": ["others"], "content": "x"}]},
        {"reasoning": "r", "operations": [{"type": "UPDATE", "content": "x"}]},
        {"reasoning": "r", "operations": [{"type": "UPDATE", "id": "sai-00001"}]},
        {"reasoning": "r", "operations": [{"type": "DELETE"}]},
        {"reasoning": "r", "operations": [{"type": "MERGE", "ids": "a,b"}]},
        {"reasoning": "r", "operations": [{"type": "MERGE", "ids": ["a", 2]}]},
    ],
)
def test_any_invalid_part_skips_all_of_the_samples_operations(obj):
    good = {"type": "ADD", "section": "others", "content": "fine"}
    if isinstance(obj.get("operations"), list):
        obj = {**obj, "operations": [good] + obj["operations"]}
    result = parse_curator(json.dumps(obj))
    assert not result.ok and result.operations == [] and result.error


def test_rejected_operations_are_counted():
    result = parse_curator(json.dumps({"operations": [{"type": "ADD", "section": "a", "content": "b"}] * 3}))
    assert not result.ok and result.n_rejected == 3


@pytest.mark.parametrize("bad", [None, 1.5, {"reasoning": "r", "operations": []}, "", "plain prose",
                                 "INCORRECT_DUE_TO_EMPTY_RESPONSE " + json.dumps(CURATOR_JSON),
                                 json.dumps(CURATOR_JSON)[:-3]])
def test_curator_failures(bad):
    result = parse_curator(bad)
    assert not result.ok and result.error and result.operations == []


# ----------------------------------------------------------------------------- hostile inputs
@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        "{" * 100_000,
        "{" * 50_000 + "}" * 50_000,
        '{"a":' * 30_000 + "1" + "}" * 30_000,
        '{"bullet_tags": ' + "[" * 50_000,
        "```" * 10_000,
        '"' * 50_000 + "{" + '\\"' * 10_000,
        "<think>" * 1000 + "</think>" * 999,
        "\x00\ud800{}\uffff",
    ],
)
def test_hostile_inputs_fail_quickly_without_raising(text):
    start = time.perf_counter()
    assert isinstance(parse_reflection(text).ok, bool)
    assert isinstance(parse_curator(text).ok, bool)
    assert time.perf_counter() - start < 5.0


def mutate(text: str, rng: random.Random) -> str:
    """One random edit of a realistic output: cut, delete, insert, duplicate or swap."""
    pieces = ['{', '}', '[', ']', '"', '\\', ':', ',', '```', '```json\n', '<think>', '</think>', '\n', 'null',
              '"id"', '"tag"', '"bullet_tags"', '"operations"', '"type": "ADD"', '-00001', '\ud800', 'é']
    n = len(text)
    i, j = sorted(rng.randrange(n + 1) for _ in range(2))
    choice = rng.randrange(6)
    if choice == 0:
        return text[:i]
    if choice == 1:
        return text[:i] + text[j:]
    if choice == 2:
        return text[:i] + rng.choice(pieces) + text[i:]
    if choice == 3:
        return text[:j] + text[i:j] + text[j:]
    if choice == 4:
        return text[:i] + "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 20))) + text[j:]
    return text[i:j] + text[:i] + text[j:]


def test_thousands_of_mutated_outputs_never_raise():
    rng = random.Random(1234)
    seeds = [
        REAL_REFLECTION,
        json.dumps(REFLECTION_JSON),
        json.dumps(CURATOR_JSON, indent=2),
        "<think>x</think>```json\n" + json.dumps(CURATOR_JSON) + "\n```",
        "Thoughts {a} then " + json.dumps(CURATOR_JSON) + " end",
    ]
    outcomes = {"reflection_ok": 0, "curator_ok": 0}
    for _ in range(10_000):
        text = rng.choice(seeds)
        for _ in range(rng.randrange(1, 6)):
            text = mutate(text, rng)
        reflection = parse_reflection(text)
        curator = parse_curator(text)
        assert isinstance(reflection.bullet_tags, list) and isinstance(curator.operations, list)
        assert all(isinstance(i, str) and isinstance(t, str) for i, t in reflection.bullet_tags)
        assert curator.ok == (curator.error == "")
        outcomes["reflection_ok"] += reflection.ok
        outcomes["curator_ok"] += curator.ok
    # the mutations leave a mix of parseable and broken outputs
    assert 0 < outcomes["curator_ok"] < 10_000 and 0 < outcomes["reflection_ok"] < 10_000


def test_random_json_values_never_raise():
    rng = random.Random(99)

    def value(depth=0):
        kind = rng.randrange(7 if depth < 4 else 4)
        if kind == 0:
            return rng.choice([None, True, False])
        if kind == 1:
            return rng.randint(-5, 5)
        if kind == 2:
            return rng.choice(["ADD", "UPDATE", "DELETE", "MERGE", "helpful", "sai-00001", "", "x"])
        if kind == 3:
            return rng.random()
        keys = ["type", "section", "content", "id", "ids", "tag", "reasoning", "operations", "bullet_tags"]
        if kind in (4, 5):
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(4))]

    for _ in range(2000):
        text = json.dumps(value())
        parse_reflection(text)
        parse_curator(text)


# ----------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("name", sorted(prompts.PLACEHOLDERS))
def test_templates_format_with_exactly_their_placeholders(name):
    import string as _string

    template = getattr(prompts, name)
    fields = {f for _, f, _, _ in _string.Formatter().parse(template) if f is not None}
    assert fields == prompts.PLACEHOLDERS[name]
    values = {key: f"<<{key}>>" for key in fields}
    filled = template.format(**values)
    positions = [filled.index(f"<<{key}>>") for key in values]
    assert len(set(positions)) == len(values)
    with pytest.raises(KeyError):
        template.format(**{k: v for k, v in list(values.items())[1:]})


def test_template_sections_come_in_the_specified_order():
    orders = {
        "REFLECTOR": ["Model's Prompt", "Model's Response", "Environment Feedback", "Teacher Feedback", "Playbook"],
        "SUCCESS_REFLECTOR": ["Model's Prompt", "Model's Response", "Playbook"],
        "CURATOR": ["Current Playbook Stats", "Recent Reflection", "Current Playbook:", "Model's Prompt"],
    }
    for name, labels in orders.items():
        template = getattr(prompts, name)
        positions = [template.index(f"**{label}") for label in labels]
        assert positions == sorted(positions), name


def test_template_json_examples_parse_with_our_parsers():
    reflector = prompts.REFLECTOR.format(prompt="p", response="r", feedback="f", teacher_feedback="", playbook="b")
    example = reflector.split("Answer in this exact JSON format:")[1].rstrip().removesuffix("---")
    parsed = parse_reflection(example)
    assert parsed.source == "whole" and [t for _, t in parsed.bullet_tags] == ["helpful", "harmful"]
    assert set(parsed.fields) == {"reasoning", "error_identification", "root_cause_analysis",
                                  "correct_approach", "key_insight"}
    success = prompts.SUCCESS_REFLECTOR.format(prompt="p", response="r", playbook="b")
    example = success.split("Answer in this exact JSON format:")[1].rstrip().removesuffix("---")
    assert parse_reflection(example).bullet_tags == [("calc-00000", "helpful"), ("err-00000", "neutral")]
    curator = prompts.CURATOR.format(playbook_stats="{}", recent_reflection="r", current_playbook="b", prompt="p")
    parsed = parse_curator(curator.split("Answer in this exact JSON format:")[1])
    assert parsed.ok and parsed.operations[0]["section"] == "common_mistakes_to_avoid"


def test_prompt_example_ids_never_name_a_real_bullet():
    """Small models copy the example tags verbatim: they must not hit real bullets (ids start at 1)."""
    from resd.context.curation import apply_operations
    from resd.context.playbook import Playbook

    pb = Playbook()
    apply_operations(pb, [{"type": "ADD", "section": s, "content": f"lesson {s}"}
                          for s in ("formulas_and_calculations", "common_mistakes_to_avoid")])
    reflector = prompts.REFLECTOR.format(prompt="p", response="r", feedback="f", teacher_feedback="", playbook="b")
    tags = parse_reflection(reflector.split("Answer in this exact JSON format:")[1].rstrip().removesuffix("---")).bullet_tags
    counts = pb.apply_tags(tags)
    assert counts.unknown_id == 2 and counts.applied == 0
    curator = prompts.CURATOR.format(playbook_stats="{}", recent_reflection="r", current_playbook="b", prompt="p")
    summary = apply_operations(pb, parse_curator(curator.split("Answer in this exact JSON format:")[1]).operations)
    assert summary.added == 0 and summary.skipped == 1  # the placeholder lesson is not added


def test_curator_lists_the_real_section_names():
    listed = prompts.CURATOR.split("Sections:")[1].split(".\n")[0]
    assert [s.strip() for s in listed.split(",")] == [normalize_section(h) for h in SECTION_HEADERS]
