"""Reflector, success-reflector and curator prompt templates (RESD.md 3.1-3.3), in our own words.

Filled with ``str.format``; literal JSON braces are doubled. Placeholders:

- ``REFLECTOR``: prompt, response (thinking removed), feedback, teacher_feedback, playbook;
- ``SUCCESS_REFLECTOR``: prompt, response, playbook;
- ``CURATOR``: playbook_stats (``json.dumps(stats, indent=2)``), recent_reflection (thinking
  removed), current_playbook, prompt.

They are kept short and explicit so that a small (0.5B) policy can follow them.
"""

from __future__ import annotations

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

#: the placeholders each template must be formatted with
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "REFLECTOR": frozenset({"prompt", "response", "feedback", "teacher_feedback", "playbook"}),
    "SUCCESS_REFLECTOR": frozenset({"prompt", "response", "playbook"}),
    "CURATOR": frozenset({"playbook_stats", "recent_reflection", "current_playbook", "prompt"}),
}
