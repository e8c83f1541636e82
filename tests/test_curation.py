"""Curator operations (ADD/UPDATE/DELETE/MERGE) and near-duplicate merging."""

import pytest

from resd.context.curation import (
    Dedup,
    EmbeddingSimilarity,
    add_bullet,
    apply_operations,
    deduplicate,
    jaccard_similarity,
)
from resd.context.playbook import EMPTY_PLAYBOOK, Playbook

BASE = """## STRATEGIES & INSIGHTS
[sai-00001] helpful=2 harmful=0 :: Read the whole prompt before answering.

## FORMULAS & CALCULATIONS

## CODE SNIPPETS & TEMPLATES

## COMMON MISTAKES TO AVOID
[err-00002] helpful=1 harmful=3 :: Never skip the final check.

## PROBLEM-SOLVING HEURISTICS

## CONTEXT CLUES & INDICATORS

## OTHERS
[misc-00003] helpful=0 harmful=0 :: Keep notes short."""


def base(update_count=5):
    pb = Playbook.parse(BASE, update_count=update_count)
    pb.last_used = {"sai-00001": 1, "err-00002": 2, "misc-00003": 3}
    return pb


def add(section, content):
    return {"type": "ADD", "section": section, "content": content}


def test_add_appends_at_the_end_of_its_section_with_a_new_id():
    pb = base()
    summary = apply_operations(pb, [add("Strategies & Insights", "Plan before coding."),
                                    add("strategies_and_insights", "Test small inputs.")], dedup=None)
    assert summary.added == 2 and summary.added_ids == ["sai-00004", "sai-00005"]
    assert pb.render().startswith(
        "## STRATEGIES & INSIGHTS\n"
        "[sai-00001] helpful=2 harmful=0 :: Read the whole prompt before answering.\n"
        "[sai-00004] helpful=0 harmful=0 :: Plan before coding.\n"
        "[sai-00005] helpful=0 harmful=0 :: Test small inputs.\n\n## FORMULAS & CALCULATIONS"
    )
    assert pb.last_used["sai-00004"] == 5 and pb.last_used["sai-00005"] == 5


def test_add_to_problem_solving_heuristics_lands_there_with_slug_prob():
    pb = base()
    apply_operations(pb, [add("problem_solving_heuristics", "Work backwards from the goal.")])
    assert "## PROBLEM-SOLVING HEURISTICS\n[prob-00004] helpful=0 harmful=0 :: Work backwards from the goal." \
        in pb.render()


def test_add_to_unknown_section_goes_to_others():
    pb = base()
    apply_operations(pb, [add("Debugging Tricks", "Print intermediate values.")])
    assert pb.render().endswith(
        "## OTHERS\n[misc-00003] helpful=0 harmful=0 :: Keep notes short.\n"
        "[misc-00004] helpful=0 harmful=0 :: Print intermediate values."
    )


def test_general_goes_right_after_the_others_header_in_batch_order():
    pb = base()
    apply_operations(pb, [add("general", "First general lesson."), add("GENERAL", "Second general lesson.")])
    assert pb.render().endswith(
        "## OTHERS\n[gene-00004] helpful=0 harmful=0 :: First general lesson.\n"
        "[gene-00005] helpful=0 harmful=0 :: Second general lesson.\n"
        "[misc-00003] helpful=0 harmful=0 :: Keep notes short."
    )


def test_general_without_others_header_goes_to_the_very_end():
    pb = Playbook.parse("## STRATEGIES & INSIGHTS\n\n## FORMULAS & CALCULATIONS")
    apply_operations(pb, [add("general", "A lesson.")])
    assert pb.render() == ("## STRATEGIES & INSIGHTS\n\n## FORMULAS & CALCULATIONS\n"
                           "[gene-00001] helpful=0 harmful=0 :: A lesson.")


def test_add_collapses_multiline_content_and_strips_a_copied_prefix():
    pb = Playbook()
    apply_operations(pb, [add("others", "line one\n  line two\n"),
                          add("others", "[misc-00009] helpful=4 harmful=0 :: copied prefix")], dedup=None)
    contents = [(b.content, b.helpful) for b in pb.bullets()]
    assert contents == [("line one line two", 0), ("copied prefix", 0)]


