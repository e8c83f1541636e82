"""Typed configuration: YAML files and presets, ``key=value`` overrides, clear errors.

Every section is a pydantic model that forbids unknown keys, so a typo fails with the key's dotted
path instead of being ignored. ``load_config(preset=..., path=..., overrides=[...])`` merges, in
order: the defaults, a preset, a YAML file, and the command-line overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from resd.context.reprompt import RepromptConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def _members(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | None`` -> int, NoneType), else the annotation itself."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return typing.get_args(annotation) if union else (annotation,)


def _numeric_without_bool(annotation: Any) -> bool:
    """Whether ``annotation`` takes numbers (int or float) but no boolean (nor Any)."""
    members = _members(annotation)
    return not any(a is bool or a is Any for a in members) and any(a is int or a is float for a in members)


def _bool_for_a_number(value: Any, annotation: Any) -> bool:
    """Whether ``value`` puts a boolean where ``annotation`` wants a number (also as an item of a list or tuple)."""
    if isinstance(value, bool):
        return _numeric_without_bool(annotation)
    if isinstance(value, (list, tuple)):
        for member in _members(annotation):
            if typing.get_origin(member) in (list, tuple):
                items = [a for a in typing.get_args(member) if a is not Ellipsis]
                if items and any(isinstance(v, bool) and _numeric_without_bool(items[min(i, len(items) - 1)])
                                 for i, v in enumerate(value)):
                    return True
    return False


class Section(BaseModel):
    """A configuration section: unknown keys are errors, assignments are validated, and a boolean is
    never taken for a number (pydantic's lax mode would read ``steps: true`` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None and _bool_for_a_number(value, field.annotation):
            from pydantic_core import PydanticCustomError

            raise PydanticCustomError("bool_for_number", "expected a number, got a boolean (true/false)")
        return value


class LoraSection(Section):
    """LoRA through PEFT: only the adapter trains; the teacher is the
    base model (``teacher.kind=frozen``) or a second adapter following the student's by EMA."""

    enabled: bool = Field(False, description="train a LoRA adapter instead of every weight")
    r: int = Field(16, ge=1, description="rank of the adapter's low-rank update")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: str | list[str] = Field(
        "all-linear", description="modules given adapters: PEFT's 'all-linear' or a list of module names (q_proj, ...)"
    )


class ModelConfig(Section):
    """The policy model: which weights, their precision, LoRA and the device."""

    name: str = Field("embedded", description="'embedded' (default Qwen2.5-Coder-0.5B-Instruct), 'tiny', an HF id or a path")
    tokenizer: str | None = Field(None, description="tokenizer name/path; defaults to the model's")
    precision: Literal["fp32", "bf16"] = Field("bf16", description="bf16 keeps float32 master weights in the optimizer")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less activation memory, one more forward"
    )
    tiny: dict[str, Any] = Field(default_factory=dict, description="size of the 'tiny' random model")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {enable_thinking: false}")
    lora: LoraSection = Field(default_factory=LoraSection)
    device: str = Field("auto", description="'auto' (this rank's GPU when there is one, else cpu), 'cpu', 'cuda', 'cuda:1'")
    init_from: str | None = Field(
        None, description="RUN_DIR[:STEP] (STEP: best, latest (default) or a number): start from that run's student "
        "weights (a LoRA run's adapter merged into model.name) instead of model.name's; the teacher starts from them too"
    )


