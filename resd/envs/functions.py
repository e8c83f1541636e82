"""An environment made of TRL-style reward functions (and, for SDPO/RESD, feedback functions).

``data.env=functions`` trains on any dataset with a ``prompt`` column (a string, or chat messages
``[{"role": ..., "content": ...}]``) and any extra columns, scored by the reward functions of a TRL
``GRPOTrainer`` script, unchanged::

    data:
      env: functions
      env_kwargs:
        reward_funcs: [my_rewards:accuracy, my_rewards:format]   # module:function, imported from cwd too
        reward_weights: [1.0, 0.2]                                # optional, default 1 each
        feedback_funcs: [my_rewards:explain]                      # optional: the text SDPO/RESD's teacher sees
        acc_func: my_rewards:accuracy                             # optional: what counts as solved
      train_path: data/train.jsonl                                # or a datasets directory, or hf:NAME

TRL's calling convention: ``f(prompts=[...], completions=[...], **columns) -> list[float | None]``,
one call per batch of scored responses. ``prompts`` are the rows' ``prompt`` values as stored;
``completions`` are the response texts, or ``[{"role": "assistant", "content": text}]`` when the
prompt is conversational (as TRL passes them); every other column arrives as a keyword argument
holding one value per response, and ``log_extra(column, values)`` / ``log_metric(name, value)``
are passed as in TRL (they write into each sample's ``details``). TRL's ``completion_ids`` and
``trainer_state`` are not passed (the environment sees text only); ``**kwargs`` absorbs the rest as
in TRL.

The score is ``sum(weight * reward)`` over the functions that returned a number (``None`` means
"not applicable", as in TRL); a response for which every function returned ``None`` scores 0 with
``details["unscorable"] = True`` (TRL gives it zero advantage instead). ``acc`` is the ``acc_func``'s
value (a reward function named again is not called twice), else the score clipped to [0, 1].

Feedback functions take the same arguments plus ``rewards`` (the scores) and return one
``str | None`` per response; their non-empty texts are joined. Without them the feedback is empty,
which SDPO treats as none (its teacher then learns from successful siblings only).

A ``reward_funcs`` entry without ``:`` is a sequence-classification reward model (a directory or
hub id), wrapped in :class:`RewardModel`, as TRL accepts a model id there.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resd.envs.base import DataError, Environment, Example, Feedback, Message

log = logging.getLogger(__name__)

#: keyword arguments the environment itself passes (never read from the data)
PASSED = ("prompts", "completions", "log_extra", "log_metric", "rewards")
#: TRL arguments that are not passed here; a function that requires one cannot run
NOT_PASSED = ("completion_ids", "trainer_state", "environments")
_NOT_COLUMNS = {"prompt", "completion", "completion_ids"}

RewardFunc = Callable[..., Sequence[Any]]


class RewardFunctionError(RuntimeError):
    """A reward or feedback function raised or returned something unusable."""


def is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) and "role" in m for m in prompt)


def function_name(func: Any, spec: Any = None) -> str:
    if isinstance(spec, str) and ":" in spec:
        return spec.rsplit(":", 1)[1].rsplit(".", 1)[-1]
    return getattr(func, "__name__", None) or type(func).__name__


def resolve_function(spec: Any, key: str = "reward_funcs") -> RewardFunc:
    """A callable from ``"module:function"``, a reward-model path (no ``:``), or a callable itself."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data.env_kwargs.{key}: expected 'module:function' strings, got {spec!r}")
    if ":" not in spec:
        if key != "reward_funcs":
            raise ValueError(f"data.env_kwargs.{key}: {spec!r} is not 'module:function'")
        return RewardModel(spec)
    from resd.envs import import_target

    try:
        func = import_target(spec)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"data.env_kwargs.{key}: cannot import {spec!r}: {e}") from None
    if not callable(func):
        raise ValueError(f"data.env_kwargs.{key}: {spec!r} is not callable (got {type(func).__name__})")
    return func


