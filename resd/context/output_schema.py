"""JSON schemas of the reflector's and the curator's answers, built per call, with a size bound.

Each schema holds exactly the keys the parsers of :mod:`resd.context.parsing` read, in the order
the prompt template asks for them; bullet ids are an enum of the playbook's real ids, tags and
operation types come from their allowed sets, strings and lists have maximum lengths. Strings are
restricted to printable ASCII without ``"`` and ``\\`` (no escapes), so that one character is one
byte, and a generator that emits at least one byte per token (every grammar-constrained backend
with compact separators) closes the JSON within :func:`max_json_bytes` tokens: that bound, plus
one for the stop token, is the token budget of a constrained call (:func:`token_budget`).

String lengths are sized from a character budget: the longest text each string may hold is the
largest that keeps the whole answer within the budget (:func:`fit_text_chars`). The budget is not
split evenly: the reflection fields that carry the lesson get a larger share
(:data:`FIELD_WEIGHTS`), and a curator answer offers fewer operations rather than lessons shorter
than :data:`MIN_LESSON_CHARS` (measured with the 0.5B policy: an even split of 192 characters
left 24 per field, and every lesson ended mid-sentence).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from resd.context.parsing import OPERATION_KEYS, REFLECTION_FIELDS
from resd.context.playbook import SECTION_HEADERS, TAGS, Playbook, normalize_section

#: printable ASCII except '"' and '\\': one character is one byte and needs no escape
TEXT_PATTERN = r'^[ !#-\[\]-~]*$'
#: the JSON compile options a grammar backend must use for the byte bound to hold
COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}

#: bounds that do not depend on the budget
MAX_TAGS = 16
MAX_OPERATIONS = 3
MAX_MERGE_IDS = 3
MIN_TEXT_CHARS = 24
MAX_TEXT_CHARS = 1200
#: a curator lesson shorter than this is a fragment: fewer operations are offered instead
MIN_LESSON_CHARS = 80
#: each reflection field's length in units of the schema's ``text_chars`` (others: 1)
FIELD_WEIGHTS = {"key_insight": 3, "correct_approach": 2}

REFLECTION_KEYS = (*REFLECTION_FIELDS, "bullet_tags")
CURATOR_KEYS = ("reasoning", "operations")


class UnboundedSchema(ValueError):
    """The schema has a part without a maximum size (a string without maxLength, an open object...)."""


def template_key_order(template: str, keys: Sequence[str]) -> list[str]:
    """The ``keys`` a template names as ``"key"``, ordered by where it names them last (its answer
    format comes after the instructions, which may mention a key too)."""
    positions = {}
    for key in keys:
        at = template.rfind(f'"{key}"')
        if at >= 0:
            positions[key] = at
    return sorted(positions, key=positions.__getitem__)


def text_schema(max_chars: int) -> dict[str, Any]:
    """A string of at most ``max_chars`` one-byte characters."""
    return {"type": "string", "maxLength": max(0, int(max_chars)), "pattern": TEXT_PATTERN}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def playbook_sections(playbook: Playbook) -> list[str]:
    """The section names a curator may ADD to: the playbook's own, else the default seven."""
    names = [s.key for s in playbook.sections if s.header is not None]
    return list(dict.fromkeys(names)) or [normalize_section(h) for h in SECTION_HEADERS]


def reflection_schema(bullet_ids: Sequence[str], fields: Sequence[str], text_chars: int,
                      max_tags: int = MAX_TAGS) -> dict[str, Any]:
    """A reflector (or success reflector) answer: ``fields`` (strings among
    :data:`~resd.context.parsing.REFLECTION_FIELDS`, in order) and ``bullet_tags``, wherever
    ``fields`` puts it (at the end when absent). Without bullet ids the tag list must be empty.
    A field holds ``text_chars`` times its :data:`FIELD_WEIGHTS` characters (at most
    :data:`MAX_TEXT_CHARS`)."""
    ids = list(dict.fromkeys(bullet_ids))
    if ids:
        item = _object({"id": {"type": "string", "enum": ids}, "tag": {"type": "string", "enum": list(TAGS)}})
        tags = {"type": "array", "items": item, "maxItems": max(0, min(len(ids), max_tags))}
    else:
        tags = {"type": "array", "items": {"type": "string", "maxLength": 0}, "maxItems": 0}
    order = [k for k in fields if k in REFLECTION_KEYS]
    if "bullet_tags" not in order:
        order.append("bullet_tags")
    return _object({k: tags if k == "bullet_tags" else text_schema(min(MAX_TEXT_CHARS, text_chars * FIELD_WEIGHTS.get(k, 1)))
                    for k in order})


