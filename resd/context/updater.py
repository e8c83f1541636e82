"""RESD's context update: concise -> reflect on failures -> success tags -> curate -> trim.

The order is that of ``update`` in horizon-llm/RESD,
``selfevolve/resd/context_updater/playbook_context_updater.py``; Algorithm 1 of the paper
(arXiv 2605.12741) gives its outline.

:class:`ContextUpdater` owns the playbooks and the solution buffer. It does not know about models:
reflector and curator text comes from a ``generate(list_of_chat_messages) -> list_of_texts``
callable (the policy, a separate model, an HTTP endpoint, or a script in tests).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from resd.context.concise import maybe_concise, trim_after_curation
from resd.context.curation import Dedup, apply_operations, jaccard_similarity
from resd.context.output_schema import curator_schema_for, reflection_schema_for
from resd.context.parsing import parse_curator, parse_reflection, strip_thinking
from resd.context.playbook import Playbook, PlaybookStore, TagCounts
from resd.context.prompts import CURATOR, REFLECTOR, SUCCESS_REFLECTOR
from resd.context.solution_buffer import SolutionBuffer
from resd.context.teacher_prompt import clip_middle

#: ``generate(conversations) -> texts``; with ``UpdaterConfig.constrained`` it is called as
#: ``generate(conversations, schemas=[one JSON schema per conversation])``
TextGenerate = Callable[..., list[str]]


@dataclasses.dataclass(frozen=True)
class UpdaterConfig:
    """Context-updater settings (defaults are those of the RESD run scripts, horizon-llm/RESD)."""

    playbook_mode: str = "global"
    concise_frequency: int | None = 4
    max_bullets: int | None = 200
    concise_method: str = "staleness"
    concise_after_curation: bool = True
    tag_correct_samples: bool = True
    dedup_threshold: float | None = 0.8
    reflector_template: str = REFLECTOR
    success_reflector_template: str = SUCCESS_REFLECTOR
    curator_template: str = CURATOR
    #: middle-clip the response shown to the reflector to this many characters; None (the reference's
    #: behaviour): the whole response (config key resd.reflector.max_response_chars)
    max_response_chars: int | None = None
    #: generate reflections and curations under per-call JSON schemas (``generate(..., schemas=)``;
    #: config key resd.reflector.constrained, resolved against the backend)
    constrained: bool = False
    #: the character budget a schema's answer is sized to (:mod:`resd.context.output_schema`)
    output_chars: int = 1536
    #: constrained: operations a curator answer must hold at least (config key resd.curator_min_operations)
    curator_min_operations: int = 0


@dataclasses.dataclass
class UpdateItem:
    """One rollout as the context updater sees it."""

    example_id: str
    prompt: str
    response: str
    feedback: str
    acc: float


class ContextUpdater:
    """Holds the playbook(s) and solution buffer and runs one context update per training step."""

    def __init__(self, config: UpdaterConfig = UpdaterConfig(), seed: int = 0) -> None:
        self.config = config
        self.store = PlaybookStore(config.playbook_mode, seed=seed)
        self.buffer = SolutionBuffer()
        self.dedup = Dedup(config.dedup_threshold, jaccard_similarity) if config.dedup_threshold else None
        #: raw curator outputs of the last update with their parse result, for logs
        self.last_curations: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers
    def playbook(self, example_id: str | None = None) -> Playbook:
        return self.store.get(example_id)

    def playbook_text(self, example_id: str | None = None) -> str:
        """The playbook for the teacher prompt: "" while it has no bullet (as in horizon-llm/RESD)."""
        pb = self.store.get(example_id)
        return "" if pb.is_empty() else pb.render()

    def _reflector_messages(self, item: UpdateItem, pb: Playbook) -> list[dict[str, str]]:
        text = self.config.reflector_template.format(
            prompt=item.prompt,
            response=clip_middle(strip_thinking(item.response), self.config.max_response_chars),
            feedback=item.feedback or "",
            teacher_feedback="",
            playbook=pb.render(),
        )
        return [{"role": "user", "content": text}]

    def _success_messages(self, item: UpdateItem, pb: Playbook) -> list[dict[str, str]]:
        text = self.config.success_reflector_template.format(
            prompt=item.prompt, response=clip_middle(strip_thinking(item.response), self.config.max_response_chars),
            playbook=pb.render(),
        )
        return [{"role": "user", "content": text}]

    def _curator_messages(self, item: UpdateItem, reflection: str, pb: Playbook) -> list[dict[str, str]]:
        text = self.config.curator_template.format(
            playbook_stats=json.dumps(pb.stats(), indent=2),
            recent_reflection=reflection,
            current_playbook=pb.render(),
            prompt=item.prompt,
        )
        return [{"role": "user", "content": text}]

    def _reflection_schema(self, item: UpdateItem, template: str) -> dict[str, Any] | None:
        if not self.config.constrained:
            return None
        return reflection_schema_for(self.store.get(item.example_id), template, self.config.output_chars)

    def _curator_schema(self, item: UpdateItem) -> dict[str, Any] | None:
        if not self.config.constrained:
            return None
        return curator_schema_for(self.store.get(item.example_id), self.config.curator_template,
                                  self.config.output_chars, self.config.curator_min_operations)

    def _generate(self, generate: TextGenerate,
                  requests: list[tuple[list[dict[str, str]], dict[str, Any] | None]]) -> list[str]:
        """One generate call for all ``(messages, schema)`` requests (none when there are none)."""
        if not requests:
            return []
        conversations = [messages for messages, _ in requests]
        if self.config.constrained:
            return generate(conversations, schemas=[schema for _, schema in requests])
        return generate(conversations)

    # ------------------------------------------------------------------ the update
    def update(self, items: Sequence[UpdateItem], generate: TextGenerate) -> tuple[list[str], dict[str, float]]:
        """One context update on a batch. Returns the reflection per item ("" for correct ones) and metrics.

        Order (upstream's, see the module docstring): concise check per active playbook -> one
        reflection per incorrect item, all against the same playbook version -> tags applied
        reflection by reflection -> success tags from correct items (one per example) -> one
        curation per incorrect example, all operations applied together -> trim over the cap ->
        update_count += 1. Reflections on failures and on successes are generated in one call, so
        a success reflector's prompt shows the counters before this step's failure tags (upstream
        generates it after applying them); the tags are applied in upstream's order.
        """
        cfg = self.config
        metrics: dict[str, float] = {}
        self.last_curations = []
        active = {self.store.key(it.example_id): self.store.get(it.example_id) for it in items}
        if not active:
            active = {self.store.key(None): self.store.get(None)} if self.store.mode == "global" else {}
        removed = 0
        for pb in active.values():
            result = maybe_concise(pb, cfg.concise_method, frequency=cfg.concise_frequency, max_bullets=cfg.max_bullets)
            if result is not None:
                removed += len(result.removed)
                metrics[f"playbook/concise_{result.trigger}"] = metrics.get(f"playbook/concise_{result.trigger}", 0) + 1

        incorrect = [i for i, it in enumerate(items) if not it.acc >= 1.0]
        correct = [i for i, it in enumerate(items) if it.acc >= 1.0]
        reflections = [""] * len(items)
        tags = TagCounts()
        reflector_failures = curator_failures = 0

        # A playbook without bullets has nothing to tag: its success reflections are skipped rather
        # than generated and thrown away (the small policies of CPU runs keep the playbook empty long).
        taggable = [i for i in correct if not self.store.get(items[i].example_id).is_empty()]
        successes: list[int] = []
        if cfg.tag_correct_samples and taggable:
            first_by_example: dict[str, int] = {}
            for i in taggable:
                first_by_example.setdefault(items[i].example_id, i)
            successes = list(first_by_example.values())
        # Reflections on failures and on successes read the same playbook version and are
        # independent: one generate call (one batch) for both. Their tags are applied as before,
        # failures first, so the counters end the same.
        requests = [(self._reflector_messages(items[i], self.store.get(items[i].example_id)),
                     self._reflection_schema(items[i], cfg.reflector_template)) for i in incorrect]
        requests += [(self._success_messages(items[i], self.store.get(items[i].example_id)),
                      self._reflection_schema(items[i], cfg.success_reflector_template)) for i in successes]
        outputs = self._generate(generate, requests)
        for n, (i, raw) in enumerate(zip(incorrect + successes, outputs, strict=True)):
            parsed = parse_reflection(raw)
            if n < len(incorrect):
                reflections[i] = parsed.text
            if not parsed.ok:
                reflector_failures += 1
                continue
            tags += self.store.get(items[i].example_id).apply_tags(parsed.bullet_tags)

        summary_metrics: dict[str, float] = {}
        if incorrect:
            first_by_example = {}
            for i in incorrect:
                first_by_example.setdefault(items[i].example_id, i)
            chosen = list(first_by_example.values())
            outputs = self._generate(generate, [
                (self._curator_messages(items[i], reflections[i], self.store.get(items[i].example_id)),
                 self._curator_schema(items[i])) for i in chosen
            ])
            ops_by_playbook: dict[str, list[dict[str, Any]]] = {}
            for i, raw in zip(chosen, outputs, strict=True):
                parsed = parse_curator(raw)
                self.last_curations.append({"example_id": items[i].example_id, "output": raw, "ok": parsed.ok,
                                            "error": parsed.error, "operations": parsed.operations})
                if not parsed.ok:
                    curator_failures += 1
                    continue
                ops_by_playbook.setdefault(self.store.key(items[i].example_id), []).extend(parsed.operations)
            for key, ops in ops_by_playbook.items():
                summary = apply_operations(self.store.playbooks[key], ops, dedup=self.dedup)
                for k, v in summary.as_metrics().items():
                    summary_metrics[k] = summary_metrics.get(k, 0) + v

        if cfg.concise_after_curation:
            for pb in active.values():
                result = trim_after_curation(pb, cfg.concise_method, cfg.max_bullets)
                if result is not None:
                    removed += len(result.removed)
        for pb in active.values():
            pb.advance()

        lengths = [len(reflections[i]) for i in incorrect]
        sizes = [pb.total() for pb in active.values()]
        metrics.update({
            "playbook/size": float(sum(sizes) / max(1, len(sizes))),
            "playbook/removed": float(removed),
            "tags/helpful": float(tags.helpful),
            "tags/harmful": float(tags.harmful),
            "tags/neutral": float(tags.neutral),
            "tags/unknown_id": float(tags.unknown_id),
            "tags/invalid": float(tags.invalid_tag),
            "parse/reflector_failures": float(reflector_failures),
            "parse/curator_failures": float(curator_failures),
            "reflection/count": float(len(incorrect)),
            "reflection/length_mean": float(sum(lengths) / len(lengths)) if lengths else 0.0,
        })
        metrics.update({f"playbook/{k}": float(v) for k, v in summary_metrics.items()})
        return reflections, metrics

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        return {"playbooks": self.store.to_state(), "buffer": self.buffer.to_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.store = PlaybookStore.from_state(state["playbooks"])
        self.buffer = SolutionBuffer.from_state(state["buffer"])