def test_update_rewrites_content_only():
    pb = base()
    summary = apply_operations(pb, [{"type": "update", "id": "err-00002", "content": "Always run\nthe final check."}])
    bullet = pb.get("err-00002")
    assert summary.updated == 1
    assert (bullet.content, bullet.helpful, bullet.harmful) == ("Always run the final check.", 1, 3)
    assert pb.last_used["err-00002"] == 2


def test_delete_removes_the_bullet_and_its_id_is_never_reused():
    pb = base()
    summary = apply_operations(pb, [{"type": "DELETE", "id": "misc-00003"}, add("others", "New note.")])
    assert summary.deleted == 1 and pb.get("misc-00003") is None and "misc-00003" not in pb.last_used
    assert summary.added_ids == ["misc-00004"]


def test_merge_keeps_the_first_id_and_sums_counters():
    pb = base()
    summary = apply_operations(pb, [{"type": "MERGE", "ids": ["err-00002", "sai-00001"],
                                     "content": "Check twice, read once."}])
    assert summary.merged == 1 and pb.get("sai-00001") is None
    merged = pb.get("err-00002")
    assert (merged.content, merged.helpful, merged.harmful) == ("Check twice, read once.", 3, 3)
    assert pb.last_used == {"err-00002": 2, "misc-00003": 3}


def test_merge_without_content_keeps_the_first_content_and_latest_last_used():
    pb = base()
    apply_operations(pb, [{"type": "MERGE", "ids": ["sai-00001", "misc-00003", "sai-00001"]}])
    merged = pb.get("sai-00001")
    assert merged.content == "Read the whole prompt before answering." and merged.helpful == 2
    assert pb.last_used["sai-00001"] == 3 and pb.get("misc-00003") is None


@pytest.mark.parametrize(
    "op",
    [
        "ADD",
        None,
        {"section": "others", "content": "no type"},
        {"type": 3, "section": "others", "content": "x"},
        {"type": "ADD", "section": "others"},
        {"type": "ADD", "section": "others", "content": 5},
        {"type": "ADD", "section": "others", "content": "  \n "},
        {"type": "UPDATE", "id": "sai-99999", "content": "x"},
        {"type": "UPDATE", "id": "sai-00001", "content": ""},
        {"type": "UPDATE", "content": "x"},
        {"type": "DELETE", "id": "sai-99999"},
        {"type": "DELETE", "id": ["sai-00001"]},
        {"type": "MERGE", "ids": ["sai-00001"]},
        {"type": "MERGE", "ids": ["sai-00001", "sai-00001"]},
        {"type": "MERGE", "ids": ["sai-00001", "sai-99999"]},
        {"type": "MERGE", "ids": "sai-00001,err-00002"},
        {"type": "MERGE", "ids": ["sai-00001", 2]},
        {"type": "CREATE_META", "content": "x"},
    ],
)
def test_invalid_operations_are_skipped_and_counted(op):
    pb = base()
    before = pb.to_state()
    summary = apply_operations(pb, [op])
    assert summary.skipped == 1 and len(summary.skip_reasons) == 1
    assert summary.added == summary.updated == summary.deleted == summary.merged == 0
    assert pb.to_state() == before


def test_a_skipped_op_does_not_stop_the_others():
    pb = base()
    summary = apply_operations(pb, [{"type": "DELETE", "id": "zzz-00001"}, add("others", "Fresh idea here.")])
    assert summary.as_metrics() == {"added": 1, "deduplicated": 0, "updated": 0, "deleted": 0, "merged": 0,
                                    "skipped": 1}


def test_jaccard_similarity():
    assert jaccard_similarity("Check the output twice", "check THE output, twice!") == 1.0
    assert jaccard_similarity("a b c d", "a b c e") == pytest.approx(3 / 5)
    assert jaccard_similarity("", "") == 1.0 and jaccard_similarity("a", "") == 0.0


def test_near_duplicate_add_is_folded_into_the_existing_bullet():
    pb = base()
    next_id = pb.next_id
    summary = apply_operations(pb, [add("strategies_and_insights", "Read the whole prompt before answering!")])
    assert (summary.added, summary.deduplicated) == (0, 1)
    assert pb.total() == 3 and pb.next_id == next_id
    assert pb.last_used["sai-00001"] == 5  # refreshed, as a new bullet would be


