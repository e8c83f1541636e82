"""ContextUpdater on its own: which generation calls one update makes, with a scripted reflector/curator."""

from __future__ import annotations

import json

from resd.context.updater import ContextUpdater, UpdaterConfig, UpdateItem


class Script:
    """Records every conversation it is asked to continue and answers by prompt kind."""

    def __init__(self, bullet_id: str = "") -> None:
        self.kinds: list[str] = []
        self.bullet_id = bullet_id

    def __call__(self, conversations):
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            if "curator" in text:
                self.kinds.append("curator")
                out.append(json.dumps({"reasoning": "r", "operations": [
                    {"type": "ADD", "section": "common_mistakes_to_avoid", "content": "check the carry digit"}]}))
            elif "answered correctly" in text:
                self.kinds.append("success")
                out.append(json.dumps({"reasoning": "ok", "bullet_tags": [{"id": self.bullet_id, "tag": "helpful"}]}))
            else:
                self.kinds.append("reflector")
                out.append(json.dumps({"reasoning": "why", "key_insight": "k", "bullet_tags": []}))
        return out


def _items(accs: list[float]) -> list[UpdateItem]:
    return [UpdateItem(example_id=f"ex-{i}", prompt=f"What is {i} * 7?", response=str(i * 7 if a else i),
                       feedback="" if a else f"The correct answer is {i * 7}.", acc=a) for i, a in enumerate(accs)]


def test_no_success_reflection_while_the_playbook_is_empty():
    updater = ContextUpdater(UpdaterConfig(concise_frequency=None))
    script = Script()
    _, metrics = updater.update(_items([1.0, 0.0, 1.0]), script)
    # one reflection for the failure, no success call (nothing to tag), one curation
    assert script.kinds == ["reflector", "curator"]
    assert metrics["playbook/size"] == 1.0


def test_success_reflection_tags_once_the_playbook_has_bullets():
    updater = ContextUpdater(UpdaterConfig(concise_frequency=None))
    updater.update(_items([0.0]), Script())  # the curator adds one bullet
    bullet = next(updater.playbook().bullets())
    script = Script(bullet_id=bullet.id)
    _, metrics = updater.update(_items([1.0, 1.0]), script)
    # two correct samples of different examples: one success reflection each, no failure, no curation
    assert script.kinds == ["success", "success"]
    assert metrics["tags/helpful"] == 2.0
    assert updater.playbook().get(bullet.id).helpful == 2


def test_all_correct_on_an_empty_playbook_makes_no_call():
    updater = ContextUpdater(UpdaterConfig(concise_frequency=None))
    script = Script()
    _, metrics = updater.update(_items([1.0, 1.0]), script)
    assert script.kinds == []
    assert metrics["reflection/count"] == 0.0
    assert updater.playbook().update_count == 1  # the update still counts


def test_compact_prompts_drive_the_same_update():
    """The compact set (``resd.context_prompts=compact``) plugs into the same update: its curator's
    operations-first JSON is applied and its reflection reaches the caller."""
    from resd.context.prompts import PROMPT_SETS

    compact = PROMPT_SETS["compact"]
    updater = ContextUpdater(UpdaterConfig(concise_frequency=None, reflector_template=compact.reflector,
                                           success_reflector_template=compact.success_reflector,
                                           curator_template=compact.curator))
    seen: list[str] = []

    def script(conversations):
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            seen.append(text)
            if "**Reflection:**" in text:
                assert "carry the tens" in text  # the reflection is what the curator reads
                out.append('{"operations": [{"type": "ADD", "section": "common_mistakes_to_avoid", '
                           '"content": "Carry the tens digit when a partial product exceeds 9."}], "reasoning": "new"}')
            else:
                assert "The correct answer is 0." in text  # item 0's feedback
                out.append('{"key_insight": "carry the tens", "error_identification": "dropped a carry", "bullet_tags": []}')
        return out

    reflections, metrics = updater.update(_items([0.0]), script)
    assert len(seen) == 2 and seen[0].startswith("A model answered the task below incorrectly")
    assert json.loads(reflections[0])["key_insight"] == "carry the tens"
    assert [b.content for b in updater.playbook().bullets()] == ["Carry the tens digit when a partial product exceeds 9."]
    assert metrics["parse/curator_failures"] == 0.0


def test_compact_is_selected_by_the_config(tiny_config):
    from resd.trainer import build_trainer

    cfg = tiny_config("algorithm=resd", "rollout.n=1", "train.batch_size=2", "stream.num_batches=1",
                      "resd.context_prompts=compact")
    trainer = build_trainer(cfg)
    assert trainer.algorithm.updater.config.curator_template.startswith("You keep a playbook of short lessons")
    assert trainer.algorithm.updater.config.reflector_template.startswith("A model answered the task below incorrectly")


def test_reflector_sees_the_whole_response_unless_a_cap_is_configured():
    """Issue 21, bug 7: the reference reflector reads the whole response; resd.reflector.max_response_chars
    (default null) middle-clips it when set."""
    from resd.config import load_config
    from resd.algorithms.resd import updater_config

    long = "x" * 4000 + "MIDDLE" + "y" * 4000
    item = UpdateItem(example_id="ex-0", prompt="p", response=long, feedback="wrong", acc=0.0)
    seen: list[str] = []

    def script(conversations):
        seen.extend(m[-1]["content"] for m in conversations)
        return Script()(conversations)

    ContextUpdater(updater_config(load_config())).update([item], script)
    assert long in seen[0], "the default configuration clips the response shown to the reflector"
    seen.clear()
    cfg = load_config(overrides=["resd.reflector.max_response_chars=100"])
    ContextUpdater(updater_config(cfg)).update([item], script)
    assert "MIDDLE" not in seen[0] and "x" * 50 + "\n...[truncated]...\n" + "y" * 50 in seen[0]
