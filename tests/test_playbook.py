"""Playbook text format, ids, tags, stats, modes and state."""

import json

import pytest

from resd.context.playbook import (
    EMPTY_PLAYBOOK,
    GLOBAL_KEY,
    SECTION_HEADERS,
    Bullet,
    Playbook,
    PlaybookStore,
    normalize_section,
    one_line,
    section_slug,
)

CANONICAL = """## STRATEGIES & INSIGHTS
[sai-00001] helpful=3 harmful=1 :: Read the whole prompt before answering.
[sai-00004] helpful=0 harmful=0 :: Use :: separators carefully.

## FORMULAS & CALCULATIONS

## CODE SNIPPETS & TEMPLATES
[code-00002] helpful=0 harmful=2 :: Start every program with START.

## COMMON MISTAKES TO AVOID

## PROBLEM-SOLVING HEURISTICS
[prob-00003] helpful=7 harmful=0 :: Try the smallest example first.

## CONTEXT CLUES & INDICATORS

## OTHERS"""


def test_empty_playbook_is_the_seven_headers_in_order():
    assert EMPTY_PLAYBOOK == (
        "## STRATEGIES & INSIGHTS\n\n## FORMULAS & CALCULATIONS\n\n## CODE SNIPPETS & TEMPLATES\n\n"
        "## COMMON MISTAKES TO AVOID\n\n## PROBLEM-SOLVING HEURISTICS\n\n## CONTEXT CLUES & INDICATORS\n\n"
        "## OTHERS"
    )
    assert Playbook().render() == EMPTY_PLAYBOOK
    assert Playbook().is_empty()


@pytest.mark.parametrize("text", [EMPTY_PLAYBOOK, CANONICAL])
def test_render_parse_round_trip(text):
    assert Playbook.parse(text).render() == text


def test_parse_reads_bullets_on_stripped_lines_and_drops_other_lines():
    text = (
        "intro prose before any header\n"
        "## OTHERS\n"
        "   [misc-00001] helpful=1 harmful=0 ::   indented bullet  \n"
        "a continuation line that is not a bullet\n"
        "[misc-00002] helpful=x harmful=0 :: bad counter\n"
        "[misc-00003]helpful=2harmful=5::no spaces\n"
        "- [misc-00004] helpful=0 harmful=0 :: leading dash\n"
        "[misc-00001] helpful=9 harmful=9 :: duplicate id\n"
    )
    pb = Playbook.parse(text)
    assert [(b.id, b.helpful, b.harmful, b.content) for b in pb.bullets()] == [
        ("misc-00001", 1, 0, "indented bullet"),
        ("misc-00003", 2, 5, "no spaces"),
    ]
    assert pb.render() == (
        "## OTHERS\n[misc-00001] helpful=1 harmful=0 :: indented bullet\n"
        "[misc-00003] helpful=2 harmful=5 :: no spaces"
    )


def test_bullet_before_any_header_is_kept_first():
    pb = Playbook.parse("[x-00001] helpful=0 harmful=0 :: orphan\n## OTHERS")
    assert pb.render() == "[x-00001] helpful=0 harmful=0 :: orphan\n\n## OTHERS"


def test_content_keeps_double_colons_after_the_first():
    pb = Playbook.parse(CANONICAL)
    assert pb.get("sai-00004").content == "Use :: separators carefully."


def test_one_line_collapses_multiline_content():
    assert one_line("  first line\n\n  second\tline \r\nthird ") == "first line second\tline third"


@pytest.mark.parametrize(
    "name, key",
    [
        ("STRATEGIES & INSIGHTS", "strategies_and_insights"),
        ("PROBLEM-SOLVING HEURISTICS", "problem_solving_heuristics"),
        ("problem_solving_heuristics", "problem_solving_heuristics"),
        ("  Common  Mistakes to Avoid ", "common_mistakes_to_avoid"),
        ("## OTHERS", "others"),
        ("Formulas&Calculations", "formulas_and_calculations"),
    ],
)
def test_normalize_section(name, key):
    assert normalize_section(name) == key


