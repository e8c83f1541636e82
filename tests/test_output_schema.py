"""The reflector/curator JSON schemas: keys, enums, size bounds, and how each backend is asked for them
(no grammar library needed here; tests/test_constrained_generation.py generates under them)."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest

from resd.context.output_schema import (
    FIELD_WEIGHTS, MAX_OPERATIONS, MAX_TEXT_CHARS, MIN_LESSON_CHARS, MIN_TEXT_CHARS, TEXT_PATTERN, UnboundedSchema,
    conforms, curator_schema, curator_schema_for, max_json_bytes, reflection_schema, reflection_schema_for,
    template_key_order, token_budget,
)
from resd.context.parsing import parse_curator, parse_reflection
from resd.context.playbook import Bullet, Playbook
from resd.context.prompts import PROMPT_SETS
from resd.rollout import structured
from resd.rollout.base import SamplingParams
from resd.rollout.text import HTTPTextGenerator


def playbook(n: int) -> Playbook:
    pb = Playbook()
    for i in range(n):
        section = pb.sections[i % len(pb.sections)]
        section.bullets.append(Bullet(pb.new_id(section.key), f"lesson {i}"))
    return pb


def longest(schema: dict):
    """An instance of ``schema`` of maximal serialized length."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return max(schema["enum"], key=lambda v: len(json.dumps(v)))
    if "anyOf" in schema:
        return max((longest(s) for s in schema["anyOf"]), key=lambda v: len(json.dumps(v)))
    if schema["type"] == "string":
        return "x" * schema["maxLength"]
    if schema["type"] == "array":
        return [longest(schema["items"]) for _ in range(schema["maxItems"])]
    return {k: longest(v) for k, v in schema["properties"].items()}


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("set_name", sorted(PROMPT_SETS))
def test_keys_follow_each_template(set_name):
    prompts = PROMPT_SETS[set_name]
    pb = playbook(3)
    for template in (prompts.reflector, prompts.success_reflector):
        keys = list(reflection_schema_for(pb, template, 600)["properties"])
        named = template_key_order(template, list(keys))
        assert keys == named  # every key the template asks for, in its order, and no other
    keys = list(curator_schema_for(pb, prompts.curator, 600)["properties"])
    assert keys == template_key_order(prompts.curator, ["reasoning", "operations"])
    assert sorted(keys) == ["operations", "reasoning"]


def test_compact_prompts_put_the_used_keys_first():
    compact_set = PROMPT_SETS["compact"]
    assert list(curator_schema_for(playbook(0), compact_set.curator, 300)["properties"]) == ["operations", "reasoning"]
    assert list(reflection_schema_for(playbook(2), compact_set.success_reflector, 300)["properties"])[0] == "bullet_tags"


def test_ids_tags_and_operation_types_are_enums_of_the_real_values():
    pb = playbook(4)
    ids = [b.id for b in pb.bullets()]
    schema = reflection_schema_for(pb, PROMPT_SETS["default"].reflector, 3000)
    item = schema["properties"]["bullet_tags"]["items"]["properties"]
    assert item["id"]["enum"] == ids and item["tag"]["enum"] == ["helpful", "harmful", "neutral"]
    ops = curator_schema_for(pb, PROMPT_SETS["default"].curator, 3000)["properties"]["operations"]["items"]["anyOf"]
    assert [o["properties"]["type"]["const"] for o in ops] == ["ADD", "UPDATE", "DELETE", "MERGE"]
    assert ops[0]["properties"]["section"]["enum"][0] == "strategies_and_insights"
    assert ops[1]["properties"]["id"]["enum"] == ids
    # an empty playbook: no tags, and ADD is the only operation
    empty = reflection_schema_for(Playbook(), PROMPT_SETS["default"].reflector, 3000)
    assert empty["properties"]["bullet_tags"]["maxItems"] == 0
    only_add = curator_schema_for(Playbook(), PROMPT_SETS["default"].curator, 3000)["properties"]["operations"]["items"]
    assert only_add["properties"]["type"]["const"] == "ADD"
    assert not conforms({"reasoning": "", "operations": [{"type": "DELETE", "id": "x"}]},
                        curator_schema_for(Playbook(), PROMPT_SETS["default"].curator, 3000))