class DataConfig(Section):
    """The environment (task, scoring, feedback) and its training and validation data."""

    env: str = Field("arithmetic", description="environment: a registered name (`resd envs`) or module:Class")
    env_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the environment (e.g. columns, reward_funcs); "
        "replaced whole by a later layer, and dropped when a layer switches data.env"
    )
    train_split: str = Field("train", description="split of the training rows (the environment's, or of a "
                             "datasets DatasetDict / hub dataset at data.train_path)")
    train_path: str | None = Field(
        None, description="training data: a .jsonl/.json/.parquet file, a save_to_disk directory or hf:NAME[:CONFIG]; "
        "null: the environment's own data"
    )
    train_limit: int | None = Field(None, description="use only the first N training rows (null: all)")
    val_split: str = Field("test", description="split of the validation rows (validation in training, `resd eval`)")
    val_path: str | None = Field(None, description="validation data, as data.train_path (null: the environment's own)")
    val_limit: int | None = Field(None, description="use only the first N validation rows (null: all)")
    shuffle: bool = Field(True, description="visit the training rows in a seeded random order (reshuffled every "
                          "epoch); false: file order")
    max_prompt_length: int = Field(2048, description="token limit of a chat-formatted prompt "
                                   "(see data.prompt_overflow)")
    prompt_overflow: Literal["drop", "truncate", "error"] = Field(
        "drop", description="a prompt over data.max_prompt_length: drop (skip it in training), truncate (keep its "
        "last tokens) or error"
    )
    score_workers: int = Field(0, ge=0, description="score in N worker processes with a time limit (0: in-process)")
    score_timeout_s: float = Field(60.0, gt=0, description="wall-clock limit of one score() call in a worker")

    @model_validator(mode="after")
    def _known_env_and_its_arguments(self) -> DataConfig:
        # an unknown data.env, or an env_kwargs key the environment does not take, fails here (so
        # --print-config too), naming the key and the known environments / the env's arguments
        from pydantic_core import PydanticCustomError

        from resd.envs import check_env_config

        try:
            check_env_config(self.env, self.env_kwargs)
        except ValueError as e:
            raise PydanticCustomError("data_env", str(e)) from None
        return self


class RolloutConfig(Section):
    """Sampling the training rollouts."""

    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers generate; vllm: a colocated vLLM engine")
    vllm: dict[str, Any] = Field(default_factory=dict, description="vllm.LLM keyword arguments (gpu_memory_utilization, ...)")
    vllm_sleep_level: int = Field(1, ge=0, le=2, description="sleep the engine during updates (0: never; 2: drop weights)")
    n: int = Field(8, ge=1, description="samples per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the training rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: the smallest token set of this "
                         "probability (1: off)")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens (0: off)")
    max_new_tokens: int = Field(256, ge=1, description="response length limit in tokens (longer ones are cut)")
    batch_size: int = Field(8, ge=1, description="sequences generated together")
    seeded: bool = Field(True, description="sample every sequence from its own seed (results independent of batching)")


class TrainConfig(Section):
    """Steps, batch sizes and the optimizer."""

    steps: int | None = Field(
        10, ge=0, description="training steps to run, in every loop: one step = rollouts for batch_size prompts and "
        "their update (ceil(batch_size / mini_batch_size) optimizer steps); in the stream loop one inner iteration. "
        "null: no cap, the stream loop runs the whole split (or stream.num_batches); the plain loop needs a number"
    )
    batch_size: int = Field(32, ge=1, description="prompts per step")
    mini_batch_size: int | None = Field(None, ge=1, description="prompts per optimizer step; None = batch_size (on-policy)")
    micro_batch_tokens: int = Field(8192, ge=1, description="token budget of one forward/backward micro-batch")
    loss_chunk_size: int = Field(512, ge=1, description="response tokens per chunk of the vocabulary-sized loss work")
    share_prefix: bool = Field(
        True, description="a context prefix that every row of a micro-batch shares (64 tokens or more: a teacher "
        "template's instructions, a GRPO group's prompt) is computed once per forward, its gradient summed over the "
        "rows; one process without gradient checkpointing (elsewhere every row computes it)"
    )
    lr: float = Field(1e-5, gt=0, description="peak learning rate of AdamW")
    warmup_steps: int = Field(10, ge=0, description="optimizer steps of linear learning-rate warm-up from lr / N")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after the warm-up: constant, or cosine decay to 0 at the planned last step"
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW's decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's (beta1, beta2)")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the global gradient norm to this (null: no clipping)")
    rollout_is_threshold: float | None = Field(2.0, gt=0, description="truncated IS for sampler/trainer mismatch; None: off")
    max_nonfinite_steps: int = Field(5, ge=1, description="consecutive non-finite steps before the run stops")
    skip_zero_advantage: bool = Field(
        True, description="leave samples with no loss (zero GRPO advantage, no distillation target) out of the "
        "forward/backward; the optimizer step is the same"
    )
    memory: Literal["exact", "lean"] = Field(
        "exact", description="optimizer and EMA-teacher state of bf16 weights. exact: float32 masters and Adam "
        "moments (updates never lost to rounding; the master is the bf16 weight + an int16 remainder, the EMA "
        "teacher likewise), 16 bytes/parameter with an EMA teacher; lean: bf16 weights, moments and teacher "
        "written with seeded stochastic rounding, 8 bytes/parameter (see docs/scaling.md, Memory per parameter)"
    )