def test_slugs_of_the_seven_sections():
    assert [section_slug(h) for h in SECTION_HEADERS] == ["sai", "calc", "code", "err", "prob", "ctx", "misc"]


@pytest.mark.parametrize(
    "name, slug",
    [
        ("financial_strategies_and_insights", "fin"),
        ("meta_strategies", "meta"),
        ("general", "gene"),
        ("DEBUGGING", "debu"),
        ("one two three four five six", "ottff"),
        ("2D GEOMETRY", "g"),
        ("42", "misc"),
    ],
)
def test_slug_table_and_initials_rule(name, slug):
    assert section_slug(name) == slug


def test_ids_are_monotonic_and_never_reused_after_delete_or_state_round_trip():
    pb = Playbook()
    first = [pb.new_id("OTHERS") for _ in range(3)]
    assert first == ["misc-00001", "misc-00002", "misc-00003"]
    pb.sections[-1].bullets = [Bullet(i, "x") for i in first]
    pb.remove(["misc-00003"])
    restored = Playbook.from_state(json.loads(json.dumps(pb.to_state())))
    assert restored.new_id("FORMULAS & CALCULATIONS") == "calc-00004"


def test_next_id_from_plain_text_is_max_suffix_plus_one():
    assert Playbook.parse(CANONICAL).next_id == 5
    assert Playbook.parse(CANONICAL, next_id=42).next_id == 42
    # a stale counter never hands out an id that already exists
    assert Playbook.parse(CANONICAL, next_id=2).next_id == 5


def test_new_id_skips_ids_in_use():
    pb = Playbook.parse("## OTHERS\n[misc-00007] helpful=0 harmful=0 :: a")
    pb.next_id = 7  # inconsistent state, e.g. hand-edited
    assert pb.new_id("others") == "misc-00008"


def tagged_playbook():
    pb = Playbook.parse(CANONICAL)
    pb.update_count = 6
    pb.last_used = {"sai-00001": 2, "sai-00004": 3, "code-00002": 1, "prob-00003": 5}
    return pb


def test_helpful_and_harmful_tags_update_counters_and_last_used():
    pb = tagged_playbook()
    counts = pb.apply_tags([("sai-00001", "helpful"), ("code-00002", "HARMFUL ")])
    assert (pb.get("sai-00001").helpful, pb.get("sai-00001").harmful) == (4, 1)
    assert (pb.get("code-00002").helpful, pb.get("code-00002").harmful) == (0, 3)
    assert pb.last_used["sai-00001"] == 6 and pb.last_used["code-00002"] == 6
    assert (counts.helpful, counts.harmful, counts.applied) == (1, 1, 2)


def test_neutral_tag_changes_nothing():
    pb = tagged_playbook()
    before = pb.render()
    counts = pb.apply_tags([("prob-00003", "neutral")])
    assert pb.render() == before
    assert pb.last_used["prob-00003"] == 5
    assert counts.neutral == 1


def test_unknown_ids_and_invalid_tags_are_ignored_and_counted():
    pb = tagged_playbook()
    before = pb.render()
    counts = pb.apply_tags([("sai-99999", "helpful"), ("sai-00001", "great"), ("nope", "harmful")])
    assert pb.render() == before
    assert (counts.unknown_id, counts.invalid_tag, counts.applied) == (2, 1, 0)


def test_last_tag_for_an_id_wins_within_one_reflection():
    pb = tagged_playbook()
    counts = pb.apply_tags([("sai-00001", "harmful"), ("sai-00001", "helpful"), ("sai-00001", "harmful")])
    assert (pb.get("sai-00001").helpful, pb.get("sai-00001").harmful) == (3, 2)
    assert counts.harmful == 1 and counts.helpful == 0
    # a last neutral tag cancels earlier ones
    pb.apply_tags([("sai-00001", "helpful"), ("sai-00001", "neutral")])
    assert pb.get("sai-00001").helpful == 3