@pytest.mark.parametrize("n_bullets", [0, 1, 5, 40])
@pytest.mark.parametrize("budget", [16, 48, 300, 1536, 60000])
def test_the_byte_bound_is_exact_and_the_budget_is_kept(n_bullets, budget):
    pb = playbook(n_bullets)
    for set_name, prompts in PROMPT_SETS.items():
        for schema, parse in ((reflection_schema_for(pb, prompts.reflector, budget), parse_reflection),
                              (reflection_schema_for(pb, prompts.success_reflector, budget), parse_reflection),
                              (curator_schema_for(pb, prompts.curator, budget), parse_curator)):
            text = compact(longest(schema))
            assert len(text.encode()) == max_json_bytes(schema) == token_budget(schema) - 1
            assert conforms(json.loads(text), schema)
            parsed = parse(text)
            assert parsed.ok and parsed.source == "whole", (set_name, text[:200])
            strings = [v for v in json.loads(text).values() if isinstance(v, str)]
            assert all(MIN_TEXT_CHARS <= len(s) <= MAX_TEXT_CHARS for s in strings)
            if budget >= 1536:  # room for the minimum lengths: the whole answer fits the budget
                assert max_json_bytes(schema) <= budget


@pytest.mark.parametrize("budget", [192, 384, 900, 3000])
def test_lessons_get_the_larger_share_of_the_budget(budget):
    """Curator lessons are never cut below MIN_LESSON_CHARS to fit more operations (while one fits),
    and the reflection's key insight and correct approach get more room than its other fields."""
    pb = playbook(3)
    curator = curator_schema_for(pb, PROMPT_SETS["default"].curator, budget)
    operations = curator["properties"]["operations"]
    lengths = {v["properties"]["content"]["maxLength"] for v in operations["items"]["anyOf"] if "content" in v["properties"]}
    assert len(lengths) == 1
    if operations["maxItems"] > 1:
        assert lengths.pop() >= MIN_LESSON_CHARS
    if budget >= 900:  # room for several full lessons
        assert operations["maxItems"] == MAX_OPERATIONS
    reflection = reflection_schema_for(pb, PROMPT_SETS["default"].reflector, budget)["properties"]
    unit = reflection["reasoning"]["maxLength"]
    assert reflection["key_insight"]["maxLength"] == min(MAX_TEXT_CHARS, FIELD_WEIGHTS["key_insight"] * unit) > unit
    assert reflection["correct_approach"]["maxLength"] == min(MAX_TEXT_CHARS, 2 * unit)
    assert reflection["error_identification"]["maxLength"] == unit


def test_strings_are_one_byte_characters_without_escapes():
    schema = reflection_schema_for(playbook(0), PROMPT_SETS["default"].reflector, 600)
    good = {k: "plain ASCII, with 'quotes' and {braces}" if k != "bullet_tags" else [] for k in schema["properties"]}
    assert conforms(good, schema)
    for bad in ('a "quote"', "back\\slash", "caf\u00e9", "new\nline", "trailing newline\n"):
        assert not conforms({**good, "reasoning": bad}, schema)
    assert TEXT_PATTERN.startswith("^") and TEXT_PATTERN.endswith("$")


def test_unbounded_schemas_are_refused():
    for schema in ({"type": "string"}, {"type": "array", "items": {"enum": [1]}},
                   {"type": "object", "properties": {"a": {"enum": [1]}}, "required": []},
                   {"type": "string", "maxLength": 3}, {"enum": []}):
        with pytest.raises(UnboundedSchema):
            max_json_bytes(schema)


def test_merge_needs_two_ids_and_stays_bounded():
    schema = curator_schema(["a-00001", "b-00002", "c-00003", "d-00004"], ["others"], 10)
    merge = schema["properties"]["operations"]["items"]["anyOf"][3]["properties"]["ids"]
    assert (merge["minItems"], merge["maxItems"]) == (2, 3)
    assert reflection_schema(["a-1"], ["key_insight"], 5)["required"] == ["key_insight", "bullet_tags"]