class LossConfig(Section):
    """The self-distillation loss and the GRPO policy-gradient loss."""

    pg_weight: float = Field(0.0, ge=0, le=1, description="lambda: lambda * policy_gradient + (1 - lambda) * distillation")
    alpha: float = Field(0.5, ge=0, le=1, description="distillation divergence: 0 forward KL(teacher||student), "
                         "1 reverse KL(student||teacher), in between the generalized Jensen-Shannon divergence")
    topk: int | None = Field(100, ge=1, description="distil over the student's top-k tokens (null: the whole "
                             "vocabulary)")
    add_tail: bool = Field(True, description="with topk: one extra bin for the probability outside the top k "
                           "(false: renormalize over the k tokens)")
    full_logit: bool = Field(True, description="distil the token distributions (true) or use the sampled-token "
                             "estimator (false; needs loss.alpha=1)")
    is_clip: float | None = Field(2.0, gt=0, description="upper clip of the importance ratio of off-policy "
                                  "distillation updates (null: no ratio)")
    teacher_min_ratio: float | None = Field(
        None, description="teacher floor max(t, sg(s) + log r_min) (RESD arXiv 2605.12741: 0.2); in (0, 1], None: off"
    )
    teacher_max_ratio: float | None = Field(
        None, gt=0, description="teacher ceiling min(t, sg(s) + log r_max); >= teacher_min_ratio, None: off"
    )
    aggregation: Literal["seq-mean-token-mean", "token-mean"] = Field(
        "seq-mean-token-mean", description="reduction of the distillation loss: mean over sequences of each "
        "sequence's token mean, or one mean over all tokens"
    )
    # GRPO
    clip_low: float = Field(0.2, ge=0, description="PPO clip: the ratio is clipped below at 1 - clip_low")
    clip_high: float = Field(0.28, ge=0, description="PPO clip: the ratio is clipped above at 1 + clip_high")
    dual_clip: float | None = Field(3.0, gt=1, description="dual-clip PPO: the loss of a negative-advantage token "
                                    "is capped at -advantage * c (null: off)")
    norm_adv_by_std: bool = Field(False, description="divide GRPO advantages (score - group mean) by the group's "
                                  "standard deviation")
    pg_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "token-mean", description="reduction of the policy-gradient loss: token-mean, seq-mean-token-mean, or "
        "seq-mean-token-sum-norm (Dr. GRPO: token sums / rollout.max_new_tokens)"
    )

    @field_validator("teacher_min_ratio")
    @classmethod
    def _min_ratio_in_unit_interval(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError("loss.teacher_min_ratio must lie in (0, 1] (a floor on the teacher's probability "
                             "relative to the student's), or be null")
        return value

    @model_validator(mode="after")
    def _min_ratio_not_above_max_ratio(self) -> LossConfig:
        lo, hi = self.teacher_min_ratio, self.teacher_max_ratio
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"loss.teacher_min_ratio ({lo}) must not exceed loss.teacher_max_ratio ({hi})")
        return self

    @model_validator(mode="after")
    def _sampled_token_needs_reverse_kl(self) -> LossConfig:
        if not self.full_logit and self.alpha != 1.0:
            raise ValueError("loss.full_logit=false (sampled-token) requires loss.alpha=1.0")
        return self


class TeacherConfig(Section):
    """The self-teacher that scores the student's response under the teacher context."""

    kind: Literal["ema", "frozen", "live", "trust-region"] = Field(
        "ema", description="the self-teacher's weights: ema (a moving average of the student), frozen (the initial "
        "model), live (the current student), trust-region (logits mixed from the initial model and the student)"
    )
    update_rate: float = Field(0.05, ge=0, le=1, description="ema: teacher <- (1 - rate) teacher + rate student after "
                               "every optimizer step; trust-region: the student's weight in the logit mix")
    offload: bool = Field(False, description="keep the teacher's weights in CPU memory between its forwards (GPU runs)")


class _RepromptLimits(Section):
    max_reprompt_len: int = Field(10240, ge=1, description="token limit of the teacher's prompt")
    reprompt_truncation: Literal["left", "right", "error"] = Field(
        "right", description="a teacher prompt over max_reprompt_len: right keeps its beginning (SDPO's), left its "
        "end (TRL's), error stops"
    )


