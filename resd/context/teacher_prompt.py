"""RESD's teacher prompt: the task plus playbook, previous trial, feedback, reflection and solution.

Follows the "v4" layout of RESD's teacher templates and the way its trainer fills them
(horizon-llm/RESD, ``selfevolve/resd/context_updater/prompts/*_generator_v4.txt`` and
``_maybe_build_self_distillation_batch`` in ``selfevolve/resd/trainer/ppo/stream_trainer.py``) with
our own wording and the truncated instruction of the release completed (see ``docs/deviations.md``).
The wording lives in a template file (``resd/templates/teacher.txt``) that a user can replace with
``resd.teacher_template=PATH``; the task noun and the final line come from the environment
(``task_description``, ``final_instruction``).
"""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

from resd.context.parsing import strip_thinking

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
PLACEHOLDERS = {"task_description", "prompt", "playbook", "previous_trial", "feedback", "reflection", "solution",
                "final_instruction"}
SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}"
FEEDBACK_TEMPLATE = "\n### The following is feedback from your earlier attempt:\n<feedback>{feedback_raw}</feedback>"


@dataclasses.dataclass(frozen=True)
class TeacherPromptConfig:
    """Which sections the RESD teacher sees (upstream's ``use_*_in_teacher_prompt`` switches)."""

    use_playbook: bool = True
    use_previous_trial: bool = True
    use_feedback: bool = True
    use_reflection: bool = True
    use_solution: bool = True
    feedback_only_without_solution: bool = True
    remove_thinking_from_solution: bool = True
    max_section_chars: int | None = 8000


#: built-in teacher templates: ``default`` follows RESD's v4 template (its bullets ask the teacher to
#: reason step by step); ``direct`` asks for an answer in the form the task wants instead. With a small
#: policy and a short output budget the default's bullet taught the student long prose that the budget
#: cut off, on arithmetic and on Manufactoria (BENCHMARKS.md, "Teacher context signal", "Manufactoria").
BUILTIN_TEMPLATES = {"default": "teacher.txt", "direct": "teacher_direct.txt"}


def load_template(path: str | Path | None = None) -> str:
    """Read a teacher template (a built-in name or a path) and check that it uses only the known placeholders."""
    if path in BUILTIN_TEMPLATES or path is None:
        path = TEMPLATE_DIR / BUILTIN_TEMPLATES[path or "default"]
    text = Path(path).read_text(encoding="utf-8")
    fields = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise ValueError(f"teacher template {path or 'teacher.txt'} has unknown placeholders: {sorted(unknown)}")
    return text.rstrip("\n")


def clip_middle(text: str, limit: int | None) -> str:
    """Keep the first and last ``limit / 2`` characters of an over-long text, marking the cut."""
    if limit is None or len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n...[truncated]...\n" + text[-half:]


@dataclasses.dataclass
class TeacherPromptParts:
    text: str
    solution_used: bool
    feedback_used: bool
    reflection_used: bool

    @property
    def sd_mask(self) -> bool:
        """As in horizon-llm/RESD: a target exists if there is a solution, used feedback or a reflection."""
        return self.solution_used or self.feedback_used or self.reflection_used


def build_teacher_prompt(
    template: str,
    *,
    prompt: str,
    previous_trial: str,
    feedback: str | None,
    reflection: str,
    solution: str | None,
    playbook: str,
    task_description: str,
    final_instruction: str,
    config: TeacherPromptConfig = TeacherPromptConfig(),
) -> TeacherPromptParts:
    """Fill the teacher template for one sample (as RESD's ``_maybe_build_self_distillation_batch``)."""
    limit = config.max_section_chars
    solution = solution if config.use_solution else None
    if solution is not None and config.remove_thinking_from_solution:
        solution = strip_thinking(solution)
    feedback_used = (
        config.use_feedback and bool(feedback and feedback.strip())
        and (solution is None or not config.feedback_only_without_solution)
    )
    reflection = strip_thinking(reflection).strip() if config.use_reflection and reflection else ""
    text = template.format(
        task_description=task_description,
        prompt=prompt,
        playbook=playbook if config.use_playbook else "",
        previous_trial=clip_middle(strip_thinking(previous_trial), limit) if config.use_previous_trial else "",
        feedback=FEEDBACK_TEMPLATE.format(feedback_raw=clip_middle(feedback or "", limit)) if feedback_used else "",
        reflection=clip_middle(reflection, limit),
        solution=SOLUTION_TEMPLATE.format(successful_previous_attempt=clip_middle(solution, limit)) if solution is not None else "",
        final_instruction=final_instruction,
    )
    return TeacherPromptParts(text, solution is not None, feedback_used, bool(reflection))