# ---------------------------------------------------------------- when constraints are on


def test_resolve_constrained(monkeypatch):
    monkeypatch.setattr(structured, "library_available", lambda: True)
    assert structured.resolve_constrained(None, "library") and structured.resolve_constrained(True, "library")
    assert structured.resolve_constrained(None, "engine")
    assert not structured.resolve_constrained(None, "server") and structured.resolve_constrained(True, "server")
    assert not structured.resolve_constrained(False, "engine") and not structured.resolve_constrained(None, None)
    with pytest.raises(ValueError, match="cannot constrain"):
        structured.resolve_constrained(True, None)
    monkeypatch.setattr(structured, "library_available", lambda: False)
    assert not structured.resolve_constrained(None, "library")
    with pytest.raises(ValueError, match=r"resd\[structured\]") as error:
        structured.resolve_constrained(True, "library")
    assert "resd.reflector.constrained" in str(error.value)


def test_a_required_constraint_without_the_library_stops_the_run(tiny_config, monkeypatch):
    from resd.trainer import build_trainer

    monkeypatch.setattr(structured, "library_available", lambda: False)
    config = tiny_config("algorithm=resd", "resd.reflector.constrained=true")
    with pytest.raises(ValueError, match=r"pip install 'resd\[structured\]'"):
        build_trainer(config)


def test_http_request_carries_the_schema_and_a_sufficient_token_limit():
    schema = curator_schema_for(playbook(2), PROMPT_SETS["default"].curator, 900)
    gen = HTTPTextGenerator("http://127.0.0.1:9/v1", "m", SamplingParams(0.7, 0.9, 0, 64))
    body = gen.request_body([{"role": "user", "content": "hi"}], schema)
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "resd_answer", "schema": schema, "strict": True}}
    assert body["max_tokens"] == token_budget(schema) and body["temperature"] == 0.7
    plain = gen.request_body([{"role": "user", "content": "hi"}])
    assert "response_format" not in plain and plain["max_tokens"] == 64
    json.dumps(body)  # serializable as sent


