"""Deterministic stand-ins for the reflector/curator used by tests that run in subprocesses.

The outputs depend only on the conversation text, so a run gives the same playbook whether one
process or several generate them (``resd.reflector.backend=callable``).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from resd.envs import register
from resd.envs.base import Environment, Feedback


def scripted(_config):
    def generate(conversations):
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            tag = zlib.crc32(text.encode()) % 1000
            if "curator" in text:
                out.append(json.dumps({"reasoning": "r", "operations": [
                    {"type": "ADD", "section": "common_mistakes_to_avoid", "content": f"lesson {tag}"}]}))
            elif "answered correctly" in text:
                out.append(json.dumps({"reasoning": "ok", "bullet_tags": [{"id": "err-00001", "tag": "helpful"}]}))
            else:
                out.append(json.dumps({"reasoning": "why", "key_insight": f"insight {tag}",
                                       "bullet_tags": [{"id": "err-00001", "tag": "harmful"}]}))
        return out

    return generate


def counted(config):
    """``scripted``, and each process appends how many conversations it was asked to answer to
    ``<run_dir>/reflector-calls-rank<RANK>.txt`` (to show that torchrun ranks share the work)."""
    inner = scripted(config)
    log = Path(config.logging.run_dir) / f"reflector-calls-rank{os.environ.get('RANK', '0')}.txt"

    def generate(conversations):
        with log.open("a") as f:
            f.write(f"{len(conversations)}\n")
        return inner(conversations)

    return generate


@register("parity-plugin")
class ParityEnv(Environment):
    """Success iff the response has an even number of characters."""

    task_description = "writing even-length answers"

    def load_split(self, split, path=None, limit=None):
        rows = [{"id": f"{split}-{i}", "question": f"Say something about {i}."} for i in range(16)]
        return rows[:limit] if limit else rows

    def prompt_messages(self, example):
        return [{"role": "user", "content": example["question"]}]

    def score(self, response, example, *, truncated=False):
        ok = len(response) % 2 == 0
        return Feedback(float(ok), float(ok), "" if ok else f"odd length {len(response)}")


@register("half-signal-plugin")
class HalfSignalEnv(ParityEnv):
    """Even rows carry a signal, odd rows none: with two processes and mini-batches of 2 prompts, the
    rank holding an odd row has nothing to train on (GRPO: all its advantages are 0; SDPO: no
    demonstration and no feedback, so no distillation target) and runs only dummy micro-batches."""

    task_description = "writing answers"

    def score(self, response, example, *, truncated=False):
        if int(example["id"].rsplit("-", 1)[1]) % 2:
            return Feedback(0.0, 0.0, "")
        value = (zlib.crc32(response.encode()) % 1000) / 2000  # distinct per response, below 0.5: never a success
        return Feedback(value, value, f"checksum {value:.3f}; aim higher")
