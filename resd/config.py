"""Typed configuration: YAML files and presets, ``key=value`` overrides, clear errors.

Every section is a pydantic model that forbids unknown keys, so a typo fails with the key's dotted
path instead of being ignored. ``load_config(preset=..., path=..., overrides=[...])`` merges, in
order: the defaults, a preset, a YAML file, and the command-line overrides.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from resd.context.reprompt import RepromptConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSection(Section):
    """LoRA through PEFT: only the adapter trains; the teacher is the
    base model (``teacher.kind=frozen``) or a second adapter following the student's by EMA."""

    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="PEFT target modules")


class ModelConfig(Section):
    name: str = Field("embedded", description="'embedded' (default Qwen2.5-Coder-0.5B-Instruct), 'tiny', an HF id or a path")
    tokenizer: str | None = Field(None, description="tokenizer name/path; defaults to the model's")
    precision: Literal["fp32", "bf16"] = Field("bf16", description="bf16 keeps float32 master weights in the optimizer")
    gradient_checkpointing: bool = False
    tiny: dict[str, Any] = Field(default_factory=dict, description="size of the 'tiny' random model")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {enable_thinking: false}")
    lora: LoraSection = Field(default_factory=LoraSection)
    device: str = Field("auto", description="'auto' (this rank's GPU when there is one, else cpu), 'cpu', 'cuda', 'cuda:1'")


class DataConfig(Section):
    env: str = "arithmetic"
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    train_split: str = "train"
    train_path: str | None = None
    train_limit: int | None = None
    val_split: str = "test"
    val_path: str | None = None
    val_limit: int | None = None
    shuffle: bool = True
    max_prompt_length: int = 2048
    prompt_overflow: Literal["drop", "truncate", "error"] = "drop"
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
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers generate; vllm: a colocated vLLM engine")
    vllm: dict[str, Any] = Field(default_factory=dict, description="vllm.LLM keyword arguments (gpu_memory_utilization, ...)")
    vllm_sleep_level: int = Field(1, ge=0, le=2, description="sleep the engine during updates (0: never; 2: drop weights)")
    n: int = Field(8, ge=1, description="samples per prompt")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1, description="sequences generated together")
    seeded: bool = Field(True, description="sample every sequence from its own seed (results independent of batching)")


class TrainConfig(Section):
    steps: int | None = Field(
        10, ge=0, description="training steps to run, in every loop: one step = rollouts for batch_size prompts and "
        "their update (ceil(batch_size / mini_batch_size) optimizer steps); in the stream loop one inner iteration. "
        "null: no cap, the stream loop runs the whole split (or stream.num_batches); the plain loop needs a number"
    )
    batch_size: int = Field(32, ge=1, description="prompts per step")
    mini_batch_size: int | None = Field(None, ge=1, description="prompts per optimizer step; None = batch_size (on-policy)")
    micro_batch_tokens: int = Field(8192, ge=1, description="token budget of one forward/backward micro-batch")
    loss_chunk_size: int = Field(512, ge=1, description="response tokens per chunk of the vocabulary-sized loss work")
    lr: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(10, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(1.0, gt=0)
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
    pg_weight: float = Field(0.0, ge=0, le=1, description="lambda: lambda * policy_gradient + (1 - lambda) * distillation")
    alpha: float = Field(0.5, ge=0, le=1)
    topk: int | None = Field(100, ge=1)
    add_tail: bool = True
    full_logit: bool = True
    is_clip: float | None = Field(2.0, gt=0)
    teacher_min_ratio: float | None = Field(
        None, description="teacher floor max(t, sg(s) + log r_min) (RESD arXiv 2605.12741: 0.2); in (0, 1], None: off"
    )
    teacher_max_ratio: float | None = Field(
        None, gt=0, description="teacher ceiling min(t, sg(s) + log r_max); >= teacher_min_ratio, None: off"
    )
    aggregation: Literal["seq-mean-token-mean", "token-mean"] = "seq-mean-token-mean"
    # GRPO
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)
    dual_clip: float | None = Field(3.0, gt=1)
    norm_adv_by_std: bool = False
    pg_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"

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
    kind: Literal["ema", "frozen", "live", "trust-region"] = "ema"
    update_rate: float = Field(0.05, ge=0, le=1)
    offload: bool = Field(False, description="keep the teacher's weights in CPU memory between its forwards (GPU runs)")


class _RepromptLimits(Section):
    max_reprompt_len: int = Field(10240, ge=1)
    reprompt_truncation: Literal["left", "right", "error"] = "right"


def _section_of(dataclass_type: type, base: type[Section], name: str) -> type[Section]:
    """A config section with the fields (types and defaults) of a dataclass, plus ``base``'s own."""
    hints = typing.get_type_hints(dataclass_type)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(dataclass_type)}
    return create_model(name, __base__=base, **fields)


#: SDPO's teacher-context keys (:class:`resd.context.reprompt.RepromptConfig`) and the prompt limits
RepromptSection = _section_of(RepromptConfig, _RepromptLimits, "RepromptSection")


