"""CONCISE methods, triggers, the cap and the post-curation trim."""

import json
import random

import pytest

from resd.context.concise import concise, concise_trigger, maybe_concise, trim_after_curation
from resd.context.curation import apply_operations
from resd.context.playbook import EMPTY_PLAYBOOK, Playbook

# kinds: u = unused, h = helpful, x = harmful
MIXED = [("u", 0, 0), ("h", 3, 1), ("x", 1, 1), ("u", 0, 0), ("h", 1, 0), ("x", 0, 2), ("h", 5, 0), ("h", 2, 0)]


def make(spec, *, update_count=10, last_used=None, seed=0):
    """A playbook with one bullet per (kind, helpful, harmful) entry, ids misc-00001..."""
    lines = ["## STRATEGIES & INSIGHTS", "", "## OTHERS"]
    lines += [f"[misc-{i:05d}] helpful={h} harmful={d} :: lesson {i} ({kind})"
              for i, (kind, h, d) in enumerate(spec, 1)]
    pb = Playbook.parse("\n".join(lines), update_count=update_count, seed=seed)
    pb.last_used = dict(last_used or {})
    return pb


def ids(pb):
    return [b.id for b in pb.bullets()]


@pytest.mark.parametrize(
    "u, total, frequency, max_bullets, expected",
    [
        (0, 3, 4, None, (None, None)),  # u = 0 never triggers by frequency
        (3, 3, 4, None, (None, None)),
        (4, 3, 4, None, ("frequency", None)),
        (8, 3, 4, 10, ("frequency", None)),  # frequency alone does not enforce the cap
        (8, 11, 4, 10, ("cap", 10)),  # both fire: the cap is enforced
        (5, 11, 4, 10, ("cap", 10)),
        (5, 10, 4, 10, (None, None)),  # exactly at the cap is fine
        (4, 3, None, None, (None, None)),
        (4, 3, 0, None, (None, None)),
    ],
)
def test_triggers(u, total, frequency, max_bullets, expected):
    assert concise_trigger(u, total, frequency=frequency, max_bullets=max_bullets) == expected


def test_reset_empties_the_playbook_but_keeps_the_id_counter():
    pb = make(MIXED, last_used={"misc-00001": 3})
    removed = concise(pb, "reset")
    assert len(removed) == 8 and pb.render() == EMPTY_PLAYBOOK and pb.last_used == {}
    assert pb.new_id("others") == "misc-00009"


def test_prioritized_without_cap_removes_all_unused_and_harmful():
    pb = make(MIXED, last_used={f"misc-{i:05d}": 9 for i in range(1, 9)})
    removed = concise(pb, "prioritized", None)
    assert removed == ["misc-00001", "misc-00003", "misc-00004", "misc-00006"]
    assert ids(pb) == ["misc-00002", "misc-00005", "misc-00007", "misc-00008"]
    assert set(pb.last_used) == set(ids(pb))


def test_prioritized_removes_a_random_sample_of_excess_helpful_under_the_cap():
    pb = make(MIXED, seed=1)
    removed = concise(pb, "prioritized", 2)
    assert {"misc-00001", "misc-00003", "misc-00004", "misc-00006"} <= set(removed)
    assert len(removed) == 6 and pb.total() == 2
    assert set(ids(pb)) <= {"misc-00002", "misc-00005", "misc-00007", "misc-00008"}


def test_prioritized_cap_not_hit_keeps_all_helpful():
    pb = make(MIXED)
    concise(pb, "prioritized", 4)
    assert ids(pb) == ["misc-00002", "misc-00005", "misc-00007", "misc-00008"]


def test_random_choices_are_seeded():
    survivors = {seed: tuple(ids_after(seed)) for seed in range(12)}
    assert survivors[3] == tuple(ids_after(3))
    assert len(set(survivors.values())) > 1


def ids_after(seed):
    pb = make(MIXED, seed=seed)
    concise(pb, "prioritized", 2)
    return ids(pb)


def test_an_explicit_rng_is_used_when_given():
    a, b = make(MIXED), make(MIXED)
    concise(a, "prioritized", 2, random.Random(99))
    concise(b, "prioritized", 2, random.Random(99))
    assert ids(a) == ids(b)
    assert a.rng.getstate() == Playbook(seed=0).rng.getstate()  # the playbook's own rng was not used


def test_staleness_removes_harmful_and_unused_older_than_one_update():
    spec = [("u", 0, 0), ("u", 0, 0), ("u", 0, 0), ("x", 0, 1), ("h", 1, 0)]
    # u = 10: created at 9 survives (10 - 9 = 1), at 8 is stale, missing last_used counts as step 0
    pb = make(spec, last_used={"misc-00001": 9, "misc-00002": 8, "misc-00004": 10, "misc-00005": 0})
    removed = concise(pb, "staleness", None)
    assert removed == ["misc-00002", "misc-00003", "misc-00004"]
    assert ids(pb) == ["misc-00001", "misc-00005"]
    assert pb.last_used == {"misc-00001": 9, "misc-00005": 0}