def curator_schema(bullet_ids: Sequence[str], sections: Sequence[str], text_chars: int,
                   max_operations: int = MAX_OPERATIONS, keys: Sequence[str] = CURATOR_KEYS,
                   min_operations: int = 0) -> dict[str, Any]:
    """A curator answer: ``reasoning`` and ``operations`` (in the order of ``keys``; between
    ``min_operations`` and ``max_operations`` of them). ADD names one of ``sections``; UPDATE,
    DELETE and MERGE name existing ``bullet_ids`` (offered only when there are any, MERGE only with
    two or more)."""
    ids = list(dict.fromkeys(bullet_ids))
    text = text_schema(text_chars)
    id_enum = {"type": "string", "enum": ids}
    variants = [_object({"type": {"type": "string", "const": "ADD"},
                         "section": {"type": "string", "enum": list(dict.fromkeys(sections))}, "content": text})]
    if ids:
        variants.append(_object({"type": {"type": "string", "const": "UPDATE"}, "id": id_enum, "content": text}))
        variants.append(_object({"type": {"type": "string", "const": "DELETE"}, "id": id_enum}))
    if len(ids) >= 2:
        merged = {"type": "array", "items": id_enum, "minItems": 2, "maxItems": min(len(ids), MAX_MERGE_IDS)}
        variants.append(_object({"type": {"type": "string", "const": "MERGE"}, "ids": merged, "content": text}))
    assert {v["properties"]["type"]["const"] for v in variants} <= set(OPERATION_KEYS)
    operations = {"type": "array", "items": variants[0] if len(variants) == 1 else {"anyOf": variants},
                  "maxItems": max(0, max_operations)}
    if min_operations > 0:
        operations["minItems"] = min(min_operations, operations["maxItems"])
    order = [k for k in keys if k in CURATOR_KEYS] or list(CURATOR_KEYS)
    order += [k for k in CURATOR_KEYS if k not in order]
    return _object({k: operations if k == "operations" else text for k in order})


