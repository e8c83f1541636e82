"""SDPO teacher-context construction, case by case against the SDPO reference implementation (lasgroup/SDPO)."""

from __future__ import annotations

import pytest

from resd.context.reprompt import RepromptConfig, build_teacher_contexts, remove_thinking
from resd.models import chat_prompt_ids

SYSTEM = {"role": "system", "content": "Be brief."}


def _prompt(text="Q?"):
    return [SYSTEM, {"role": "user", "content": text}]


def _build(responses, scores, feedbacks=None, groups=None, **cfg):
    n = len(responses)
    return build_teacher_contexts(
        [_prompt()] * n, responses, scores, feedbacks or [None] * n, groups or [0] * n, RepromptConfig(**cfg)
    )


def test_demonstration_is_first_successful_sibling_excluding_self():
    ctx, m = _build(["wrong", "right A", "right B"], [0.0, 1.0, 1.0])
    assert ctx[0].solution == "right A"  # first success in batch order
    assert ctx[1].solution == "right B"  # its own response is excluded
    assert ctx[2].solution == "right A"
    user = ctx[0].messages[-1]["content"]
    assert user == "Q?\nCorrect solution:\n\nright A\n\nCorrectly solve the original question."
    assert ctx[0].messages[0] == SYSTEM  # system messages are kept
    assert all(c.sd_mask for c in ctx)
    assert m["self_distillation/reprompt_sample_fraction"] == 1.0
    assert m["self_distillation/success_sample_fraction"] == 1.0  # all three are given a demonstration


def test_success_sample_fraction_counts_samples_given_a_demonstration():
    """Issue 21, bug 6: SDPO's and TRL's success_sample_fraction is (samples with a demonstration) / batch."""
    _, m = _build(["right", "wrong", "wrong"], [1.0, 0.0, 0.0])
    # the lone success has no other successful sibling; the two failures are shown it
    assert m["self_distillation/success_sample_fraction"] == pytest.approx(2 / 3)
    _, m = _build(["right", "wrong", "wrong", "x"], [1.0, 0.0, 0.0, 0.0], groups=["a", "a", "a", "b"])
    assert m["self_distillation/success_sample_fraction"] == pytest.approx(2 / 4)


def test_self_success_allowed_when_configured():
    ctx, _ = _build(["right", "wrong"], [1.0, 0.0], dont_reprompt_on_self_success=False)
    assert ctx[0].solution == "right"


def test_lone_success_gets_no_signal_without_feedback():
    ctx, m = _build(["right", "wrong"], [1.0, 0.0])
    assert ctx[0].solution is None and not ctx[0].sd_mask
    assert ctx[0].messages[-1]["content"] == "Q?"  # the plain prompt
    assert ctx[1].solution == "right" and ctx[1].sd_mask
    assert m["self_distillation/reprompt_sample_fraction"] == 0.5


def test_groups_do_not_share_demonstrations():
    ctx, m = _build(["right", "wrong"], [1.0, 0.0], groups=["a", "b"], dont_reprompt_on_self_success=False)
    assert ctx[1].solution is None
    assert m["self_distillation/success_group_fraction"] == 0.5


def test_threshold_is_inclusive():
    ctx, _ = _build(["half", "x"], [0.5, 0.0], success_reward_threshold=0.5)
    assert ctx[1].solution == "half"
    ctx, _ = _build(["half", "x"], [0.49, 0.0], success_reward_threshold=0.5)
    assert ctx[1].solution is None


def test_feedback_only_without_solution():
    fb = ["fb0", "fb1"]
    ctx, m = _build(["wrong", "wrong"], [0.0, 0.0], feedbacks=fb)
    text = ctx[0].messages[-1]["content"]
    assert text == (
        "Q?\nThe following is feedback from your unsuccessful earlier attempt:\n\nfb0"
        "\n\nCorrectly solve the original question."
    )
    assert ctx[0].feedback_used and ctx[0].sd_mask and ctx[0].solution is None
    assert m["self_distillation/feedback_used_fraction"] == 1.0