def _section_of(dataclass_type: type, base: type[Section], name: str, descriptions: dict[str, str]) -> type[Section]:
    """A config section with the fields (types and defaults) of a dataclass, plus ``base``'s own."""
    hints = typing.get_type_hints(dataclass_type)
    fields = {f.name: (hints[f.name], Field(f.default, description=descriptions[f.name]))
              for f in dataclasses.fields(dataclass_type)}
    model = create_model(name, __base__=base, **fields)
    model.__doc__ = dataclass_type.__doc__
    return model


_REPROMPT_DESCRIPTIONS = {
    "success_reward_threshold": "a sample whose score reaches this counts as a success (a demonstration for its "
    "group's teacher; also the threshold of RESD's solution buffer)",
    "dont_reprompt_on_self_success": "a sample is never its own demonstration (only a sibling's success)",
    "remove_thinking_from_demonstration": "strip <think>...</think> from a demonstration before the teacher sees it",
    "include_environment_feedback": "show the teacher the environment's feedback on the sample",
    "environment_feedback_only_without_solution": "show the feedback only when the sample has no demonstration",
    "reprompt_template": "the teacher's prompt: {prompt}, then {solution} and {feedback} (empty when absent)",
    "solution_template": "the {solution} part: {successful_previous_attempt} is the demonstration",
    "feedback_template": "the {feedback} part: {feedback_raw} is the environment's feedback",
}

#: SDPO's teacher-context keys (:class:`resd.context.reprompt.RepromptConfig`) and the prompt limits
RepromptSection = _section_of(RepromptConfig, _RepromptLimits, "RepromptSection", _REPROMPT_DESCRIPTIONS)


class EvalConfig(Section):
    """Validation during training and the defaults of ``resd eval`` (as the ``val_kwargs`` of horizon-llm/RESD, ``trainer/config/user.yaml``: n=4, T=0.6, top_p=0.95)."""

    every_steps: int = Field(0, ge=0, description="validate every N training steps (0: never), in every loop; "
                             "the stream loop also validates every stream.val_every_batches outer batches")
    every_rollouts: int = Field(0, ge=0, description="validate each time the rollout count passes a multiple of N (0: never)")
    save_best: bool = Field(True, description="checkpoint when the best validation metric improves")
    before_train: bool = Field(False, description="validate once before the first training step (step 0)")
    k: int = Field(4, ge=1, description="samples per prompt")
    temperature: float = Field(0.6, gt=0, description="sampling temperature of the evaluation")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling of the evaluation (1: off)")
    max_new_tokens: int | None = Field(None, ge=1, description="response length limit; None: rollout.max_new_tokens")
    common_seeds: bool = Field(
        False, description="sample every evaluation with the same seeds (those of step 0): a change between "
        "evaluations then comes from the model, not from a new draw (needs rollout.seeded)"
    )
    success_threshold: float = Field(1.0, description="score counted as solved for pass@k")
    best_metric: str = Field(
        "task/mean", description="metric whose maximum marks the best checkpoint, without @k (k is eval.k) or with "
        "it; best.json records it under the same name (best_metric) next to the summary key (metric, with @k)"
    )


class StreamConfig(Section):
    """RESD's stream trainer: one pass over the data, K inner updates per outer batch (arXiv 2605.12741, Algorithm 1)."""

    enabled: bool | None = Field(
        None, description="use the stream schedule; null: the algorithm's default (stream for resd, standard for the others)"
    )
    inner_steps: int = Field(4, ge=1, description="max_updates_per_batch K")
    min_inner_steps: int = Field(4, ge=1, description="inner steps before the early exit may fire")
    early_exit_threshold: float = Field(
        0.0, ge=0, le=1, description="stop a batch when the fraction of prompts whose mean score improved is below this"
    )
    num_batches: int | None = Field(None, ge=1, description="outer batches to run (None: the whole training split)")
    val_every_batches: int = Field(0, ge=0, description="validate every N outer batches (0: never)")
    save_every_batches: int = Field(1, ge=0, description="checkpoint every N outer batches (0: only at the end)")