def test_duplicates_within_one_batch_collapse_and_dedup_can_be_disabled():
    ops = [add("others", "Check the final state of the tape."), add("others", "check the final state of the tape")]
    pb = Playbook()
    assert apply_operations(pb, ops).as_metrics()["deduplicated"] == 1 and pb.total() == 1
    pb = Playbook()
    assert apply_operations(pb, ops, dedup=None).added == 2 and pb.total() == 2


def test_dedup_threshold_is_configurable():
    pb = base()
    op = add("others", "Read the prompt before answering.")  # jaccard 5/6 with sai-00001
    assert apply_operations(pb, [op], dedup=Dedup(threshold=0.9)).added == 1
    pb = base()
    assert apply_operations(pb, [op], dedup=Dedup(threshold=0.8)).deduplicated == 1


def test_deduplicate_pass_merges_into_the_earlier_bullet():
    pb = Playbook.parse(
        "## OTHERS\n"
        "[misc-00001] helpful=1 harmful=0 :: Check the final state of the tape.\n"
        "[misc-00002] helpful=0 harmful=0 :: Something unrelated entirely.\n"
        "[misc-00003] helpful=2 harmful=1 :: check the final state of the tape"
    )
    pb.last_used = {"misc-00001": 1, "misc-00002": 2, "misc-00003": 4}
    assert deduplicate(pb) == [("misc-00001", "misc-00003")]
    kept = pb.get("misc-00001")
    assert (kept.helpful, kept.harmful, kept.content) == (3, 1, "Check the final state of the tape.")
    assert pb.last_used == {"misc-00001": 4, "misc-00002": 2} and pb.total() == 2


def letter_counts(texts):
    """A deterministic 'embedding': counts of the letters a-z."""
    calls.append(list(texts))
    return [[t.lower().count(chr(c)) for c in range(97, 123)] for t in texts]


calls: list = []


def test_embedding_similarity_hook_batches_and_caches():
    calls.clear()
    sim = EmbeddingSimilarity(letter_counts)
    assert sim("abc", "cba") == pytest.approx(1.0)
    assert sim("abc", "xyz") == pytest.approx(0.0)
    assert calls == [["abc", "cba"], ["xyz"]]
    pb = Playbook.parse("## OTHERS\n[misc-00001] helpful=0 harmful=0 :: listen here")
    calls.clear()
    summary = apply_operations(pb, [add("others", "silent here")], dedup=Dedup(0.99, sim))
    assert summary.deduplicated == 1 and calls == [["silent here", "listen here"]]


def test_add_bullet_reports_created_or_folded():
    pb = Playbook(update_count=2)
    assert add_bullet(pb, "others", "One lesson.") == ("misc-00001", True)
    assert add_bullet(pb, "others", "one lesson", dedup=Dedup()) == ("misc-00001", False)
    with pytest.raises(ValueError):
        add_bullet(pb, "others", "   ")
    assert Playbook().render() == EMPTY_PLAYBOOK


def test_parsed_curator_output_applies_end_to_end():
    from resd.context.parsing import parse_curator

    text = ('<think>what is missing?</think>\n{"reasoning": "r", "operations": ['
            '{"type": "add", "section": "PROBLEM-SOLVING HEURISTICS", "content": "Draw the machine first."},'
            '{"type": "DELETE", "id": "misc-00003"}]}')
    pb = base()
    summary = apply_operations(pb, parse_curator(text).operations)
    assert (summary.added, summary.deleted) == (1, 1)
    assert pb.get("prob-00004").content == "Draw the machine first."


