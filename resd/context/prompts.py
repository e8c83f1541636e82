"""Reflector, success-reflector and curator prompt templates, in our own words.

Their structure follows horizon-llm/RESD's ``REFLECTOR_PROMPT``, ``SUCCESS_REFLECTOR_PROMPT`` and
``CURATOR_PROMPT`` (``selfevolve/resd/context_updater/prompts/ace_reflector.py``, ``ace_curator.py``).

Filled with ``str.format``; literal JSON braces are doubled. Placeholders:

- ``REFLECTOR``: prompt, response (thinking removed), feedback, teacher_feedback, playbook;
- ``SUCCESS_REFLECTOR``: prompt, response, playbook;
- ``CURATOR``: playbook_stats (``json.dumps(stats, indent=2)``), recent_reflection (thinking
  removed), current_playbook, prompt.

The ``*_COMPACT`` set (``resd.context_prompts=compact``) asks for the same JSON keys, the used ones
first and one sentence each, for small policies with short output budgets.
"""

from __future__ import annotations

import dataclasses

REFLECTOR = """\
You are an expert analyst and teacher. A model tried the task below and failed. Use the \
environment feedback to find out why its reasoning went wrong and what it should have done.

Instructions:
- Find where the reasoning broke down, using the environment feedback and the teacher feedback.
- Name the concrete mistakes: wrong concepts, calculation errors, misused strategies.
- Go to the root cause and give advice the model can act on next time.
- Tag every playbook bullet the model relied on as "helpful", "harmful" or "neutral", using its \
exact id.

**Model's Prompt:**
{prompt}

**Model's Response:**
{response}

**Environment Feedback:**
{feedback}

**Teacher Feedback:**
{teacher_feedback}

**Playbook used by the model:**
{playbook}

Answer in this exact JSON format:
{{
  "reasoning": "<your step-by-step analysis>",
  "error_identification": "<what exactly went wrong>",
  "root_cause_analysis": "<why it went wrong>",
  "correct_approach": "<what the model should have done>",
  "key_insight": "<the lesson to remember for similar tasks>",
  "bullet_tags": [
    {{"id": "calc-00000", "tag": "helpful"}},
    {{"id": "err-00000", "tag": "harmful"}}
  ]
}}

---
"""

SUCCESS_REFLECTOR = """\
You are an expert analyst. The model below answered correctly, so do not look for errors. \
Judge each playbook bullet against the correct answer:
- "helpful": the reasoning agrees with the bullet or benefited from it;
- "harmful": the bullet could have misled the model;
- "neutral": the bullet does not matter for this problem.

**Model's Prompt:**
{prompt}

**Model's Response:**
{response}

**Playbook:**
{playbook}

Answer in this exact JSON format:
{{
  "reasoning": "<which bullets mattered and why>",
  "bullet_tags": [
    {{"id": "calc-00000", "tag": "helpful"}},
    {{"id": "err-00000", "tag": "neutral"}}
  ]
}}

---
"""

CURATOR = """\
You are the curator of a playbook of lessons. Read the reflection on a failed attempt and decide \
which new lessons to add to the playbook.

The playbook will be used later on similar questions, WITHOUT the feedback the reflection relied \
on. Only add lessons that help reach the correct answer on their own.

Rules:
- Reply with valid JSON only: no markdown, no code fences.
- Add only insights the playbook is missing. Do not repeat existing bullets and never rewrite the \
whole playbook.
- Prefer a few short, actionable lessons over many vague ones.
- If there is nothing new worth adding, return an empty "operations" list.

Operations:
- ADD a new bullet: {{"type": "ADD", "section": "<section>", "content": "<lesson>"}}. Write only \
the lesson, without an id or counts.
- UPDATE a bullet's text: {{"type": "UPDATE", "id": "<bullet id>", "content": "<new text>"}}
- DELETE a wrong bullet: {{"type": "DELETE", "id": "<bullet id>"}}
- MERGE duplicate bullets into the first id: {{"type": "MERGE", "ids": ["<id>", "<id>"], \
"content": "<merged text>"}}

Sections: strategies_and_insights, formulas_and_calculations, code_snippets_and_templates, \
common_mistakes_to_avoid, problem_solving_heuristics, context_clues_and_indicators, others.

**Current Playbook Stats:**
{playbook_stats}

**Recent Reflection:**
{recent_reflection}

**Current Playbook:**
{current_playbook}

**Model's Prompt:**
{prompt}

Answer in this exact JSON format:
{{
  "reasoning": "<why these changes help>",
  "operations": [
    {{"type": "ADD", "section": "common_mistakes_to_avoid", "content": "<the lesson itself, one sentence>"}}
  ]
}}
"""