def test_feedback_dropped_when_a_solution_exists():
    ctx, m = _build(["wrong", "right", "right2"], [0.0, 1.0, 1.0], feedbacks=["fb", None, ""])
    assert not ctx[0].feedback_used and ctx[0].solution == "right"
    assert "feedback" not in ctx[0].messages[-1]["content"]
    assert m["self_distillation/feedback_available_fraction"] == pytest.approx(1 / 3)  # "" and None are no feedback
    assert m["self_distillation/feedback_used_fraction"] == 0.0


def test_feedback_and_solution_together_when_allowed():
    ctx, _ = _build(["wrong", "right"], [0.0, 1.0], feedbacks=["fb", None], environment_feedback_only_without_solution=False)
    assert ctx[0].messages[-1]["content"] == (
        "Q?\nCorrect solution:\n\nright\nThe following is feedback from your unsuccessful earlier attempt:\n\nfb"
        "\n\nCorrectly solve the original question."
    )


def test_whitespace_feedback_and_disabled_feedback():
    ctx, _ = _build(["w"], [0.0], feedbacks=["  \n"])
    assert not ctx[0].sd_mask
    ctx, _ = _build(["w"], [0.0], feedbacks=["real"], include_environment_feedback=False)
    assert not ctx[0].sd_mask


def test_think_stripping():
    assert remove_thinking("<think>a\nb</think>\n  answer") == "answer"
    assert remove_thinking("x<think>1</think> y<think>2</think>z") == "xyz"
    ctx, _ = _build(["w", "<think>secret</think>\nshown"], [0.0, 1.0])
    assert "secret" not in ctx[0].messages[-1]["content"] and "shown" in ctx[0].messages[-1]["content"]
    ctx, _ = _build(["w", "<think>secret</think>\nshown"], [0.0, 1.0], remove_thinking_from_demonstration=False)
    assert "<think>secret</think>" in ctx[0].messages[-1]["content"]


def test_custom_templates():
    ctx, _ = _build(["w", "r"], [0.0, 1.0], reprompt_template="[{prompt}|{solution}|{feedback}]", solution_template="S={successful_previous_attempt}")
    assert ctx[0].messages[-1]["content"] == "[Q?|S=r|]"


def test_truncation_sides(tokenizer):
    messages = [{"role": "user", "content": "word " * 200}]
    full, cut = chat_prompt_ids(tokenizer, messages)
    assert not cut and len(full) > 50
    right, cut = chat_prompt_ids(tokenizer, messages, max_length=50, truncation="right")
    assert cut and right == full[:50]  # the end, including the assistant header, is lost
    left, cut = chat_prompt_ids(tokenizer, messages, max_length=50, truncation="left")
    assert cut and left == full[-50:]
    assert tokenizer.decode(left).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="exceeds"):
        chat_prompt_ids(tokenizer, messages, max_length=50, truncation="error")
    with pytest.raises(ValueError):
        chat_prompt_ids(tokenizer, messages, truncation="middle")


def test_chat_template_applied_with_system_message(tokenizer):
    ctx, _ = _build(["w", "r"], [0.0, 1.0])
    ids, _ = chat_prompt_ids(tokenizer, ctx[0].messages)
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "Correct solution:\n\nr" in text and text.endswith("<|im_start|>assistant\n")


def test_self_success_setting_changes_nothing_when_no_sample_succeeds():
    # SDPO and SDPO+ss differ only in whether a success may be its own demonstration, so without a
    # success their teacher contexts are the same (the efficacy benchmark's Manufactoria runs: the two
    # arms trained identically, update for update)
    args = (["wrong a", "wrong b", "right"], [0.0, 0.2, 1.0], ["fb a", "fb b", None])
    for responses, scores, feedbacks in (args, (args[0][:2], args[1][:2], args[2][:2])):
        sdpo, m_sdpo = _build(responses, scores, feedbacks, dont_reprompt_on_self_success=True)
        ss, m_ss = _build(responses, scores, feedbacks, dont_reprompt_on_self_success=False)
        same = [a.messages == b.messages and a.sd_mask == b.sd_mask for a, b in zip(sdpo, ss, strict=True)]
        if max(scores) < 1.0:
            assert all(same) and m_sdpo == m_ss
        else:  # the lone success: no signal for SDPO, its own answer as demonstration for SDPO+ss
            assert same == [True, True, False] and ss[2].solution == "right" and not sdpo[2].sd_mask