def required_columns(func: RewardFunc) -> list[str]:
    """The parameters of ``func`` without a default that must come from the data's columns."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in PASSED]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class FunctionsEnv(Environment):
    """TRL-style reward functions (and optional feedback functions) over a dataset with a 'prompt' column.

    Args:
        reward_funcs: ``"module:function"`` names (or callables; an entry without ``:`` is a reward model).
        reward_weights: one weight per reward function (default 1.0 each).
        feedback_funcs: ``"module:function"`` names returning one feedback text (or None) per response.
        acc_func: ``"module:function"`` (or one of ``reward_funcs``) whose value is ``acc``; default: the
            score clipped to [0, 1].
        task_description: the noun phrase RESD's teacher template uses ("solving the task").
        system_prompt: a system message put before a string ``prompt`` (TRL's standard format has none).
    """

    name = "functions"

    def __init__(
        self,
        reward_funcs: str | list[Any],
        reward_weights: list[float] | None = None,
        feedback_funcs: str | list[Any] | None = None,
        acc_func: Any = None,
        task_description: str | None = None,
        system_prompt: str | None = None,
    ) -> None:
        self.check_kwargs(reward_funcs=reward_funcs, reward_weights=reward_weights, feedback_funcs=feedback_funcs,
                          acc_func=acc_func, task_description=task_description, system_prompt=system_prompt,
                          resolve=False)
        self.reward_specs = _as_list(reward_funcs)
        self.feedback_specs = _as_list(feedback_funcs)
        self.acc_spec = acc_func
        weights = _as_list(reward_weights) or [1.0] * len(self.reward_specs)
        self.reward_weights = [float(w) for w in weights]
        if task_description:
            self.task_description = task_description
        self.system_prompt = system_prompt
        self._resolve()

    @classmethod
    def check_kwargs(cls, reward_funcs: Any = None, reward_weights: Any = None, feedback_funcs: Any = None,
                     acc_func: Any = None, task_description: Any = None, system_prompt: Any = None, *,
                     resolve: bool = True) -> None:
        """Check the arguments (config validation calls this): ValueError naming the key."""
        specs = _as_list(reward_funcs)
        if not specs:
            raise ValueError("data.env_kwargs.reward_funcs: give at least one 'module:function' (a TRL-style "
                             "reward function)")
        weights = _as_list(reward_weights)
        if weights and len(weights) != len(specs):
            raise ValueError(f"data.env_kwargs.reward_weights: {len(weights)} weights for {len(specs)} reward "
                             "functions")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
            raise ValueError(f"data.env_kwargs.reward_weights: expected numbers, got {weights!r}")
        for key, value in (("task_description", task_description), ("system_prompt", system_prompt)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"data.env_kwargs.{key}: expected a string, got {value!r}")
        if not resolve:
            return
        for spec in specs:
            if isinstance(spec, str) and ":" not in spec:
                RewardModel.check_path(spec)
            else:
                resolve_function(spec, "reward_funcs")
        for spec in _as_list(feedback_funcs):
            resolve_function(spec, "feedback_funcs")
        if acc_func is not None and acc_func not in specs:
            resolve_function(acc_func, "acc_func")

    def _resolve(self) -> None:
        self.reward_funcs = [resolve_function(s, "reward_funcs") for s in self.reward_specs]
        self.reward_names = [function_name(f, s) for f, s in zip(self.reward_funcs, self.reward_specs, strict=True)]
        self.feedback_funcs = [resolve_function(s, "feedback_funcs") for s in self.feedback_specs]
        self.feedback_names = [function_name(f, s)
                               for f, s in zip(self.feedback_funcs, self.feedback_specs, strict=True)]
        self._acc_index: int | None = None
        self.acc_function: RewardFunc | None = None
        if self.acc_spec is not None:
            if self.acc_spec in self.reward_specs:
                self._acc_index = self.reward_specs.index(self.acc_spec)
            else:
                self.acc_function = resolve_function(self.acc_spec, "acc_func")

    # pickled by name into score worker processes (functions are re-imported there)
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if all(isinstance(s, str) for s in [*self.reward_specs, *self.feedback_specs]) and (
                self.acc_spec is None or isinstance(self.acc_spec, str)):
            for key in ("reward_funcs", "feedback_funcs", "acc_function"):
                state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "reward_funcs" not in state:
            self._resolve()

    # ------------------------------------------------------------------ data
    def prompt_messages(self, example: Example) -> list[Message]:
        if "prompt" not in example:
            raise DataError("missing column 'prompt' (a string or a list of chat messages)")
        prompt = example["prompt"]
        if isinstance(prompt, str):
            if not prompt:
                raise DataError("column 'prompt' is an empty string")
            head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            return [*head, {"role": "user", "content": prompt}]
        if isinstance(prompt, list) and prompt:
            messages = []
            for i, m in enumerate(prompt):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise DataError(f"column 'prompt'[{i}]: expected a message {{'role': str, 'content': str}}, "
                                    f"got {m!r}")
                if not isinstance(m.get("content"), str):
                    raise DataError(f"column 'prompt'[{i}].content: expected a string (multimodal content is not "
                                    f"supported), got {type(m.get('content')).__name__}")
                messages.append({"role": m["role"], "content": m["content"]})
            return messages
        raise DataError(f"column 'prompt' should be a string or a non-empty list of chat messages, got "
                        f"{type(prompt).__name__}")

    def load_split(self, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        rows = super().load_split(split, path, limit)
        self._check_columns(rows, str(path))
        return rows

    def _check_columns(self, rows: list[Example], where: str) -> None:
        from resd.data import row_origin

        funcs = [("reward function", s, f) for s, f in zip(self.reward_specs, self.reward_funcs, strict=True)]
        funcs += [("feedback function", s, f) for s, f in zip(self.feedback_specs, self.feedback_funcs, strict=True)]
        if self.acc_function is not None:
            funcs.append(("acc function", self.acc_spec, self.acc_function))
        for kind, spec, func in funcs:
            needed = required_columns(func)
            for name in needed:
                if name in NOT_PASSED:
                    raise DataError(f"{kind} {spec}: requires the argument {name!r}, which TRL passes but resd does "
                                    "not (it scores text); give it a default or take **kwargs")
            for index, row in enumerate(rows, 1):
                missing = [n for n in needed if n not in row]
                if missing:
                    source, number = row_origin(row) or (where, index)
                    raise DataError(f"{source}: row {number}: {kind} {spec} needs column {missing[0]!r}, which the "
                                    f"row lacks (columns: {sorted(row)}; map one with data.env_kwargs.columns="
                                    f"{{{missing[0]}: <column>}})")

    # ------------------------------------------------------------------ scoring
    def score(self, response: str, example: Example, *, truncated: bool = False) -> Feedback:
        return self._score_many([response], [example])[0]

    def score_batch(self, responses: Sequence[str], examples: Sequence[Example],
                    truncated: Sequence[bool] | None = None, *, workers: int | None = None,
                    timeout_s: float | None = None) -> list[Feedback]:
        workers = workers if workers is not None else getattr(self, "score_workers", 0)
        if workers and workers > 0:  # one response per call, each in a worker with a time limit
            return super().score_batch(responses, examples, truncated, workers=workers, timeout_s=timeout_s)
        return self._score_many(list(responses), list(examples))

    def _call(self, kind: str, name: str, func: RewardFunc, n: int, kwargs: dict[str, Any]) -> list[Any]:
        try:
            out = func(**kwargs)
            if inspect.isawaitable(out):  # TRL accepts async reward functions
                out = asyncio.run(_awaited(out))
        except Exception as e:
            raise RewardFunctionError(f"{kind} {name!r} raised {type(e).__name__}: {e} (called as TRL does: "
                                      f"{name}(prompts=..., completions=..., **columns) with columns "
                                      f"{sorted(k for k in kwargs if k not in PASSED)})") from e
        if isinstance(out, (str, bytes)) or not isinstance(out, Sequence) and not hasattr(out, "__len__"):
            raise RewardFunctionError(f"{kind} {name!r} returned {type(out).__name__}; expected a list with one value "
                                      "per completion")
        out = list(out)
        if len(out) != n:
            raise RewardFunctionError(f"{kind} {name!r} returned {len(out)} values for {n} completions (one per "
                                      "completion expected)")
        return out

    def _score_many(self, responses: list[str], examples: list[Example]) -> list[Feedback]:
        n = len(responses)
        if n == 0:
            return []
        prompts = [ex.get("prompt") for ex in examples]
        completions = [[{"role": "assistant", "content": t}] if is_conversational(p) else t
                       for p, t in zip(prompts, responses, strict=True)]
        keys: dict[str, None] = {}
        for ex in examples:
            keys.update(dict.fromkeys(k for k in ex if k not in _NOT_COLUMNS))
        details: list[dict[str, Any]] = [{} for _ in range(n)]

        def log_extra(column: str, values: Sequence[Any]) -> None:
            for d, v in zip(details, values, strict=False):
                d[str(column)] = v

        def log_metric(name: str, value: float) -> None:
            for d in details:
                d[str(name)] = value

        kwargs: dict[str, Any] = {k: [ex.get(k) for ex in examples] for k in keys}
        kwargs.update(prompts=prompts, completions=completions, log_extra=log_extra, log_metric=log_metric)
        per_func: list[list[float | None]] = []
        for name, func in zip(self.reward_names, self.reward_funcs, strict=True):
            values = self._call("reward function", name, func, n, kwargs)
            per_func.append([_number(v, name) for v in values])
        scores, unscorable = [], []
        for i in range(n):
            terms = [(w, vals[i]) for w, vals in zip(self.reward_weights, per_func, strict=True) if vals[i] is not None]
            unscorable.append(not terms)
            scores.append(float(sum(w * r for w, r in terms)) if terms else 0.0)
        if self._acc_index is not None:
            accs = [v if v is not None else 0.0 for v in per_func[self._acc_index]]
        elif self.acc_function is not None:
            values = self._call("acc function", function_name(self.acc_function, self.acc_spec), self.acc_function, n,
                                kwargs)
            accs = [_number(v, "acc_func") or 0.0 for v in values]
        else:
            accs = list(scores)
        texts = [[] for _ in range(n)]
        if self.feedback_funcs:
            fb_kwargs = dict(kwargs, rewards=list(scores))
            for name, func in zip(self.feedback_names, self.feedback_funcs, strict=True):
                for i, text in enumerate(self._call("feedback function", name, func, n, fb_kwargs)):
                    if text is not None and not isinstance(text, str):
                        raise RewardFunctionError(f"feedback function {name!r} returned {type(text).__name__} for "
                                                  "a completion; expected str or None")
                    if text and text.strip():
                        texts[i].append(text.strip())
        out = []
        for i in range(n):
            d = details[i]
            d["rewards"] = {name: vals[i] for name, vals in zip(self.reward_names, per_func, strict=True)}
            if unscorable[i]:
                d["unscorable"] = True
            out.append(Feedback(scores[i], min(1.0, max(0.0, float(accs[i]))), "\n\n".join(texts[i]), d))
        if any(unscorable):
            log.debug("%d of %d completions: every reward function returned None (scored 0)", sum(unscorable), n)
        return out


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RewardFunctionError(f"reward function {name!r} returned {value!r}; expected a number or None") from None
    return None if math.isnan(number) else number


class RewardModel:
    """A sequence-classification reward model as a TRL-style reward function.

    ``RewardModel(path)(prompts=..., completions=...)`` returns the first logit of each prompt +
    completion, as TRL's ``GRPOTrainer`` scores with a model passed in ``reward_funcs``: conversational
    rows go through the tokenizer's chat template, standard ones are concatenated. The model is loaded
    on the first call (``AutoModelForSequenceClassification``, ``num_labels=1``).
    """

    def __init__(self, path: str | os.PathLike[str], tokenizer: str | None = None, device: str = "cpu",
                 batch_size: int = 8, max_length: int | None = None) -> None:
        self.path = str(path)
        self.tokenizer_path = tokenizer or self.path
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.__name__ = f"RewardModel({Path(self.path).name or self.path})"
        self._model = None
        self._tokenizer = None

    @staticmethod
    def check_path(path: str) -> None:
        from resd.data import _HUB_NAME
        from resd.hub import offline

        local = Path(path)
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise ValueError(f"data.env_kwargs.reward_funcs: {path!r} is a directory without config.json; a "
                                 "reward function is 'module:function', a reward model a saved model directory")
            return
        if not _HUB_NAME.fullmatch(path) or offline("models"):
            raise ValueError(f"data.env_kwargs.reward_funcs: {path!r} is not 'module:function' and not a reward "
                             "model directory" + (" (the Hub is offline for models, so no hub id)"
                                                  if offline("models") else ""))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_model", "_tokenizer")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _model=None, _tokenizer=None)

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.tokenizer_path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        model = AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        model.to(self.device).eval()
        self._model, self._tokenizer = model, tok

    def _text(self, prompt: Any, completion: Any) -> str:
        tok = self._tokenizer
        if is_conversational(prompt):
            messages = [*prompt, *(completion if isinstance(completion, list) else
                                   [{"role": "assistant", "content": str(completion)}])]
            if getattr(tok, "chat_template", None):
                return tok.apply_chat_template(messages, tokenize=False)
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return f"{prompt}{completion}"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        import torch

        if self._model is None:
            self._load()
        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                    truncation=self.max_length is not None, max_length=self.max_length,
                                    add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                out.extend(self._model(**batch).logits[:, 0].float().tolist())
        return out