class ReflectorConfig(Section):
    """Who writes RESD's reflections and curations, and how they are sampled."""

    backend: Literal["policy", "model", "http", "callable"] = Field("policy", description="who writes reflections and curations")
    model: str | None = Field(
        None, description="model name/path (backend=model), served model name (http), or 'module:factory' (callable)"
    )
    url: str | None = Field(None, description="OpenAI-compatible endpoint (backend=http)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (http)")
    max_new_tokens: int = Field(512, ge=1, description="length limit of one reflection or curation, in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of reflections and curations")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling of reflections and curations")
    max_prompt_tokens: int = Field(8192, ge=1, description="longer reflector/curator prompts keep their end")
    max_response_chars: int | None = Field(
        None, ge=2, description="middle-clip the response shown to the reflector to N characters (null: the whole "
        "response, as the reference; set it when responses can exceed max_prompt_tokens)"
    )
    constrained: bool | None = Field(
        None, description="generate reflections and curations under a JSON schema (the parsers' keys, the playbook's "
        "real bullet ids, bounded lengths), so that every answer parses: null: on for vLLM and for Hugging Face "
        "models when llguidance is installed (extra resd[structured]), off for http; true: required (an error "
        "if the backend or the library cannot); false: free text and the tolerant parsers"
    )
    schema_chars_per_token: float = Field(
        3.0, gt=0, description="constrained output: JSON characters allotted per token of max_new_tokens when the "
        "schema's string lengths are sized; the token limit of a constrained call is then the schema's worst case "
        "(one token per character), so no answer is cut"
    )
    http_concurrency: int = Field(8, ge=1, description="requests the http backend sends at once")


class ResdConfig(Section):
    """RESD's context updater and teacher prompt (arXiv 2605.12741; horizon-llm/RESD, ``selfevolve/resd/context_updater/``)."""

    playbook_mode: Literal["global", "per_example"] = Field(
        "global", description="one playbook for all problems, or one per example id"
    )
    concise_frequency: int | None = Field(4, ge=1, description="prune the playbook (harmful, unused, stale bullets) "
                                          "every N context updates (null: only over max_bullets)")
    max_bullets: int | None = Field(200, ge=1, description="playbook size cap; over it, concise_method prunes down "
                                    "to it (null: no cap)")
    concise_method: Literal["reset", "prioritized", "staleness"] = Field(
        "staleness", description="pruning: reset (empty the playbook), prioritized (drop unused and harmful, then "
        "random helpful ones over the cap), staleness (drop harmful and old unused, then least recently used)"
    )
    concise_after_curation: bool = Field(True, description="trim the playbook to max_bullets right after each curation")
    tag_correct_samples: bool = Field(True, description="also reflect on successful samples to mark the bullets that "
                                      "helped (one per example, when the playbook has bullets)")
    use_solution_buffer: bool = Field(True, description="keep each example's last success and show it to the teacher "
                                      "when no sibling succeeded")
    dedup_threshold: float | None = Field(0.8, gt=0, le=1, description="word-Jaccard near-duplicate merge; None: off")
    use_playbook_in_teacher_prompt: bool = Field(True, description="show the teacher the playbook")
    use_previous_trial_in_teacher_prompt: bool = Field(True, description="show the teacher the student's response")
    use_feedback_in_teacher_prompt: bool = Field(True, description="show the teacher the environment's feedback")
    use_reflection_in_teacher_prompt: bool = Field(True, description="show the teacher the reflection on the response")
    use_solution_in_teacher_prompt: bool = Field(True, description="show the teacher a successful solution "
                                                 "(a sibling's or the buffer's)")
    feedback_only_without_solution: bool = Field(True, description="show the feedback only when there is no solution")
    teacher_template: str | None = Field(
        None, description="'default', 'direct' (no 'reason step by step': small models, short budgets) or a file path"
    )
    context_prompts: Literal["default", "compact"] = Field(
        "default", description="reflector/curator templates; 'compact': short JSON, used keys first (small policies)"
    )
    max_section_chars: int | None = Field(8000, ge=100, description="cap on each long section of the teacher prompt")
    curator_min_operations: int = Field(
        0, ge=0, le=3, description="constrained output only: the curator must propose at least this many playbook "
        "operations (0: as the reference, an empty list is allowed; under a schema a small policy tends to answer "
        "with one, so its playbook stays empty)"
    )
    success_rate_weighting: bool = Field(
        False, description="reweight sequences by the batch success rate s: successes by (1 - s)^alpha, failures "
        "by s^beta, scaled to mean 1 (RESD, App. B)"
    )
    success_rate_alpha: float = Field(1.0, ge=0, description="exponent of the successes' weight (1 - s)^alpha")
    success_rate_beta: float = Field(1.0, ge=0, description="exponent of the failures' weight s^beta")
    reflector: ReflectorConfig = Field(default_factory=ReflectorConfig)


