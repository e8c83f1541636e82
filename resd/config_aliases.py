"""TRL's configuration names (``GRPOConfig``, ``SDPOConfig``, ``ModelConfig``) in a resd config.

A YAML file (``--config``) or an override may use TRL's flat top-level names: each is rewritten to
resd's key with a warning that names it (``learning_rate is TRL's name; resd calls it train.lr``).
A TRL name without a resd equivalent is an error that says so, except for values with which resd
already behaves the same (``beta: 0.0``: resd has no reference-model term), which are dropped with
a warning. The table of docs/from-trl.md ("Config names") lists the same names (a test keeps the
two in step).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("resd.config")

Lookup = Callable[[str], Any]  # the value a dotted resd key has so far (earlier layers, else its default)


class NoEquivalent(ValueError):
    """A TRL name, or one of its values, that resd cannot express."""


@dataclasses.dataclass(frozen=True)
class TrlName:
    """How one TRL name becomes resd keys."""

    resd: str  # resd's name for it, shown in warnings and in the docs ("" when there is none)
    convert: Callable[[Any, Lookup], dict[str, Any]]  # value -> {dotted resd key: value}; NoEquivalent: refused
    note: str = ""  # what the user should know about the translation, added to the warning


def _same(a: Any, b: Any) -> bool:
    """Equal, with booleans apart from numbers (``True`` is not 1) but 1 and 1.0 alike."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _to(key: str, convert: Callable[[Any], Any] | None = None, note: str = "") -> TrlName:
    """The same setting under another name (``convert``: the value in resd's terms)."""
    return TrlName(key, lambda value, _get: {key: convert(value) if convert else value}, note)


def _choice(key: str, table: dict[Any, Any], note: str = "") -> TrlName:
    """A value translated through ``table``; any other value is refused."""

    def convert(value: Any, _get: Lookup) -> dict[str, Any]:
        for known, out in table.items():
            if _same(value, known):
                return {key: out}
        raise NoEquivalent(f"resd supports {', '.join(repr(k) for k in table)} (as {key})")

    return TrlName(key, convert, note)


def _none(why: str, *same: Any) -> TrlName:
    """No resd equivalent; a value in ``same`` is what resd does anyway (dropped with a warning)."""

    def convert(value: Any, _get: Lookup) -> dict[str, Any]:
        if any(_same(value, s) for s in same):
            return {}
        raise NoEquivalent(why)

    return TrlName("", convert)


def _steps(value: Any, _get: Lookup) -> dict[str, Any]:
    if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
        raise NoEquivalent(f"max_steps={value} means 'train for num_train_epochs'; give train.steps a number of "
                           "steps, or train.steps=null with stream.enabled=true for one pass over the data")
    return {"train.steps": value}


def _warmup(value: Any, _get: Lookup) -> dict[str, Any]:
    if isinstance(value, float) and 0 < value < 1:
        raise NoEquivalent(f"warmup_steps={value} is a fraction of the run; train.warmup_steps counts optimizer steps")
    return {"train.warmup_steps": value}


def _beta(index: int) -> TrlName:
    def convert(value: Any, get: Lookup) -> dict[str, Any]:
        betas = list(get("train.betas"))
        betas[index] = value
        return {"train.betas": betas}

    return TrlName(f"train.betas[{index}]", convert)


def _report_to(value: Any, _get: Lookup) -> dict[str, Any]:
    from resd.config import normalize_trackers

    try:
        return {"logging.report_to": normalize_trackers(value)}
    except ValueError as e:
        raise NoEquivalent(str(e)) from None


def _distillation_weight(value: Any, _get: Lookup) -> dict[str, Any]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NoEquivalent(f"distillation_weight should be a number in [0, 1], got {value!r}")
    return {"loss.pg_weight": 1.0 - float(value)}


def _distillation_mode(value: Any, get: Lookup) -> dict[str, Any]:
    if value == "sampled_token":
        return {"loss.full_logit": False}
    if value == "full_logits":
        return {"loss.full_logit": True, "loss.topk": None}
    if value == "topk_logits":
        return {"loss.full_logit": True}  # the k: distillation_topk (loss.topk)
    raise NoEquivalent("resd supports 'sampled_token', 'full_logits' and 'topk_logits'")


_PG_AGGREGATION = {"dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean",
                   "dr_grpo": "seq-mean-token-sum-norm"}
_BATCH = ("TRL's batch sizes count completions per device; resd's train.batch_size counts prompts per step "
          "(= per_device_train_batch_size * gradient_accumulation_steps * processes / num_generations) and "
          "train.mini_batch_size prompts per optimizer step: set those")