@pytest.fixture()
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package with the two structured-output APIs (new and old)."""

    class Params:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class StructuredOutputsParams(Params):
        pass

    class GuidedDecodingParams(Params):
        pass

    class VSamplingParams(Params):
        pass

    package = types.ModuleType("vllm")
    sampling_params = types.ModuleType("vllm.sampling_params")
    sampling_params.StructuredOutputsParams = StructuredOutputsParams
    sampling_params.GuidedDecodingParams = GuidedDecodingParams
    package.sampling_params = sampling_params
    package.SamplingParams = VSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", package)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling_params)
    return sampling_params


def test_vllm_structured_outputs_request(fake_vllm):
    schema = reflection_schema_for(playbook(2), PROMPT_SETS["default"].reflector, 600)
    kwargs = structured.vllm_structured_kwargs(schema)
    assert list(kwargs) == ["structured_outputs"]
    assert kwargs["structured_outputs"].kwargs == {"json": schema, "disable_any_whitespace": True}
    del fake_vllm.StructuredOutputsParams  # a release before 0.10.2
    kwargs = structured.vllm_structured_kwargs(schema)
    assert list(kwargs) == ["guided_decoding"] and kwargs["guided_decoding"].kwargs["json"] == schema


def test_vllm_generator_sends_each_prompt_its_schema(fake_vllm):
    from resd.rollout.vllm import VLLMGenerator

    class Engine:
        def generate(self, requests, params, use_tqdm=False):
            self.params = params
            done = SimpleNamespace(token_ids=[5, 2], logprobs=None, finish_reason="stop")
            return [SimpleNamespace(outputs=[done]) for _ in requests]

    engine = Engine()
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    gen = VLLMGenerator(None, tokenizer, "unused", llm=engine, sleep_level=0)
    assert gen.constraint_support == "engine"
    schemas = [{"type": "object", "properties": {}, "required": [], "additionalProperties": False}, None]
    out = gen.generate([[1, 2], [3]], 2, SamplingParams(max_new_tokens=7), seeds=[1, 2], constraints=schemas)
    assert len(out) == 4
    sent = [p.kwargs.get("structured_outputs") for p in engine.params]
    assert [s.kwargs["json"] if s else None for s in sent] == [schemas[0], schemas[0], None, None]
    assert all(p.kwargs["max_tokens"] == 7 for p in engine.params)


def test_vllm_engine_is_built_without_free_whitespace(fake_vllm, monkeypatch):
    """vLLM 0.32 reads ``disable_any_whitespace`` from the engine config only, so the colocated engine
    is built with it; a user's ``engine_kwargs`` still win, and an engine from before structured
    outputs gets no such argument."""
    from resd.rollout.vllm import VLLMGenerator

    built = []

    class LLM:
        def __init__(self, model, **kwargs):
            built.append(kwargs)

    monkeypatch.setattr(sys.modules["vllm"], "LLM", LLM, raising=False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    VLLMGenerator(None, tokenizer, "unused", sleep_level=0)
    assert built[-1]["structured_outputs_config"] == {"backend": "guidance", "disable_any_whitespace": True}
    mine = {"backend": "xgrammar", "disable_any_whitespace": True}
    VLLMGenerator(None, tokenizer, "unused", sleep_level=0, engine_kwargs={"structured_outputs_config": mine})
    assert built[-1]["structured_outputs_config"] == mine
    del fake_vllm.StructuredOutputsParams  # a release before 0.10.2
    VLLMGenerator(None, tokenizer, "unused", sleep_level=0)
    assert "structured_outputs_config" not in built[-1]


@pytest.fixture()
def chat_server():
    """A real local HTTP server speaking the chat-completions shape: it answers each request with the
    upper-cased user message after ``delay`` seconds, stops answers that contain "long" at the token
    limit (finish_reason "length"), and records the bodies and the most requests in flight at once."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"bodies": [], "in_flight": 0, "most": 0, "delay": 0.2}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["bodies"].append(body)
                state["in_flight"] += 1
                state["most"] = max(state["most"], state["in_flight"])
            time.sleep(state["delay"])
            with lock:
                state["in_flight"] -= 1
            text = body["messages"][-1]["content"]
            answer = {"choices": [{"message": {"content": text.upper()},
                                   "finish_reason": "length" if "long" in text else "stop"}]}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_http_generator_against_a_real_server(chat_server, caplog):
    url, state = chat_server
    gen = HTTPTextGenerator(url, "reflector", SamplingParams(0.7, 0.9, 0, 64), concurrency=4)
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(8)]
    schema = reflection_schema_for(playbook(1), PROMPT_SETS["default"].reflector, 300)
    assert gen(conversations, schemas=[schema] * 8) == [f"Q{i}" for i in range(8)]
    assert state["most"] >= 2  # requests overlapped
    assert all(b["response_format"]["json_schema"]["schema"] == schema for b in state["bodies"])
    assert gen.cut_constrained == 0
    with pytest.raises(ValueError, match="2 schemas for 8"):
        gen(conversations, schemas=[None, None])
    # a server whose grammar lets the model run on in whitespace cuts constrained answers: counted, warned once
    with caplog.at_level("WARNING", logger="resd.rollout.text"):
        gen([[{"role": "user", "content": "long 1"}], [{"role": "user", "content": "long 2"}]], schemas=[schema] * 2)
        gen([[{"role": "user", "content": "long 3"}]])  # no schema: a free answer may end at the limit
    assert gen.cut_constrained == 2
    warnings = [r for r in caplog.records if "disable_any_whitespace" in r.getMessage()]
    assert len(warnings) == 1 and url in warnings[0].getMessage()
    # an unreachable server is an unusable answer, not a crash
    down = HTTPTextGenerator("http://127.0.0.1:9", "reflector", SamplingParams(), timeout_s=2)
    assert down([[{"role": "user", "content": "q"}]])[0].startswith("INCORRECT_DUE_TO_EMPTY_RESPONSE")