class DistConfig(Section):
    """Multi-process runs (``torchrun``; resd.distributed)."""

    timeout_s: float = Field(
        1800.0, gt=0, description="limit of every collective: one that does not complete in time (ranks out of "
        "step, a dead or stuck rank) fails with an error naming the step instead of hanging; it must exceed the "
        "longest time a rank waits for another (rank 0's validation, a checkpoint)"
    )


#: the experiment trackers ``logging.report_to`` may name
TRACKERS = ("wandb", "tensorboard", "trackio")


def normalize_trackers(value: Any) -> list[str]:
    """``logging.report_to`` as a list of known tracker names, each once: a name or a list of names;
    None, [] or 'none' for none. Raises ValueError naming the unknown ones."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise ValueError(f"logging.report_to must be a tracker name or a list of them ({', '.join(TRACKERS)})")
    names = [x.strip().lower() for x in items]
    if names == ["none"]:
        return []
    unknown = [x for x in names if x not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {', '.join(map(repr, unknown))}; known: {', '.join(TRACKERS)}, or "
                         "'none'" + (" ('all': name the trackers)" if "all" in unknown else ""))
    return list(dict.fromkeys(names))


class LoggingConfig(Section):
    """Where a run writes (its directory), what it prints, and the experiment trackers it reports to."""

    run_dir: str | None = Field(None, description="the run directory; default: runs/<name>-<timestamp>")
    log_every: int = Field(1, ge=1, description="write metrics.jsonl, report to the trackers and print the console's "
                           "metrics line every N training steps")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    save_final: bool = Field(True, description="checkpoint when training ends (off for throw-away benchmark runs)")
    keep_last: int = Field(2, ge=1, description="checkpoints kept (the best validation's is kept as well)")
    progress: bool = Field(True, description="show a progress bar (first rank only)")
    console: bool = Field(True, description="print the start summary, a metrics line every log_every steps, "
                          "validation results and the closing summary (first rank only)")
    report_to: list[str] = Field(
        default_factory=list, description="experiment trackers: a list (or one name) of wandb, tensorboard, trackio; "
        "'none' or [] for none. Replaces the deprecated logging.wandb/tensorboard/trackio=true"
    )
    project: str = Field("resd", description="W&B / trackio project")
    run_name: str | None = Field(None, description="the trackers' run name; default: the run directory's name")
    group: str | None = Field(None, description="W&B / trackio group of related runs (e.g. the seeds of one setting)")
    tags: list[str] = Field(default_factory=list, description="W&B tags of the run")
    samples_per_step: int = Field(2, ge=0, description="rollouts written to samples.jsonl (and the trackers' sample "
                                  "tables) per step, and validation samples per validation to the trackers")

    @model_validator(mode="before")
    @classmethod
    def _deprecated_tracker_flags(cls, data: Any) -> Any:
        # logging.wandb=true (etc.) of older configs becomes logging.report_to=[wandb]; false is dropped silently
        # (every older run's config.yaml has all three)
        if not isinstance(data, dict) or not any(k in data for k in TRACKERS):
            return data
        import warnings

        data = dict(data)
        report_to = normalize_trackers(data.get("report_to"))
        for name in TRACKERS:
            if name not in data:
                continue
            value = data.pop(name)
            if not isinstance(value, bool) and value is not None:
                raise ValueError(f"logging.{name} is replaced by logging.report_to (e.g. logging.report_to=[{name}])")
            if value:
                warnings.warn(f"logging.{name}=true is deprecated; use logging.report_to=[{name}]", FutureWarning,
                              stacklevel=2)
                if name not in report_to:
                    report_to.append(name)
        data["report_to"] = report_to
        return data

    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, value: Any) -> list[str]:
        return normalize_trackers(value)


class Config(Section):
    """A training run: the algorithm and one section per part of the system."""

    name: str = Field("run", description="run name: the run directory is runs/<name>-<timestamp> unless "
                      "logging.run_dir is set")
    algorithm: str = Field(
        "sdpo", description="grpo, sdpo, sdpo+ss (SDPO with the sample's own success as demonstration), resd "
        "(reflection, playbook, solution buffer), or a name registered with resd.algorithms.register_algorithm"
    )
    seed: int = Field(0, description="seed of Python, NumPy and torch, of the data order and of every sample")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    reprompt: RepromptSection = Field(default_factory=RepromptSection)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    resd: ResdConfig = Field(default_factory=ResdConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _known_algorithm(self) -> Config:
        from resd.algorithms import algorithm_class

        algorithm_class(self.algorithm).configure(self)  # e.g. grpo sets loss.pg_weight=1
        return self

    @model_validator(mode="after")
    def _uncapped_steps_need_the_stream_loop(self) -> Config:
        if self.train.steps is None and not self.uses_stream:
            raise ValueError("train.steps=null (no cap: one pass over the split) needs the stream schedule "
                             "(stream.enabled=true, the default of algorithm=resd); give train.steps a number")
        return self

    @property
    def uses_stream(self) -> bool:
        """Whether the stream schedule runs: ``stream.enabled``, else the algorithm's default."""
        if self.stream.enabled is not None:
            return self.stream.enabled
        from resd.algorithms import algorithm_class

        return algorithm_class(self.algorithm).default_schedule == "stream"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