def max_json_bytes(schema: dict[str, Any]) -> int:
    """The longest compact serialization (UTF-8 bytes) of an instance of ``schema``.

    Covers the subset this module writes: objects whose properties are all required and closed,
    strings with ``maxLength`` and :data:`TEXT_PATTERN` (or ``enum``/``const``), arrays with
    ``maxItems``, ``anyOf``. Anything else raises :class:`UnboundedSchema`.
    """
    if "const" in schema:
        return len(json.dumps(schema["const"], ensure_ascii=False).encode())
    if "enum" in schema:
        if not schema["enum"]:
            raise UnboundedSchema("an empty enum has no instance")
        return max(len(json.dumps(v, ensure_ascii=False).encode()) for v in schema["enum"])
    if "anyOf" in schema:
        return max(max_json_bytes(s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "string":
        if "maxLength" not in schema or schema.get("pattern") != TEXT_PATTERN:
            raise UnboundedSchema("a string needs maxLength and the one-byte TEXT_PATTERN")
        return 2 + int(schema["maxLength"])
    if kind == "array":
        if "maxItems" not in schema:
            raise UnboundedSchema("an array needs maxItems")
        n = int(schema["maxItems"])
        return 2 + (n * max_json_bytes(schema["items"]) + (n - 1) if n > 0 else 0)
    if kind == "object":
        props = schema.get("properties", {})
        if schema.get("additionalProperties", True) is not False or set(schema.get("required", ())) != set(props):
            raise UnboundedSchema("an object needs additionalProperties=false and every property required")
        members = [len(json.dumps(k).encode()) + 1 + max_json_bytes(v) for k, v in props.items()]
        return 2 + sum(members) + max(0, len(members) - 1)
    raise UnboundedSchema(f"unsupported schema part: {sorted(schema)}")


def token_budget(schema: dict[str, Any]) -> int:
    """Tokens that always suffice for a constrained answer: one per byte of the bound, plus the stop token."""
    return max_json_bytes(schema) + 1


def fit_text_chars(build, budget_chars: int, low: int = MIN_TEXT_CHARS, high: int = MAX_TEXT_CHARS) -> int:
    """The largest string length ``c`` in ``[low, high]`` with ``max_json_bytes(build(c)) <= budget_chars``
    (``low`` when even that does not fit). The bound is affine in ``c``, so two evaluations suffice."""
    base = max_json_bytes(build(0))
    slope = max_json_bytes(build(1)) - base
    if slope <= 0:
        return high
    return max(low, min(high, (budget_chars - base) // slope))


def _list_share(item_bytes: int, budget_chars: int, cap: int) -> int:
    """How many list items fit in a third of the budget (at least one, at most ``cap``)."""
    return max(1, min(cap, budget_chars // 3 // max(1, item_bytes + 1)))


def reflection_schema_for(playbook: Playbook, template: str, budget_chars: int) -> dict[str, Any]:
    """The reflector schema for ``playbook`` and ``template``: at most a third of ``budget_chars`` for
    the tags, string lengths sized so that the whole answer fits the budget."""
    ids = [b.id for b in playbook.bullets()]
    fields = template_key_order(template, REFLECTION_KEYS) or list(REFLECTION_KEYS)
    tag_bytes = max_json_bytes(reflection_schema(ids, [], 0, 1)["properties"]["bullet_tags"]["items"]) if ids else 0
    tags = _list_share(tag_bytes, budget_chars, min(len(ids), MAX_TAGS))
    chars = fit_text_chars(lambda c: reflection_schema(ids, fields, c, tags), budget_chars)
    return reflection_schema(ids, fields, chars, tags)


def curator_schema_for(playbook: Playbook, template: str, budget_chars: int, min_operations: int = 0) -> dict[str, Any]:
    """The curator schema for ``playbook`` and ``template``: as many operations (up to
    :data:`MAX_OPERATIONS`) as leave each lesson at least :data:`MIN_LESSON_CHARS` characters, with
    string lengths sized so that the whole answer fits the budget; at least ``min_operations``."""
    ids = [b.id for b in playbook.bullets()]
    sections = playbook_sections(playbook)
    keys = template_key_order(template, CURATOR_KEYS)
    n_ops = MAX_OPERATIONS
    while n_ops > 1 and fit_text_chars(lambda c: curator_schema(ids, sections, c, n_ops, keys),
                                       budget_chars) < MIN_LESSON_CHARS:
        n_ops -= 1
    chars = fit_text_chars(lambda c: curator_schema(ids, sections, c, n_ops, keys), budget_chars)
    return curator_schema(ids, sections, chars, n_ops, keys, min_operations)


def _full_match(pattern: str, value: str) -> bool:
    # fullmatch without the anchors: Python's "$" also matches before a final newline
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value`` (parsed JSON) is an instance of ``schema`` (the subset of :func:`max_json_bytes`).

    A small validator for tests and metrics, so that no JSON-schema package is needed.
    """
    if "const" in schema:
        return value == schema["const"]
    if "enum" in schema:
        return value in schema["enum"]
    if "anyOf" in schema:
        return any(conforms(value, s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "string":
        return (isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
                and ("pattern" not in schema or _full_match(schema["pattern"], value)))
    if kind == "array":
        return (isinstance(value, list) and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
                and all(conforms(v, schema.get("items", {})) for v in value))
    if kind == "object":
        props = schema.get("properties", {})
        return (isinstance(value, dict) and set(value) >= set(schema.get("required", ()))
                and (schema.get("additionalProperties", True) is not False or set(value) <= set(props))
                and all(conforms(v, props[k]) for k, v in value.items() if k in props))
    return True