def test_random_operations_never_raise_and_keep_the_playbook_well_formed():
    import random

    rng = random.Random(5)
    sections = ["others", "general", "Debugging", "PROBLEM-SOLVING HEURISTICS", "err", "", "formulas_and_calculations"]
    junk = [None, 1, 2.5, True, "", " ", [], {}, ["x"], "x\ny"]

    def pick_id(pb):
        existing = [b.id for b in pb.bullets()]
        return rng.choice(existing) if existing and rng.random() < 0.8 else rng.choice(["zz-00001", "misc-00999"])

    def random_op(pb):
        kind = rng.choice(["ADD", "ADD", "UPDATE", "DELETE", "MERGE", "add", "OTHER"])
        op = {"type": kind}
        if kind.upper() == "ADD":
            op["section"] = rng.choice(sections)
            op["content"] = " ".join(rng.choice(["check", "tape", "loop", "end", "red", "blue", "first"])
                                     for _ in range(rng.randrange(0, 6)))
        elif kind == "UPDATE":
            op.update(id=pick_id(pb), content=rng.choice(["new text", "", "a\nb"]))
        elif kind == "DELETE":
            op["id"] = pick_id(pb)
        elif kind == "MERGE":
            op["ids"] = [pick_id(pb) for _ in range(rng.randrange(0, 4))]
            if rng.random() < 0.5:
                op["content"] = rng.choice(["merged", "", 3])
        if rng.random() < 0.15:  # corrupt one field
            op[rng.choice(["type", "section", "content", "id", "ids"])] = rng.choice(junk)
        return op if rng.random() < 0.95 else rng.choice(junk)

    pb = base()
    totals = {}
    for _ in range(600):
        ops = [random_op(pb) for _ in range(rng.randrange(1, 5))]
        summary = apply_operations(pb, ops, dedup=rng.choice([None, Dedup()]))
        metrics = summary.as_metrics()
        assert sum(metrics.values()) == len(ops)
        totals = {k: totals.get(k, 0) + v for k, v in metrics.items()}
        text = pb.render()
        assert Playbook.parse(text).render() == text
        assert set(pb.last_used) <= {b.id for b in pb.bullets()}
        assert len({b.id for b in pb.bullets()}) == pb.total()
    assert all(totals[k] > 0 for k in totals), totals


def test_a_placeholder_copied_at_the_end_of_a_lesson_is_cut_off():
    """Seen in the constrained Manufactoria re-run's playbook: a real lesson with the reflector's
    key_insight placeholder appended. The placeholder goes, the lesson stays."""
    from resd.context.curation import clean_content

    lesson = "To make the tape accept exactly one tape with at least 4 Rs and at least 2 Ys"
    assert clean_content(lesson + ", the lesson to remember for similar tasks") == lesson
    assert clean_content(lesson + "; The lesson to remember for") == lesson  # cut short by a length limit
    assert clean_content(lesson + ": what the model should have done.") == lesson
    for kept in ("Carry the tens digit, then add the units.",
                 "Multiply the ones digits first; it fixes the lesson itself.",
                 "Identify what exactly went wrong",  # no separator: part of the sentence
                 "Check the last branch, the lesson",  # two words: too short to call a copy
                 lesson):
        assert clean_content(kept) == kept


def test_placeholder_lessons_copied_from_the_prompt_are_skipped():
    from resd.context.curation import apply_operations
    from resd.context.playbook import Playbook

    pb = Playbook()
    summary = apply_operations(pb, [
        {"type": "ADD", "section": "others", "content": "<new lesson>"},
        {"type": "ADD", "section": "others", "content": "  ...  "},
        {"type": "ADD", "section": "others", "content": "[misc-00009] helpful=0 harmful=0 :: <lesson>"},
        {"type": "ADD", "section": "others", "content": "Check the <EMPTY> branch of every puller."},
        {"type": "ADD", "section": "others", "content": "the lesson itself, one sentence"},  # brackets dropped
        {"type": "ADD", "section": "others", "content": "The Lesson itself - one sentence."},
        {"type": "ADD", "section": "others", "content": "one-sentence lesson"},  # the compact curator's
        {"type": "ADD", "section": "others", "content": "Multiply the ones digits first; it fixes the lesson itself."},
        # the reflector's placeholders reach the curator through the reflections, whole or cut short
        {"type": "ADD", "section": "others", "content": "The lesson to remember for similar tasks"},
        {"type": "ADD", "section": "others", "content": ": The lesson to remember for"},
        {"type": "ADD", "section": "others", "content": "What exactly went wrong."},
        {"type": "ADD", "section": "others", "content": "The lesson"},  # too short to call a copy: kept
    ])
    assert summary.added == 3 and summary.skipped == 9
    assert [b.content for b in pb.bullets()] == ["Check the <EMPTY> branch of every puller.",
                                                 "Multiply the ones digits first; it fixes the lesson itself.",
                                                 "The lesson"]
