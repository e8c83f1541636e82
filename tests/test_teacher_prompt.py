"""RESD's teacher prompt and success-rate rebalancing (arXiv 2605.12741, App. B)."""

from __future__ import annotations

import pytest
import torch

from resd.context.teacher_prompt import TeacherPromptConfig, build_teacher_prompt, load_template
from resd.losses import success_rate_weights

TEMPLATE = load_template()


def _fill(**kw):
    args = dict(prompt="P", previous_trial="<think>t</think>my try", feedback="wrong: 3", reflection="<think>x</think>I erred",
                solution=None, playbook="## OTHERS\n[misc-00001] helpful=0 harmful=0 :: be careful",
                task_description="solving puzzles", final_instruction="Correctly answer now:")
    args.update(kw)
    return build_teacher_prompt(TEMPLATE, **args)


def test_sections_in_order_with_their_contents():
    parts = _fill()
    t = parts.text
    order = ["----- PROMPT -----", "----- PLAYBOOK -----", "----- PREVIOUS TRIAL -----", "----- ENVIRONMENT FEEDBACK -----",
             "----- REFLECTION -----", "----- SUCCESSFUL TRIAL -----"]
    positions = [t.index(h) for h in order]
    assert positions == sorted(positions)
    assert "<prompt>P</prompt>" in t
    assert "<previous_trial>my try</previous_trial>" in t  # thinking stripped
    assert "\n### The following is feedback from your earlier attempt:\n<feedback>wrong: 3</feedback>" in t
    assert "<reflection>I erred</reflection>" in t
    assert "<successful_trial></successful_trial>" in t
    assert "[misc-00001]" in t and t.startswith("You are an expert at solving puzzles.")
    assert t.endswith("Correctly answer now:")
    assert "If a successful attempt is given, use it as a reference" in t  # upstream's truncated instruction completed, see docs/deviations.md
    assert parts.sd_mask and parts.feedback_used and parts.reflection_used and not parts.solution_used


def test_feedback_dropped_when_a_solution_exists_unless_configured():
    parts = _fill(solution="<think>s</think>the answer")
    assert "<feedback>" not in parts.text and not parts.feedback_used
    assert "<successful_trial>\nCorrect solution:\n\nthe answer</successful_trial>" in parts.text
    parts = _fill(solution="ans", config=TeacherPromptConfig(feedback_only_without_solution=False))
    assert "<feedback>wrong: 3</feedback>" in parts.text and parts.feedback_used


def test_mask_rules():
    assert not _fill(feedback="", reflection="", solution=None).sd_mask
    assert _fill(feedback="", reflection="", solution="s").sd_mask
    assert _fill(feedback="  ", reflection="r", solution=None).sd_mask
    assert not _fill(feedback="  ", reflection="<think>only thinking</think>", solution=None).sd_mask


def test_sections_can_be_switched_off():
    cfg = TeacherPromptConfig(use_playbook=False, use_previous_trial=False, use_feedback=False, use_reflection=False,
                              use_solution=False)
    parts = _fill(solution="s", config=cfg)
    assert "<playbook></playbook>" in parts.text and "<previous_trial></previous_trial>" in parts.text
    assert not parts.sd_mask


def test_long_sections_are_capped():
    parts = _fill(previous_trial="x" * 50_000, config=TeacherPromptConfig(max_section_chars=1000))
    assert len(parts.text) < 5000 and "[truncated]" in parts.text


def test_user_template_and_unknown_placeholder(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("{prompt}|{solution}|{final_instruction}\n")
    assert load_template(path) == "{prompt}|{solution}|{final_instruction}"
    path.write_text("{prompt} {nonsense}")
    with pytest.raises(ValueError, match="nonsense"):
        load_template(path)


def test_success_rate_weights_by_hand():
    w = success_rate_weights([True, False, False, False])  # s = 0.25
    raw = torch.tensor([0.75, 0.25, 0.25, 0.25])
    torch.testing.assert_close(w, raw / raw.mean())
    assert w.mean().item() == pytest.approx(1.0)
    w = success_rate_weights([False] * 4)  # s clipped to 1/4: failures 0.25 each -> ones
    torch.testing.assert_close(w, torch.ones(4))
    w = success_rate_weights([True] * 4)  # s clipped to 3/4: successes (1 - 3/4) -> ones
    torch.testing.assert_close(w, torch.ones(4))
    w = success_rate_weights([True, False], alpha=2.0, beta=1.0)  # s = 0.5: 0.25 and 0.5
    torch.testing.assert_close(w, torch.tensor([0.25, 0.5]) / 0.375)


def test_builtin_templates_differ_only_in_the_answer_style_bullet():
    from resd.context.teacher_prompt import load_template

    default, direct = load_template(), load_template("direct")
    assert load_template("default") == default
    changed = [(a, b) for a, b in zip(default.splitlines(), direct.splitlines(), strict=True) if a != b]
    assert len(changed) == 1
    assert "step by step" in changed[0][0] and "form of the answer" in changed[0][1]