# Free-form mappings that a later layer replaces whole (merging the keyword arguments of one
# environment into those of another would make no sense).
_REPLACED_WHOLE = {"env_kwargs", "chat_template_kwargs", "vllm"}


def deep_merge(base: dict[str, Any], update: dict[str, Any], *, env_layer: bool = True) -> dict[str, Any]:
    """``update`` layered over ``base``: nested sections merge, free-form mappings are replaced whole.

    ``data.env_kwargs`` belong to the environment of their layer: a layer that changes ``data.env``
    without setting ``data.env_kwargs`` starts the new environment from no arguments
    (``env_layer=False``: ``update`` is part of the same layer, e.g. one of the command-line overrides).
    """
    out = dict(base)
    if env_layer and isinstance(update.get("env"), str) and "env_kwargs" not in update and "env_kwargs" in out \
            and update["env"] != out.get("env", DataConfig.model_fields["env"].default):
        del out["env_kwargs"]
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _REPLACED_WHOLE:
            out[key] = deep_merge(out[key], value, env_layer=env_layer)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text: byte offset {e.start} (line {line}) is 0x{raw[e.start]:02x}; "
                          "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    parent = data.pop("base", None)  # a preset may extend another
    if parent is not None:
        data = deep_merge(_read_yaml(_preset_path(str(parent))), data)
    return data