#: TRL's top-level names and their resd keys (see the module docstring)
TRL_NAMES: dict[str, TrlName] = {
    # model (trl.ModelConfig and GRPOTrainer's model argument)
    "model_name_or_path": _to("model.name"),
    "dtype": _choice("model.precision", {"bfloat16": "bf16", "float32": "fp32"}),
    "torch_dtype": _choice("model.precision", {"bfloat16": "bf16", "float32": "fp32"}),
    "bf16": _choice("model.precision", {True: "bf16", False: "fp32"}),
    "fp16": _none("resd trains in bf16 or fp32 (model.precision)", False),
    "gradient_checkpointing": _to("model.gradient_checkpointing"),
    "chat_template_kwargs": _to("model.chat_template_kwargs"),
    "use_peft": _to("model.lora.enabled"),
    "lora_r": _to("model.lora.r"),
    "lora_alpha": _to("model.lora.alpha"),
    "lora_dropout": _to("model.lora.dropout"),
    "lora_target_modules": _to("model.lora.target_modules"),
    # data
    "max_prompt_length": _to("data.max_prompt_length",
                             note="an over-long prompt is dropped; data.prompt_overflow=truncate keeps its end, "
                             "as TRL does"),
    "shuffle_dataset": _to("data.shuffle"),
    "remove_unused_columns": _none("resd passes every column to the environment", False),
    "reward_weights": _none("they are arguments of the functions environment: data.env=functions with "
                            "data.env_kwargs.reward_weights (see docs/from-trl.md)"),
    # sampling
    "num_generations": _to("rollout.n"),
    "max_completion_length": _to("rollout.max_new_tokens"),
    "temperature": _to("rollout.temperature"),
    "top_p": _to("rollout.top_p"),
    "top_k": _to("rollout.top_k"),
    "min_p": _none("resd samples with temperature, top_p and top_k only", None),
    "repetition_penalty": _none("resd samples with temperature, top_p and top_k only", 1.0),
    "use_vllm": _choice("rollout.backend", {True: "vllm", False: "hf"}),
    "vllm_mode": _none("resd's vLLM engine runs in the training process (TRL's 'colocate')", "colocate"),
    "vllm_gpu_memory_utilization": TrlName("rollout.vllm.gpu_memory_utilization",
                                           lambda v, get: {"rollout.vllm": {**get("rollout.vllm"),
                                                                            "gpu_memory_utilization": v}}),
    "num_generations_eval": _to("eval.k"),
    # steps, batches, optimizer
    "learning_rate": _to("train.lr"),
    "max_steps": TrlName("train.steps", _steps),
    "num_train_epochs": _none("resd counts training steps (train.steps = epochs * rows / train.batch_size), or "
                              "runs one pass over the data with train.steps=null and stream.enabled=true"),
    "warmup_steps": TrlName("train.warmup_steps", _warmup),
    "warmup_ratio": _none("train.warmup_steps counts optimizer steps; give a number of steps"),
    "lr_scheduler_type": _choice("train.lr_schedule", {"constant": "constant", "constant_with_warmup": "constant",
                                                       "cosine": "cosine"}, "resd's schedules start with "
                                 "train.warmup_steps of linear warm-up"),
    "weight_decay": _to("train.weight_decay"),
    "adam_beta1": _beta(0),
    "adam_beta2": _beta(1),
    "max_grad_norm": _to("train.grad_clip"),
    "optim": _none("resd's optimizer is AdamW", "adamw_torch", "adamw_torch_fused"),
    "per_device_train_batch_size": _none(_BATCH),
    "gradient_accumulation_steps": _none(_BATCH),
    "generation_batch_size": _none(_BATCH),
    "steps_per_generation": _none(_BATCH),
    "num_iterations": _none("several updates per batch of rollouts: the stream schedule (stream.enabled=true, "
                            "stream.inner_steps) or train.mini_batch_size", 1),
    # the policy-gradient loss
    "beta": _none("resd has no KL term to a reference model (its distillation teacher is teacher.kind)", 0),
    "epsilon": _to("loss.clip_low", note="TRL's epsilon_high defaults to epsilon; resd's loss.clip_high stays 0.28 "
                   "unless set"),
    "epsilon_high": _to("loss.clip_high"),
    "loss_type": _choice("loss.pg_aggregation", _PG_AGGREGATION),
    "scale_rewards": _choice("loss.norm_adv_by_std", {"group": True, True: True, "none": False, False: False}),
    "importance_sampling_level": _none("resd's importance ratios are per token", "token"),
    "mask_truncated_completions": _none("resd trains on truncated completions too", False),
    # self-distillation (TRL's SDPOConfig)
    "distillation_alpha": _to("loss.alpha"),
    "distillation_topk": _to("loss.topk"),
    "distillation_add_tail": _to("loss.add_tail"),
    "distillation_is_clip": _to("loss.is_clip"),
    "distillation_mode": TrlName("loss.full_logit (and loss.topk)", _distillation_mode),
    "distillation_weight": TrlName("loss.pg_weight", _distillation_weight, "loss.pg_weight = 1 - distillation_weight"),
    "teacher_model_kind": _choice("teacher.kind", {"ema": "ema", "live": "live", "base": "frozen"}),
    "teacher_update_rate": _to("teacher.update_rate"),
    "teacher_sync_steps": _none("resd's EMA teacher follows the student after every optimizer step", 1),
    "use_successful_as_teacher": _none("resd always uses a successful sibling as the demonstration", True),
    "max_reprompt_len": _to("reprompt.max_reprompt_len"),
    "success_reward_threshold": _to("reprompt.success_reward_threshold"),
    "dont_reprompt_on_self_success": _to("reprompt.dont_reprompt_on_self_success"),
    "remove_thinking_from_demonstration": _to("reprompt.remove_thinking_from_demonstration"),
    "include_environment_feedback": _to("reprompt.include_environment_feedback"),
    "environment_feedback_only_without_solution": _to("reprompt.environment_feedback_only_without_solution"),
    "reprompt_template": _to("reprompt.reprompt_template"),
    "solution_template": _to("reprompt.solution_template"),
    "feedback_template": _to("reprompt.feedback_template"),
    # logging and checkpoints
    "output_dir": _to("logging.run_dir"),
    "report_to": TrlName("logging.report_to", _report_to),
    "run_name": _to("logging.run_name"),
    "logging_steps": _to("logging.log_every"),
    "save_steps": _to("logging.save_every"),
    "save_total_limit": _to("logging.keep_last"),
    "save_strategy": _none("resd checkpoints every logging.save_every steps and at the end", "steps"),
    "eval_steps": _to("eval.every_steps"),
    "eval_strategy": _none("resd validates every eval.every_steps steps (0: never)", "no", "steps"),
    "push_to_hub": _none("resd does not upload; `resd export RUN_DIR OUT_DIR` writes a Hugging Face model "
                         "directory to upload", False),
}


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    out: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def _get(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def translate_trl_names(layer: dict[str, Any], source: str, lookup: Lookup) -> dict[str, Any]:
    """``layer`` (one YAML file or the overrides) with TRL's top-level names replaced by resd's keys.

    Warns once per name; raises :class:`resd.config.ConfigError` for a TRL name with no resd equivalent, and for
    a TRL name given together with the resd key it stands for. ``lookup(key)``: the value of a resd key so far.
    """
    from resd.config import Config, ConfigError, deep_merge

    out = {k: v for k, v in layer.items() if not (k in TRL_NAMES and k not in Config.model_fields)}
    if isinstance(out.get("model"), str):  # GRPOTrainer(model="Qwen/...")
        log.warning("%s: model: %r is TRL's model argument; resd calls it model.name", source, out["model"])
        out["model"] = {"name": out["model"]}
    translated: dict[str, str] = {}  # resd key -> TRL name that set it
    for name, value in layer.items():
        if name not in TRL_NAMES or name in Config.model_fields:
            continue
        entry = TRL_NAMES[name]

        def current(key: str) -> Any:
            found, got = _get(out, key)
            return got if found else lookup(key)

        try:
            assignments = entry.convert(value, current)
        except NoEquivalent as e:
            raise ConfigError(f"{source}: {name}={value!r} is a TRL setting that resd cannot express: {e}") from None
        if not assignments:
            log.warning("%s: %s=%r is TRL's name and resd has no such key; resd behaves that way already, so it "
                        "is ignored", source, name, value)
            continue
        for key in assignments:
            if key in translated and translated[key] != name and not name.startswith("adam_beta"):
                raise ConfigError(f"{source}: {translated[key]} and {name} (TRL's names) both set {key}")
            if _get(layer, key)[0]:
                raise ConfigError(f"{source}: {name} (TRL's name for {key}) and {key} are both given; keep one")
            translated[key] = name
            out = deep_merge(out, _nest(key, assignments[key]), env_layer=False)
        converted = assignments != {entry.resd: value}  # a new value or several keys: show them
        shown = " (" + ", ".join(f"{k}={v!r}" for k, v in assignments.items()) + ")" if converted else ""
        log.warning("%s: %s is TRL's name; resd calls it %s%s%s", source, name, entry.resd, shown,
                    f"; {entry.note}" if entry.note else "")
    return out