def test_staleness_cap_removes_least_recently_used_first_helpful_included():
    spec = [("h", 1, 0), ("h", 2, 0), ("u", 0, 0), ("h", 4, 0), ("h", 1, 0)]
    last = {"misc-00001": 7, "misc-00002": 2, "misc-00003": 10, "misc-00004": 5, "misc-00005": 9}
    pb = make(spec, last_used=last)
    removed = concise(pb, "staleness", 3)
    assert removed == ["misc-00002", "misc-00004"]
    assert ids(pb) == ["misc-00001", "misc-00003", "misc-00005"]


def test_staleness_cap_breaks_last_used_ties_at_random():
    spec = [("h", 1, 0)] * 6
    last = {f"misc-{i:05d}": 4 for i in range(1, 7)}
    outcomes = set()
    for seed in range(10):
        pb = make(spec, last_used=dict(last), seed=seed)
        concise(pb, "staleness", 3)
        assert pb.total() == 3
        outcomes.add(tuple(ids(pb)))
    assert len(outcomes) > 1


def test_no_blank_line_runs_after_concise():
    pb = make(MIXED)
    concise(pb, "prioritized", None)
    text = pb.render()
    assert "\n\n\n" not in text and Playbook.parse(text).render() == text


def test_maybe_concise_frequency_trigger_does_not_enforce_the_cap():
    pb = make([("h", 1, 0)] * 6 + [("x", 0, 1)], update_count=8, last_used={})
    result = maybe_concise(pb, "staleness", frequency=4, max_bullets=6)
    assert result.trigger == "cap"  # 7 > 6
    pb = make([("h", 1, 0)] * 6 + [("x", 0, 1)], update_count=8)
    result = maybe_concise(pb, "staleness", frequency=4, max_bullets=10)
    assert (result.trigger, result.effective_max, result.removed) == ("frequency", None, ["misc-00007"])
    pb = make([("h", 1, 0)] * 6 + [("u", 0, 0)], update_count=9)
    assert maybe_concise(pb, "staleness", frequency=4, max_bullets=10) is None and pb.total() == 7


def test_maybe_concise_cap_trigger_enforces_the_cap():
    pb = make([("h", 1, 0)] * 8, update_count=5, last_used={f"misc-{i:05d}": i for i in range(1, 9)})
    result = maybe_concise(pb, "staleness", frequency=4, max_bullets=5)
    assert (result.trigger, result.effective_max) == ("cap", 5)
    assert result.removed == ["misc-00001", "misc-00002", "misc-00003"]


def test_post_curation_trim_runs_only_over_the_cap():
    pb = make([("h", 1, 0)] * 3, update_count=5, last_used={"misc-00001": 1, "misc-00002": 2, "misc-00003": 3})
    apply_operations(pb, [{"type": "ADD", "section": "others", "content": f"new lesson number {w}"}
                          for w in ("one", "two")], dedup=None)
    assert trim_after_curation(pb, "staleness", 5) is None and pb.total() == 5
    apply_operations(pb, [{"type": "ADD", "section": "others", "content": "one more about tapes"}])
    result = trim_after_curation(pb, "staleness", 5)
    assert (result.trigger, result.effective_max, result.removed) == ("post_curation", 5, ["misc-00001"])
    assert trim_after_curation(pb, "staleness", None) is None


def test_post_curation_trim_with_prioritized_drops_the_new_bullets():
    pb = make([("h", 1, 0)] * 2, update_count=5)
    apply_operations(pb, [{"type": "ADD", "section": "others", "content": "fresh insight about loops"}])
    result = trim_after_curation(pb, "prioritized", 2)
    assert result.removed == ["misc-00003"] and pb.total() == 2


def test_resumed_run_draws_the_same_random_numbers():
    def run(pb, steps):
        out = []
        for _ in range(steps):
            apply_operations(pb, [{"type": "ADD", "section": "others", "content": f"lesson {pb.next_id} " + "z" * pb.next_id}])
            for b in pb.bullets():
                b.helpful += 1
            out.append(trim_after_curation(pb, "prioritized", 3).removed if pb.total() > 3 else [])
            pb.advance()
        return out

    straight = make([("h", 1, 0)] * 3, update_count=0, seed=7)
    full = run(straight, 6)
    resumed = make([("h", 1, 0)] * 3, update_count=0, seed=7)
    first = run(resumed, 3)
    resumed = Playbook.from_state(json.loads(json.dumps(resumed.to_state())))
    assert first + run(resumed, 3) == full
    assert resumed.render() == straight.render()


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="concise_method"):
        concise(Playbook(), "random")