# The compact set: for small policies (0.5B-1.5B) and short output budgets. The default set asks for
# five free-text fields before the bullet tags and for the curator's reasoning before its operations;
# a 0.5B model fills 64 tokens with the first field, so the JSON never closes and every curation is
# dropped (BENCHMARKS.md, "Reflector and curator prompts for a small policy"). Here the part that is
# used comes first and everything is one sentence long.
REFLECTOR_COMPACT = """\
A model answered the task below incorrectly. Read the environment feedback and write, in one \
sentence each, the mistake and a general lesson that avoids it on similar tasks (not this task's \
answer). Tag the playbook bullets the model relied on by their exact ids (helpful, harmful or \
neutral); with no bullets, leave the list empty.

**Task:**
{prompt}

**Model's answer:**
{response}

**Environment feedback:**
{feedback}

**Playbook:**
{playbook}

Reply with this JSON only, short:
{{"key_insight": "<general lesson>", "error_identification": "<the mistake>", "bullet_tags": []}}
"""

SUCCESS_REFLECTOR_COMPACT = """\
A model answered the task below correctly. Tag each playbook bullet by its exact id: "helpful" if \
the answer followed it, "harmful" if it could mislead, "neutral" if it does not apply.

**Task:**
{prompt}

**Model's answer:**
{response}

**Playbook:**
{playbook}

Reply with this JSON only, bullet tags first:
{{"bullet_tags": [{{"id": "calc-00000", "tag": "helpful"}}], "reasoning": "<a few words>"}}
"""

CURATOR_COMPACT = """\
You keep a playbook of short lessons for tasks like the one below. It will be read later WITHOUT \
any feedback. From the reflection on a failed attempt, add at most one general lesson the playbook \
does not have yet; add nothing if it would only restate this task's answer or an existing bullet.

**Task:**
{prompt}

**Reflection:**
{recent_reflection}

**Playbook:**
{current_playbook}

Sections: strategies_and_insights, formulas_and_calculations, common_mistakes_to_avoid, \
problem_solving_heuristics, others.

Reply with this JSON only, operations first ("operations": [] when there is nothing to add):
{{"operations": [{{"type": "ADD", "section": "common_mistakes_to_avoid", "content": "<one-sentence lesson>"}}], \
"reasoning": "<a few words>"}}
"""


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """The three context-update templates used together (``resd.context_prompts``)."""

    reflector: str
    success_reflector: str
    curator: str


PROMPT_SETS: dict[str, PromptSet] = {
    "default": PromptSet(REFLECTOR, SUCCESS_REFLECTOR, CURATOR),
    "compact": PromptSet(REFLECTOR_COMPACT, SUCCESS_REFLECTOR_COMPACT, CURATOR_COMPACT),
}

#: the placeholders each template must be formatted with; the compact templates use a subset of
#: them (``str.format`` ignores the values a template does not name)
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "REFLECTOR": frozenset({"prompt", "response", "feedback", "teacher_feedback", "playbook"}),
    "SUCCESS_REFLECTOR": frozenset({"prompt", "response", "playbook"}),
    "CURATOR": frozenset({"playbook_stats", "recent_reflection", "current_playbook", "prompt"}),
    "REFLECTOR_COMPACT": frozenset({"prompt", "response", "feedback", "playbook"}),
    "SUCCESS_REFLECTOR_COMPACT": frozenset({"prompt", "response", "playbook"}),
    "CURATOR_COMPACT": frozenset({"recent_reflection", "current_playbook", "prompt"}),
}
