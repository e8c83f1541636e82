"""Robust parsing of reflector and curator outputs (model text -> JSON -> validated records).

Nothing in this module raises on model output: every entry point accepts any object and returns a
result whose ``ok`` flag says whether parsing succeeded, with the reason in ``error``.

JSON is looked for in this order (that of ``extract_json_from_text`` in horizon-llm/RESD's
``selfevolve/resd/context_updater/playbook_utils.py``): the whole text; the first fenced block
(```json or plain ```) that parses to an object, among the first 256 blocks; the first balanced
``{...}`` object that parses, among the first 256 by start within the first 64 KiB. Every scan is
linear in the text, whatever it holds (model output is hostile input).
Bullet tags have one more fallback, a regex for ``"id": "<slug>-NNNNN", "tag": "<word>"`` in either
key order, which accepts any slug length (the release's regex required 3+ letters, an upstream bug;
see ``docs/deviations.md``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

from resd.textscan import search_end

#: the reflector/curator response is skipped when it starts with this marker
EMPTY_RESPONSE_MARKER = "INCORRECT_DUE_TO_EMPTY_RESPONSE"

#: the fields a reflector is asked for besides ``bullet_tags``
REFLECTION_FIELDS = ("reasoning", "error_identification", "root_cause_analysis", "correct_approach", "key_insight")

#: the required keys of each curator operation type (besides ``type``)
OPERATION_KEYS: dict[str, dict[str, type]] = {
    "ADD": {"section": str, "content": str},
    "UPDATE": {"id": str, "content": str},
    "DELETE": {"id": str},
    "MERGE": {"ids": list},
}

# at most this many fenced blocks and this many balanced candidates are handed to json.loads, and
# balanced candidates are looked for in the first _MAX_BRACE_SCAN characters only (the brace scan is
# a Python loop over structural characters: about 15 ms per 64 KB of "{"); reflector and curator
# outputs are bounded by their token budget, far below that
_MAX_BRACE_CANDIDATES = 256
_MAX_BRACE_SCAN = 1 << 16
# what json.loads needs after the "{" of an object: JSON whitespace, then a key or "}"
_OBJECT_START = re.compile(r'\{[ \t\n\r]*["}]')

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n?(.*?)```", re.DOTALL)
_BRACE_TOKENS = re.compile(r'[{}"\\]')
_TAG_FALLBACK = re.compile(
    r'"id"\s*:\s*"(?P<id1>[a-z]+-\d{5,})"\s*,\s*"tag"\s*:\s*"(?P<tag1>\w+)"'
    r'|"tag"\s*:\s*"(?P<tag2>\w+)"\s*,\s*"id"\s*:\s*"(?P<id2>[a-z]+-\d{5,})"'
)


def strip_thinking(text: Any) -> str:
    """Remove the model's thinking: every ``<think>...</think>`` block, then anything up to a
    remaining ``</think>`` (thinking opened by the chat template), then an unclosed ``<think>``
    and everything after it (thinking cut off by the length limit). Non-str input gives ""."""
    if not isinstance(text, str):
        return ""
    cut = search_end(text, "</think>")  # linear: no block ends after the last </think>
    text = _THINK_BLOCK.sub("", text[:cut]) + text[cut:]
    end = text.find("</think>")
    if end >= 0:
        text = text[end + len("</think>"):]
    start = text.find("<think>")
    if start >= 0:
        text = text[:start]
    return text.strip()


def _loads_object(candidate: str) -> dict[str, Any] | None:
    """``json.loads`` that returns only dicts and never raises (deep nesting included)."""
    try:
        value = json.loads(candidate)
    except Exception:  # ValueError, RecursionError, MemoryError on hostile input
        return None
    return value if isinstance(value, dict) else None


def balanced_objects(text: str) -> list[tuple[int, int]]:
    """Spans ``(start, end_exclusive)`` of the balanced ``{...}`` groups of ``text``, by start.

    One string-aware pass: quotes only open strings inside braces (prose quotes outside an object
    are ignored), and backslash escapes inside strings are honoured.
    """
    spans: list[tuple[int, int]] = []
    stack: list[int] = []
    in_string = False
    skip_before = -1  # a match starting before this index is an escaped character
    for match in _BRACE_TOKENS.finditer(text):
        i = match.start()
        if i < skip_before:
            continue
        char = match.group()
        if in_string:
            if char == "\\":
                skip_before = i + 2
            elif char == '"':
                in_string = False
            continue
        if char == "{":
            stack.append(i)
        elif char == "}":
            if stack:
                spans.append((stack.pop(), i + 1))
        elif char == '"' and stack:
            in_string = True
    spans.sort()
    return spans


def _fenced_blocks(text: str) -> Iterator[str]:
    """The contents of the first fenced blocks (at most ``_MAX_BRACE_CANDIDATES``), in order."""
    matches = _FENCE.finditer(text, 0, search_end(text, "```"))
    return (match.group(2) for match in itertools.islice(matches, _MAX_BRACE_CANDIDATES))


def extract_json_object(text: Any) -> tuple[dict[str, Any] | None, str]:
    """The first JSON object found in ``text`` and where it came from.

    Returns ``(obj, source)`` with source one of "whole", "fence", "braces", or ``(None, "none")``.
    """
    if not isinstance(text, str):
        return None, "none"
    obj = _loads_object(text.strip())
    if obj is not None:
        return obj, "whole"
    for block in _fenced_blocks(text):
        obj = _loads_object(block.strip())
        if obj is not None:
            return obj, "fence"
    for start, end in balanced_objects(text[:_MAX_BRACE_SCAN])[:_MAX_BRACE_CANDIDATES]:
        # json.loads fails at once unless "{" is followed by a key or "}"; skip the copy then
        obj = _loads_object(text[start:end]) if _OBJECT_START.match(text, start) else None
        if obj is not None:
            return obj, "braces"
    return None, "none"


def regex_bullet_tags(text: Any) -> list[tuple[str, str]]:
    """Fallback: ``(id, tag)`` pairs found by regex, in order of appearance."""
    if not isinstance(text, str):
        return []
    pairs = []
    for m in _TAG_FALLBACK.finditer(text):
        if m.group("id1") is not None:
            pairs.append((m.group("id1"), m.group("tag1").lower()))
        else:
            pairs.append((m.group("id2"), m.group("tag2").lower()))
    return pairs


def tags_from_list(items: Any) -> tuple[list[tuple[str, str]], int]:
    """Convert a JSON ``bullet_tags`` list to ``(id, tag)`` pairs; returns (pairs, n_malformed).

    An entry is kept when it is a dict with string ``id`` and ``tag``; the tag is lower-cased and
    stripped, and whether it is a known tag is decided when the tags are applied.
    """
    if not isinstance(items, list):
        return [], 0
    pairs: list[tuple[str, str]] = []
    malformed = 0
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("tag"), str):
            pairs.append((item["id"].strip(), item["tag"].strip().lower()))
        else:
            malformed += 1
    return pairs, malformed


@dataclasses.dataclass
class ReflectionParse:
    """A parsed reflector (or success-reflector) output.

    Attributes:
        ok: True when a JSON object or, failing that, regex tags were found.
        text: the reflection with thinking removed (what the teacher prompt and curator read).
        fields: the string fields among :data:`REFLECTION_FIELDS` present in the JSON.
        bullet_tags: ``(id, tag)`` pairs in the order given.
        source: "whole" / "fence" / "braces" (JSON), "regex" (fallback), or "none".
        malformed_tags: ``bullet_tags`` entries that were not ``{"id": str, "tag": str}``.
        error: why parsing failed ("" when ok).
    """

    ok: bool
    text: str = ""
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    bullet_tags: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    source: str = "none"
    malformed_tags: int = 0
    error: str = ""


def parse_reflection(response: Any) -> ReflectionParse:
    """Parse a reflector output into its fields and bullet tags; never raises."""
    if not isinstance(response, str):
        return ReflectionParse(ok=False, error=f"response is {type(response).__name__}, not str")
    text = strip_thinking(response)
    if text.startswith(EMPTY_RESPONSE_MARKER) or response.lstrip().startswith(EMPTY_RESPONSE_MARKER):
        return ReflectionParse(ok=False, text=text, error="empty-response marker")
    obj, source = extract_json_object(text)
    if obj is not None and isinstance(obj.get("bullet_tags"), list):
        pairs, malformed = tags_from_list(obj["bullet_tags"])
        fields = {k: obj[k] for k in REFLECTION_FIELDS if isinstance(obj.get(k), str)}
        return ReflectionParse(ok=True, text=text, fields=fields, bullet_tags=pairs, source=source,
                               malformed_tags=malformed)
    pairs = regex_bullet_tags(text)
    if pairs:
        return ReflectionParse(ok=True, text=text, bullet_tags=pairs, source="regex")
    if obj is not None:
        fields = {k: obj[k] for k in REFLECTION_FIELDS if isinstance(obj.get(k), str)}
        return ReflectionParse(ok=True, text=text, fields=fields, source=source)
    return ReflectionParse(ok=False, text=text, error="no JSON object and no bullet tags found")


@dataclasses.dataclass
class CuratorParse:
    """A parsed curator output.

    Attributes:
        ok: True when the JSON passed validation; otherwise ``operations`` is empty.
        reasoning: the curator's ``reasoning`` string.
        operations: validated ops, each a dict whose ``type`` is upper-cased.
        source: where the JSON came from (see :func:`extract_json_object`).
        error: why the sample's operations were all skipped ("" when ok).
        n_rejected: how many operations were dropped with the sample (0 when ok; for metrics).
    """

    ok: bool
    reasoning: str = ""
    operations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    source: str = "none"
    error: str = ""
    n_rejected: int = 0


def validate_operation(op: Any) -> str:
    """Why ``op`` is not a well-formed curator operation, or "" if it is.

    Types other than ADD/UPDATE/DELETE/MERGE pass (they are skipped when applied), as upstream.
    """
    if not isinstance(op, dict):
        return f"operation is {type(op).__name__}, not an object"
    op_type = op.get("type")
    if not isinstance(op_type, str) or not op_type.strip():
        return "operation without a string 'type'"
    for key, kind in OPERATION_KEYS.get(op_type.strip().upper(), {}).items():
        if not isinstance(op.get(key), kind):
            return f"{op_type.strip().upper()} operation needs '{key}' ({kind.__name__})"
    if op_type.strip().upper() == "MERGE" and not all(isinstance(i, str) for i in op["ids"]):
        return "MERGE operation needs a list of string ids"
    return ""


def parse_curator(response: Any) -> CuratorParse:
    """Parse and validate a curator output; any failure skips all of its operations. Never raises."""
    if not isinstance(response, str):
        return CuratorParse(ok=False, error=f"response is {type(response).__name__}, not str")
    text = strip_thinking(response)
    if text.startswith(EMPTY_RESPONSE_MARKER) or response.lstrip().startswith(EMPTY_RESPONSE_MARKER):
        return CuratorParse(ok=False, error="empty-response marker")
    obj, source = extract_json_object(text)
    if obj is None:
        return CuratorParse(ok=False, error="no JSON object found")
    ops = obj.get("operations")
    n_ops = len(ops) if isinstance(ops, list) else 0
    if not isinstance(obj.get("reasoning"), str):
        return CuratorParse(ok=False, source=source, error="'reasoning' is missing or not a string", n_rejected=n_ops)
    if not isinstance(ops, list):
        return CuratorParse(ok=False, source=source, error="'operations' is missing or not a list")
    for index, op in enumerate(ops):
        problem = validate_operation(op)
        if problem:
            return CuratorParse(ok=False, source=source, error=f"operation {index}: {problem}", n_rejected=n_ops)
    normalized = [{**op, "type": op["type"].strip().upper()} for op in ops]
    return CuratorParse(ok=True, reasoning=obj["reasoning"], operations=normalized, source=source)