def _preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    return path


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``, the value parsed as YAML (so 1e-5, null, [1,2] work)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=1e-5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "1e-5" as a string
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_config(preset: str | None = None, path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a :class:`Config` from a preset, a YAML file and ``key=value`` overrides (in that order)."""
    from resd.config_aliases import translate_trl_names

    data: dict[str, Any] = {}

    def so_far(key: str) -> Any:  # a key's value in the layers read so far, else its default
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default_value(key)
            node = node[part]
        return node

    if preset is not None:
        data = deep_merge(data, _read_yaml(_preset_path(preset)))
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory (give a YAML file)")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = deep_merge(data, translate_trl_names(_read_yaml(path), str(path), so_far))
    layer: dict[str, Any] = {}  # the overrides are one layer: data.env_kwargs=... data.env=X keeps the kwargs
    for item in overrides or []:
        layer = deep_merge(layer, parse_override(item), env_layer=False)
    data = deep_merge(data, translate_trl_names(layer, "override", so_far))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None


def _format_validation_error(error: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{did_you_mean(key, item.get('input'))}")
        elif isinstance(item.get("input"), dict):  # a check across keys: its message names them
            lines.append(f"  {key}: {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the key reference
@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One configuration key: its dotted path, type, default and description (``section``: a nested section)."""

    path: str
    type: str
    default: Any
    description: str
    section: bool = False
    constraints: str = ""


def _section_type(annotation: Any) -> type[Section] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def _type_name(annotation: Any) -> str:
    """A short, YAML-minded name of a field's type: ``int | null``, ``constant | cosine``, ``[float, float]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(metadata: list[Any]) -> str:
    """Bounds of a field from its pydantic metadata, e.g. ``>= 1``."""
    out = []
    for item in metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(item, attr, None)
            if bound is not None:
                out.append(f"{sign} {bound}")
    return ", ".join(out)


def config_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[KeyInfo]:
    """Every key of the configuration (sections included, before their keys), in declaration order."""
    model = model or Config
    out: list[KeyInfo] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _section_type(field.annotation)
        if sub is not None:
            doc = (sub.__doc__ or "").strip().split("\n\n")[0].replace("``", "")
            out.append(KeyInfo(path, "section", None, " ".join(doc.split()), section=True))
            out.extend(config_keys(sub, path + "."))
        else:
            out.append(KeyInfo(path, _type_name(field.annotation), field.get_default(call_default_factory=True),
                               field.description or "", constraints=_constraints(field.metadata)))
    return out


def known_keys() -> list[str]:
    """The dotted path of every key and section."""
    return [k.path for k in config_keys()]


def default_value(key: str) -> Any:
    """The default of a dotted key (``train.betas`` -> (0.9, 0.999)); a section's default as a mapping."""
    model: type[BaseModel] = Config
    parts = key.split(".")
    for part in parts[:-1]:
        sub = _section_type(model.model_fields[part].annotation) if part in model.model_fields else None
        if sub is None:
            raise KeyError(key)
        model = sub
    if parts[-1] not in model.model_fields:
        raise KeyError(key)
    value = model.model_fields[parts[-1]].get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def suggest_keys(key: str, limit: int = 3) -> list[str]:
    """Known keys close to an unknown dotted ``key``: a close sibling, the same name in another section,
    the resd name of a TRL name, or a close dotted path."""
    from resd.config_aliases import TRL_NAMES

    paths = known_keys()
    parent, _, leaf = key.rpartition(".")
    siblings = [p.rpartition(".")[2] for p in paths if p.rpartition(".")[0] == parent]
    out = [f"{parent}.{s}" if parent else s for s in difflib.get_close_matches(leaf, siblings, n=limit, cutoff=0.6)]
    out += [p for p in paths if p.rpartition(".")[2] == leaf and p != key]
    trl = TRL_NAMES.get(leaf)
    if trl is not None and trl.resd in paths:
        out.append(trl.resd)
    if not out:  # a misspelt section (trian.steps): the closest dotted paths
        out = difflib.get_close_matches(key, paths, n=limit, cutoff=0.75)
    return list(dict.fromkeys(out))[:limit]


def did_you_mean(key: str, value: Any = None) -> str:
    """``"; did you mean train.steps?"`` for an unknown key, or "" when nothing is close.

    ``value``: the unknown key's value; when it is a mapping (``trian: {steps: 3}``), a suggested
    section is shown with the mapping's key (``train.steps``) where that key exists."""
    suggestions = suggest_keys(key)
    if isinstance(value, dict) and len(value) == 1:
        inner = next(iter(value))
        known = set(known_keys())
        suggestions = [f"{s}.{inner}" if f"{s}.{inner}" in known else s for s in suggestions]
    return f"; did you mean {' or '.join(suggestions)}?" if suggestions else ""


def _show(value: Any) -> str:
    """A value as it would be written in YAML or an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = value and value.strip() == value and "\n" not in value and ": " not in value
        return value if plain else json.dumps(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def config_reference(section: str | None = None, values: Config | None = None, width: int = 100) -> str:
    """The keys under ``section`` (a dotted section or key; None: all) with type, default and description.

    With ``values`` (e.g. a loaded preset) each key shows that value, and the default where it differs."""
    keys = config_keys()
    if section:
        section = section.strip().strip(".")
        match = [k for k in keys if k.path == section or k.path.startswith(section + ".")]
        if not match:
            sections = ", ".join(k.path for k in keys if k.section and "." not in k.path)
            raise ConfigError(f"unknown section or key {section!r}{did_you_mean(section)} (sections: {sections})")
        keys = match
    shown = values.to_dict() if values is not None else None
    lines: list[str] = []
    for k in keys:
        if k.section:
            lines += ["", textwrap.fill(f"[{k.path}]  {k.description}".rstrip(), width, subsequent_indent="    ")]
            continue
        text = f"{k.path}: {k.type}"
        if k.constraints:
            text += f" ({k.constraints})"
        value, default = _show(k.default), _show(k.default)
        if shown is not None:
            node: Any = shown
            for part in k.path.split("."):
                node = node[part]
            value = _show(node)
        text += f" = {value}" + (f"  (default: {default})" if value != default else "")
        lines.append(text)
        if k.description:
            lines.append(textwrap.fill(k.description, width, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(lines).lstrip("\n")