def test_reflections_apply_one_after_another():
    pb = tagged_playbook()
    for tags in ([("sai-00001", "helpful")], [("sai-00001", "helpful")]):
        pb.apply_tags(tags)
    assert pb.get("sai-00001").helpful == 5


def test_advance_counts_updates():
    pb = Playbook()
    pb.advance()
    pb.advance()
    assert pb.update_count == 2


def test_classification_for_concise():
    pb = Playbook.parse(
        "## OTHERS\n"
        "[a-00001] helpful=0 harmful=0 :: unused\n"
        "[a-00002] helpful=1 harmful=1 :: tie is harmful\n"
        "[a-00003] helpful=0 harmful=1 :: harmful\n"
        "[a-00004] helpful=2 harmful=1 :: helpful\n"
        "[a-00005] helpful=1 harmful=0 :: helpful"
    )
    assert pb.classify() == {"unused": ["a-00001"], "harmful": ["a-00002", "a-00003"],
                             "helpful": ["a-00004", "a-00005"]}


def test_curator_stats_use_an_elif_chain_and_raw_headers():
    pb = Playbook.parse(
        "## STRATEGIES & INSIGHTS\n"
        "[s-00001] helpful=6 harmful=1 :: high performing\n"
        "[s-00002] helpful=6 harmful=6 :: problematic (not high: harmful >= 2)\n"
        "[s-00003] helpful=0 harmful=0 :: unused\n"
        "[s-00004] helpful=5 harmful=0 :: none of the three\n\n"
        "## FORMULAS & CALCULATIONS\n\n"
        "## OTHERS\n"
        "[o-00005] helpful=0 harmful=3 :: problematic"
    )
    assert pb.stats() == {
        "total_bullets": 5,
        "high_performing": 1,
        "problematic": 2,
        "unused": 1,
        "by_section": {
            "STRATEGIES & INSIGHTS": {"count": 4, "helpful": 17, "harmful": 7},
            "OTHERS": {"count": 1, "helpful": 0, "harmful": 3},
        },
    }


def test_state_round_trip_through_json():
    pb = tagged_playbook()
    pb.rng.random()
    state = json.loads(json.dumps(pb.to_state()))
    restored = Playbook.from_state(state)
    assert restored.render() == pb.render()
    assert (restored.next_id, restored.update_count, restored.last_used) == (pb.next_id, 6, pb.last_used)
    assert [restored.rng.random() for _ in range(3)] == [pb.rng.random() for _ in range(3)]
    assert set(state) >= {"playbook", "next_global_id", "update_count", "bullet_last_used"}


def test_global_store_shares_one_playbook():
    store = PlaybookStore("global", seed=3)
    assert store.get("ex-1") is store.get("ex-2") is store.get()
    assert [k for k, _ in store.items()] == [GLOBAL_KEY]


def test_per_example_store_keeps_one_playbook_per_example_and_round_trips():
    store = PlaybookStore("per_example", seed=3)
    store.get(1).new_id("others")
    store.get("b").advance()
    assert store.get(1) is not store.get("b")
    assert sorted(k for k, _ in store.items()) == ["1", "b"]
    with pytest.raises(ValueError):
        store.get()
    restored = PlaybookStore.from_state(json.loads(json.dumps(store.to_state())))
    assert restored.mode == "per_example"
    assert restored.get(1).next_id == 2 and restored.get("b").update_count == 1
    # per-key generators are seeded differently but reproducibly
    assert PlaybookStore("per_example", seed=3).get(1).rng.random() == PlaybookStore(
        "per_example", seed=3).get(1).rng.random()
    assert store.get(1).seed != store.get("b").seed


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="playbook_mode"):
        PlaybookStore("per_batch")