class EvalConfig(Section):
    """Validation during training and the defaults of ``resd eval`` (as the ``val_kwargs`` of horizon-llm/RESD, ``trainer/config/user.yaml``: n=4, T=0.6, top_p=0.95)."""

    every_steps: int = Field(0, ge=0, description="validate every N training steps (0: never), in every loop; "
                             "the stream loop also validates every stream.val_every_batches outer batches")
    every_rollouts: int = Field(0, ge=0, description="validate each time the rollout count passes a multiple of N (0: never)")
    save_best: bool = Field(True, description="checkpoint when the best validation metric improves")
    before_train: bool = False
    k: int = Field(4, ge=1, description="samples per prompt")
    temperature: float = Field(0.6, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int | None = Field(None, ge=1, description="None: rollout.max_new_tokens")
    common_seeds: bool = Field(
        False, description="sample every evaluation with the same seeds (those of step 0): a change between "
        "evaluations then comes from the model, not from a new draw (needs rollout.seeded)"
    )
    success_threshold: float = Field(1.0, description="score counted as solved for pass@k")
    best_metric: str = Field("task/mean", description="metric (without @k) whose maximum marks the best checkpoint")


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
    backend: Literal["policy", "model", "http", "callable"] = Field("policy", description="who writes reflections and curations")
    model: str | None = Field(
        None, description="model name/path (backend=model), served model name (http), or 'module:factory' (callable)"
    )
    url: str | None = Field(None, description="OpenAI-compatible endpoint (backend=http)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (http)")
    max_new_tokens: int = Field(512, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_prompt_tokens: int = Field(8192, ge=1, description="longer reflector/curator prompts keep their end")
    max_response_chars: int | None = Field(
        None, ge=2, description="middle-clip the response shown to the reflector to N characters (null: the whole "
        "response, as the reference; set it when responses can exceed max_prompt_tokens)"
    )


class ResdConfig(Section):
    """RESD's context updater and teacher prompt (arXiv 2605.12741; horizon-llm/RESD, ``selfevolve/resd/context_updater/``)."""

    playbook_mode: Literal["global", "per_example"] = "global"
    concise_frequency: int | None = Field(4, ge=1)
    max_bullets: int | None = Field(200, ge=1)
    concise_method: Literal["reset", "prioritized", "staleness"] = "staleness"
    concise_after_curation: bool = True
    tag_correct_samples: bool = True
    use_solution_buffer: bool = True
    dedup_threshold: float | None = Field(0.8, gt=0, le=1, description="word-Jaccard near-duplicate merge; None: off")
    use_playbook_in_teacher_prompt: bool = True
    use_previous_trial_in_teacher_prompt: bool = True
    use_feedback_in_teacher_prompt: bool = True
    use_reflection_in_teacher_prompt: bool = True
    use_solution_in_teacher_prompt: bool = True
    feedback_only_without_solution: bool = True
    teacher_template: str | None = Field(
        None, description="'default', 'direct' (no 'reason step by step': small models, short budgets) or a file path"
    )
    context_prompts: Literal["default", "compact"] = Field(
        "default", description="reflector/curator templates; 'compact': short JSON, used keys first (small policies)"
    )
    max_section_chars: int | None = Field(8000, ge=100, description="cap on each long section of the teacher prompt")
    success_rate_weighting: bool = False
    success_rate_alpha: float = Field(1.0, ge=0)
    success_rate_beta: float = Field(1.0, ge=0)
    reflector: ReflectorConfig = Field(default_factory=ReflectorConfig)


class DistConfig(Section):
    """Multi-process runs (``torchrun``; resd.distributed)."""

    timeout_s: float = Field(
        1800.0, gt=0, description="limit of every collective: one that does not complete in time (ranks out of "
        "step, a dead or stuck rank) fails with an error naming the step instead of hanging; it must exceed the "
        "longest time a rank waits for another (rank 0's validation, a checkpoint)"
    )


class LoggingConfig(Section):
    run_dir: str | None = Field(None, description="default: runs/<name>-<timestamp>")
    log_every: int = Field(1, ge=1)
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    save_final: bool = Field(True, description="checkpoint when training ends (off for throw-away benchmark runs)")
    keep_last: int = Field(2, ge=1)
    progress: bool = True
    wandb: bool = False
    tensorboard: bool = False
    trackio: bool = False
    project: str = "resd"
    samples_per_step: int = Field(2, ge=0, description="rollouts written to samples.jsonl per step")


class Config(Section):
    name: str = "run"
    algorithm: str = Field(
        "sdpo", description="grpo, sdpo, sdpo+ss (SDPO with the sample's own success as demonstration), resd "
        "(reflection, playbook, solution buffer), or a name registered with resd.algorithms.register_algorithm"
    )
    seed: int = 0
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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
    data: dict[str, Any] = {}
    if preset is not None:
        data = deep_merge(data, _read_yaml(_preset_path(preset)))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = deep_merge(data, _read_yaml(path))
    layer: dict[str, Any] = {}  # the overrides are one layer: data.env_kwargs=... data.env=X keeps the kwargs
    for item in overrides or []:
        layer = deep_merge(layer, parse_override(item), env_layer=False)
    data = deep_merge(data, layer)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None


def _format_validation_error(error: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif isinstance(item.get("input"), dict):  # a check across keys: its message names them
            lines.append(f"  {key}: {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)
