"""Seconds per SDPO training step, peak memory and bytes of state per parameter: our Trainer against
TRL's ``SDPOTrainer``, full-parameter and LoRA, and our step against its bare compute.

Both trainers get the same model (the same saved checkpoint), the same prompts (the ``arithmetic``
environment's train split, in order, no shuffling), the same reward (that environment's ``score``)
and the same settings: group size ``--n``, ``--prompts`` prompts per step, exactly ``--length``
generated tokens per response (``min_new_tokens = max_new_tokens``, so both generate the same number
of tokens), temperature 1, top-k 100 distillation with the tail bin, alpha 0.5, per-sequence token
mean, learning rate ``--lr`` (constant, no warm-up, no weight decay, gradient clip 1.0), EMA teacher
with rate 0.05 updated after every step, one on-policy optimizer step per batch, and the teacher
context built from the first successful sibling (no environment feedback). The success threshold
defaults to 0 so that every sample gets a teacher context: both trainers then distil every response
token (with a real threshold our trainer skips the samples without a teacher context, TRL still
runs them through the model).

Setups (``--setups``, default both; ``--lora`` is short for ``--setups lora``):

- ``full``: every weight trains. Ours keeps the optimizer and EMA-teacher state of ``--memory``
  (``exact``: float32 masters as bf16 weight + int16 remainder, float32 moments, the teacher's EMA
  likewise; ``lean``: bf16 everything with stochastic rounding; several modes give several rows).
  TRL trains the weights in their dtype with ``torch.optim.AdamW`` and an EMA teacher copy in the
  same dtype (``SyncTeacherModelCallback``).
- ``lora``: a LoRA adapter (resd's ``model.lora`` defaults unless ``--lora-r/--lora-alpha/
  --lora-targets``: r 16, alpha 32, dropout 0, ``all-linear``) over the frozen base. Ours: config
  ``model.lora.enabled=true`` (EMA teacher = a second adapter). TRL: ``peft_config=peft.LoraConfig``
  with the same r/alpha/dropout/targets (pure-LoRA training: its EMA teacher is a second adapter,
  ``PEFTAdapterEMACallback``, with float32 shadow copies).

Each (trainer, setup, memory mode) runs in its own fresh subprocess (peak RSS = ``ru_maxrss`` of
that process, read before the bare-compute measurement below), on CPU, with ``--threads`` torch
threads; ``--warmup`` warm-up steps, then ``--steps`` timed steps. A step is split into generation
(``model.generate``), the rest of the rollout phase (scoring, teacher contexts, tokenization),
forward + loss, backward, and the optimizer part (clip, AdamW, EMA, bookkeeping). The split between
forward + loss and backward differs: our fused loss forms the LM head's gradient in the forward
(chunk by chunk), so compare their sum (printed as ``forward + backward``). ``--rounds R`` repeats
every run R times in alternating order and keeps each run's fastest round.

Bytes per parameter: after the last timed step, the persistent state measured on the real tensors
(every storage counted once, whole) divided by the number of model parameters (for LoRA: base +
the student's adapter; a teacher adapter counts as teacher state): ``weights`` (the model's
parameters), ``gradients`` still alive, ``optimizer`` (every tensor in the optimizer's state: Adam
moments, step counters, our int16 master remainders and any float32 master copies), ``teacher``
(a teacher copy's weights and buffers, its EMA remainders or float32 shadows, a teacher adapter and
TRL's adapter shadow weights), ``other`` (the model's buffers). For ours the library's own count
(``resd.trainer.optim.persistent_bytes``) is printed beside it when the totals differ.

Bare compute (ours only, ``--no-bare`` skips it): after the timed steps, the same last batch's pure
parts timed with plain torch/transformers calls on the same module, each once (best of
``--bare-repeats``):

1. generation: plain ``model.generate`` of the batch's prompt rows, left-padded, in chunks of
   ``rollout.batch_size`` rows, ``min_new_tokens = max_new_tokens = --length``, dynamic KV cache,
   greedy (the forward passes plus an argmax over the vocabulary: the floor of any sampler; with
   ``--bare-sample``, HF's own multinomial sampling at temperature 1, top-p 1, no top-k, no
   repetition penalty, which on a small model with a 151,936-token vocabulary costs more than
   resd's sampler);
2. student forward + backward: the decoder on the right-padded rows prompt + response (one batch,
   ``use_cache=False``, training mode: gradient checkpointing where the model has it), the LM head
   on the response positions only, float32 full-vocabulary cross-entropy against the response
   tokens, ``backward()`` (gradients are dropped after, untimed);
3. teacher forward: under ``no_grad``, the teacher's module (for LoRA the same model; which adapter
   is active does not change the cost) on teacher context + response rows, head on the response
   positions (float32 logits).

Not in it: scoring, tokenization, the distillation loss beyond a cross-entropy, the optimizer
step and the EMA. ``step / bare compute`` = mean step time / (1 + 2 + 3) (target <= 1.15); TRL's
step is also shown against our bare compute of the same setup.

Models: ``--model tiny`` (default) is a randomly initialized small Qwen2 around the real Qwen
tokenizer (vocabulary 151,936, so the loss work is realistic) saved to a temp dir;
``--model embedded`` is the embedded Qwen2.5-Coder-0.5B-Instruct (630 M parameters, untied head;
bf16). Our full-parameter trainer keeps 16 bytes/parameter in ``exact`` mode (8 in ``lean``) before
activations, about 10 GB (5 GB); TRL trains the bf16 weights directly, about 5 GB. Check that enough
memory is free before running it.

Run: ``python benchmarks/sdpo_step_vs_trl.py`` (tiny model, all four runs; ``--rounds 2`` repeats
each in alternating order and keeps its fastest round, which helps on a shared machine), or
``python benchmarks/sdpo_step_vs_trl.py --model embedded --prompts 2 --n 4 --length 32 --steps 2
--memory exact lean --json embedded.json``. Quick runs: ``--setups full``, ``--lora``,
``--trainers ours``. Needs ``pip install trl peft``. Nothing touches the network
(``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
    "TRL_EXPERIMENTAL_SILENCE": "1",
}.items():
    os.environ[_key] = _value

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PHASES = ("generate", "rollout_other", "forward_loss", "backward", "optimizer_other")
STATE_KINDS = ("weights", "gradients", "optimizer", "teacher", "other")
BARE_PARTS = ("generate", "forward_backward", "teacher_forward")


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timers:
    """Accumulates wall time per bucket; ``wrap`` replaces a callable attribute by a timed one.
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock reading on an accelerator."""

    def __init__(self, sync=None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = sync or (lambda: None)

    def wrap(self, owner, name: str, bucket: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[bucket] += time.perf_counter() - start

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds.clear()
        return out


def phases(total: float, t: dict[str, float]) -> dict[str, float]:
    """Split one step's wall time into PHASES from the raw buckets."""
    gen = t.get("generate", 0.0)
    fwd = t.get("forward_loss", 0.0)
    bwd = t.get("backward", 0.0)
    rollout = t.get("rollout", 0.0)
    return {
        "total": total,
        "generate": gen,
        "rollout_other": rollout - gen,
        "forward_loss": fwd,
        "backward": bwd,
        "optimizer_other": total - rollout - fwd - bwd,
    }


def count_state(**groups) -> dict[str, int]:
    """Bytes of each group of tensors (keyword = kind, in STATE_KINDS order of priority): every
    storage counted once, whole, under the first kind that names it. ``None`` entries are skipped."""
    import torch

    seen: set[tuple[str, int]] = set()
    out: dict[str, int] = {}
    for kind in STATE_KINDS:
        total = 0
        for t in groups.get(kind, ()):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            if storage.nbytes() == 0 or key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
        out[kind] = total
    out["total"] = sum(out[k] for k in STATE_KINDS)
    return out


def device_stats(args: argparse.Namespace):
    """(synchronize or None, a function giving the CUDA memory numbers so far) for the job's device."""
    import torch

    if not str(args.device).startswith("cuda"):
        return None, lambda: {}
    device = torch.device(args.device)

    def stats() -> dict:
        torch.cuda.synchronize(device)
        return {"cuda_allocated_mib": torch.cuda.memory_allocated(device) / 2**20,
                "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "cuda_peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
                "device_name": torch.cuda.get_device_name(device)}

    return (lambda: torch.cuda.synchronize(device)), stats


def lora_targets(spec: str) -> str | list[str]:
    """``all-linear`` stays a string (PEFT's keyword); ``q_proj,v_proj`` becomes a list."""
    return spec if "," not in spec else [s.strip() for s in spec.split(",") if s.strip()]


# ---------------------------------------------------------------------------------------- ours
def run_ours(args: argparse.Namespace) -> dict:
    import torch

    from resd import envs
    from resd.config import load_config
    from resd.models import load_model, load_tokenizer
    from resd.trainer.trainer import Trainer

    torch.set_num_threads(args.threads)
    dtype = args.precision
    sync, cuda_stats = device_stats(args)
    tokenizer = load_tokenizer(args.model_dir)
    model = load_model(args.model_dir, dtype)
    env = envs.load("arithmetic")
    run_dir = tempfile.mkdtemp(prefix="bench-ours-")
    overrides = [
        "name=bench-ours", f"seed={args.seed}", f"model.name={args.model_dir}", f"model.precision={dtype}",
        f"model.device={args.device}",
        "data.env=arithmetic", "data.shuffle=false",
        f"rollout.n={args.n}", f"rollout.max_new_tokens={args.length}", f"rollout.batch_size={args.prompts * args.n}",
        "rollout.temperature=1.0", "rollout.top_p=1.0",
        f"train.steps={args.warmup + args.steps}", f"train.batch_size={args.prompts}",
        f"train.mini_batch_size={args.prompts}", f"train.lr={args.lr}", "train.warmup_steps=0",
        "train.weight_decay=0.0", "train.grad_clip=1.0", "train.rollout_is_threshold=null",
        f"train.memory={args.memory}",
        "loss.alpha=0.5", "loss.topk=100", "loss.add_tail=true", "loss.full_logit=true",
        "loss.aggregation=seq-mean-token-mean", "teacher.kind=ema", "teacher.update_rate=0.05",
        f"reprompt.success_reward_threshold={args.threshold}", "reprompt.include_environment_feedback=false",
        "reprompt.dont_reprompt_on_self_success=true", "reprompt.remove_thinking_from_demonstration=true",
        f"logging.run_dir={run_dir}", "logging.progress=false", "logging.samples_per_step=0",
    ]
    if args.checkpointing != "default":
        overrides.append(f"model.gradient_checkpointing={'true' if args.checkpointing == 'on' else 'false'}")
    if args.setup == "lora":
        targets = lora_targets(args.lora_targets)
        targets = targets if isinstance(targets, str) else "[" + ",".join(targets) + "]"
        overrides += ["model.lora.enabled=true", f"model.lora.r={args.lora_r}", f"model.lora.alpha={args.lora_alpha}",
                      "model.lora.dropout=0.0", f"model.lora.target_modules={targets}"]
    config = load_config(preset="sdpo", overrides=overrides)
    trainer = Trainer(config, model=model, tokenizer=tokenizer, env=env, run_dir=run_dir)

    plain_generate = trainer.model.generate  # (the bound method, before it is wrapped below)

    def fixed_length_generate(*a, **kw):
        kw.setdefault("min_new_tokens", args.length)
        return plain_generate(*a, **kw)

    trainer.model.generate = fixed_length_generate
    timers = Timers(sync)
    timers.wrap(trainer.model, "generate", "generate")
    timers.wrap(trainer.learner, "_micro_loss", "forward_loss")
    timers.wrap(torch.Tensor, "backward", "backward")
    setup_rss = rss_mib()
    setup_cuda = cuda_stats().get("cuda_allocated_mib")
    if setup_cuda is not None:
        torch.cuda.reset_peak_memory_stats(torch.device(args.device))

    steps, tokens, losses, fractions = [], [], [], []
    samples = []
    for step in range(args.warmup + args.steps):
        timers.take()
        timers.sync()
        start = time.perf_counter()
        examples = trainer.data.next_batch(args.prompts)
        samples, _ = trainer.sample(examples)
        metrics = trainer.algorithm.prepare(samples, trainer.step + 1)
        metrics.update(trainer.learner.tokenize_teacher_prompts(samples))
        rollout_end = time.perf_counter()
        metrics.update(trainer.learner.update(samples))
        timers.sync()
        total = time.perf_counter() - start
        trainer.step += 1
        t = timers.take()
        t["rollout"] = rollout_end - start
        if step >= args.warmup:
            steps.append(phases(total, t))
        tokens.append(sum(len(s.response_ids) for s in samples))
        losses.append(metrics.get("loss/distill", float("nan")))
        fractions.append(metrics.get("self_distillation/reprompt_sample_fraction", float("nan")))
    peak = peak_rss_mib()  # before the bare-compute measurement, which builds full-vocabulary logits
    cuda = cuda_stats()
    if cuda:
        cuda["cuda_setup_mib"] = setup_cuda
    state, library_state = ours_state_bytes(trainer)
    bare = measure_bare(trainer, samples, args, plain_generate, timers.sync) if args.bare else None
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"trainer": "ours", **cuda, "setup_rss_mib": setup_rss, "peak_rss_mib": peak, "steps": steps,
            "tokens_per_step": tokens, "distill_loss": losses, "sd_fraction": fractions, "state_bytes": state,
            "library_state_bytes": library_state, "bare": bare, "trainable_params": trainable(trainer.model)}


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ours_state_bytes(trainer) -> tuple[dict, dict | None]:
    """Our persistent state after a step (see the module docstring), and the library's own count."""
    learner = trainer.learner
    model, teacher, opt = trainer.model, learner.teacher, learner.optimizer
    inner = getattr(opt, "optimizer", opt)
    adapter = list(teacher.adapter.values()) if teacher is not None else []
    adapter_ids = {id(p) for p in adapter}
    params = [p for p in model.parameters() if id(p) not in adapter_ids]
    masters = list(getattr(opt, "master", None) or [])
    teacher_tensors = []
    if teacher is not None:
        if teacher.module is not None:
            teacher_tensors += [*teacher.module.parameters(), *teacher.module.buffers()]
        teacher_tensors += [*teacher.residual.values(), *teacher.shadow.values(), *adapter]
    counts = count_state(
        weights=params,
        gradients=[p.grad for p in params] + list(getattr(inner, "_grads", None) or []) + [m.grad for m in masters],
        optimizer=[t for st in inner.state.values() for t in st.values()] + masters,
        teacher=teacher_tensors,
        other=list(model.buffers()),
    )
    counts["params"] = sum(p.numel() for p in params)
    library = None
    try:
        from resd.trainer.optim import persistent_bytes

        library = persistent_bytes(model, opt, teacher)
    except ImportError:  # an older tree without it
        pass
    return counts, library


def measure_bare(trainer, samples, args: argparse.Namespace, plain_generate, sync) -> dict:
    """The bare compute of the last batch (see the module docstring): seconds of each part."""
    import torch
    import torch.nn.functional as F

    model = trainer.model
    generator = trainer.policy.generator
    pad, eos = generator.pad_id, list(generator.stop_ids)
    device = next(model.parameters()).device
    teacher = trainer.learner.teacher
    teacher_module = teacher.module if teacher is not None and teacher.module is not None else model
    chunk = trainer.config.rollout.batch_size
    sampling = (dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0) if args.bare_sample
                else dict(do_sample=False))

    def left_padded(rows):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(device), mask.to(device)

    def right_padded(contexts, responses):
        width = max(len(c) + len(r) for c, r in zip(contexts, responses, strict=True))
        ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        positions, targets = [], []
        for i, (c, r) in enumerate(zip(contexts, responses, strict=True)):
            ids[i, : len(c) + len(r)] = torch.tensor(list(c) + list(r), dtype=torch.long)
            mask[i, : len(c) + len(r)] = 1
            positions += range(i * width + len(c) - 1, i * width + len(c) - 1 + len(r))
            targets += r
        return ids.to(device), mask.to(device), torch.tensor(positions, device=device), torch.tensor(targets, device=device)

    def generate() -> None:
        model.eval()
        try:
            with torch.no_grad():
                rows = [s.prompt_ids for s in samples]
                for start in range(0, len(rows), chunk):
                    ids, mask = left_padded(rows[start : start + chunk])
                    plain_generate(input_ids=ids, attention_mask=mask, min_new_tokens=args.length,
                                   max_new_tokens=args.length, pad_token_id=pad, eos_token_id=eos,
                                   repetition_penalty=1.0, **sampling)
        finally:
            model.train()

    def logits_at(module, ids, mask, positions):
        hidden = module.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return module.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[positions]).float()

    student_rows = right_padded([s.prompt_ids for s in samples], [s.response_ids for s in samples])
    with_teacher = [s for s in samples if s.teacher_ids]
    teacher_rows = (right_padded([s.teacher_ids for s in with_teacher], [s.response_ids for s in with_teacher])
                    if with_teacher else None)

    def forward_backward() -> None:
        ids, mask, positions, targets = student_rows
        F.cross_entropy(logits_at(model, ids, mask, positions), targets).backward()

    def teacher_forward() -> None:
        if teacher_rows is not None:
            with torch.no_grad():
                logits_at(teacher_module, *teacher_rows[:3])

    def drop_grads() -> None:
        trainer.learner.optimizer.zero_grad()
        model.zero_grad(set_to_none=True)

    best = dict.fromkeys(BARE_PARTS, float("inf"))
    for _ in range(max(1, args.bare_repeats)):
        for name, fn in (("generate", generate), ("forward_backward", forward_backward),
                         ("teacher_forward", teacher_forward)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
            drop_grads()
    best["total"] = sum(best[p] for p in BARE_PARTS)
    best["tokens"] = len(samples) * args.length
    return best


# ----------------------------------------------------------------------------------------- TRL
def run_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from resd import envs
    from resd.models import load_tokenizer

    torch.set_num_threads(args.threads)
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[args.precision]
    sync, cuda_stats = device_stats(args)
    tokenizer = load_tokenizer(args.model_dir)
    env = envs.load("arithmetic")
    rows = env.load_split("train")
    dataset = Dataset.from_list([{"prompt": env.prompt_messages(r), "row": i} for i, r in enumerate(rows)])

    def env_reward(prompts, completions, row, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [env.score(text, rows[i]).score for text, i in zip(texts, row, strict=True)]

    total_steps = args.warmup + args.steps
    extra = {}
    if args.checkpointing != "default":
        extra["gradient_checkpointing"] = args.checkpointing == "on"
    config = SDPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        seed=args.seed,
        use_cpu=args.device == "cpu",
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        max_steps=total_steps,
        per_device_train_batch_size=args.prompts * args.n,
        gradient_accumulation_steps=1,
        num_generations=args.n,
        max_completion_length=args.length,
        generation_kwargs={"min_new_tokens": args.length},
        temperature=1.0,
        top_p=1.0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        shuffle_dataset=False,
        model_init_kwargs={"dtype": dtype},
        distillation_mode="topk_logits",
        distillation_topk=100,
        distillation_add_tail=True,
        distillation_alpha=0.5,
        distillation_weight=1.0,
        distillation_is_clip=2.0,
        teacher_model_kind="ema",
        teacher_update_rate=0.05,
        teacher_sync_steps=1,
        success_reward_threshold=args.threshold,
        dont_reprompt_on_self_success=True,
        include_environment_feedback=False,
        remove_thinking_from_demonstration=True,
        **extra,
    )
    peft_config = None
    if args.setup == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                                 target_modules=lora_targets(args.lora_targets), task_type="CAUSAL_LM")
    trainer = SDPOTrainer(model=args.model_dir, reward_funcs=env_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)

    timers = Timers(sync)
    counted: list[int] = []
    generate = trainer._generate

    def counting_generate(prompt_ids):
        out = generate(prompt_ids)
        counted.append(sum(len(c) for c in out[1]))
        return out

    trainer._generate = counting_generate
    timers.wrap(trainer, "_generate", "generate")
    timers.wrap(trainer, "_prepare_training_batch", "rollout")
    timers.wrap(trainer, "compute_loss", "forward_loss")
    timers.wrap(torch.Tensor, "backward", "backward")
    record: dict = {"steps": [], "sd_fraction": [], "distill_loss": []}
    metrics = trainer._metrics["train"]

    class StepTimer(TrainerCallback):
        """Added last, so the EMA teacher sync (an on_step_end callback) is inside the timed step."""

        def on_step_begin(self, args_, state, control, **kwargs):
            timers.take()
            timers.sync()
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            timers.sync()
            total = time.perf_counter() - self.start
            if state.global_step > args.warmup:
                record["steps"].append(phases(total, timers.take()))
            for key, name in (("distill_loss", "self_distillation/distillation_loss"),
                              ("sd_fraction", "self_distillation/reprompt_sample_fraction")):
                record[key].append(metrics[name][-1] if metrics.get(name) else float("nan"))
            if state.global_step == total_steps:  # after the optimizer step, zero_grad and the EMA
                record["peak_rss_mib"] = peak_rss_mib()
                record["cuda"] = cuda_stats()
                record["state_bytes"] = trl_state_bytes(trainer)

    trainer.add_callback(StepTimer())
    setup_rss = rss_mib()
    setup_cuda = cuda_stats().get("cuda_allocated_mib")
    if setup_cuda is not None:  # (the optimizer state is made inside train())
        torch.cuda.reset_peak_memory_stats(torch.device(args.device))
    trainer.train()
    shutil.rmtree(config.output_dir, ignore_errors=True)
    cuda = record.get("cuda") or {}
    if cuda:
        cuda["cuda_setup_mib"] = setup_cuda
    return {"trainer": "trl", **cuda, "setup_rss_mib": setup_rss, "peak_rss_mib": record.get("peak_rss_mib", peak_rss_mib()),
            "steps": record["steps"], "tokens_per_step": counted, "distill_loss": record["distill_loss"],
            "sd_fraction": record["sd_fraction"], "state_bytes": record.get("state_bytes"),
            "trainable_params": trainable(trainer.model)}


def trl_state_bytes(trainer) -> dict:
    """TRL's persistent state after a step: model, torch optimizer state, teacher copy or adapter and
    the adapter EMA's shadow weights."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    named = list(model.named_parameters())
    is_teacher_adapter = [".teacher." in n and "lora_" in n for n, _ in named]
    params = [p for (_, p), t in zip(named, is_teacher_adapter, strict=True) if not t]
    teacher_tensors = [p for (_, p), t in zip(named, is_teacher_adapter, strict=True) if t]
    teacher_model = trainer.accelerator.unwrap_model(trainer.teacher_model)
    if teacher_model is not model:
        teacher_tensors += [*teacher_model.parameters(), *teacher_model.buffers()]
    for callback in trainer.callback_handler.callbacks:
        shadow = getattr(callback, "shadow_weights", None)
        if shadow:
            teacher_tensors += list(shadow.values())
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    counts = count_state(
        weights=params,
        gradients=[p.grad for p in params],
        optimizer=[t for st in optimizer.state.values() for t in st.values()],
        teacher=teacher_tensors,
        other=list(model.buffers()),
    )
    counts["params"] = sum(p.numel() for p in params)
    return counts


# --------------------------------------------------------------------------------------- driver
def prepare_model(args: argparse.Namespace, workdir: Path) -> str:
    """The checkpoint directory both trainers load."""
    from resd.models import build_tiny_model, load_tokenizer
    from resd.models.loading import resolve_model_path

    if args.model == "embedded":
        return resolve_model_path("embedded")
    tokenizer = load_tokenizer("embedded")
    model = build_tiny_model(len(tokenizer), hidden_size=args.hidden, num_layers=args.layers, num_heads=4,
                             num_kv_heads=2, intermediate_size=args.hidden * 3, seed=args.seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path = workdir / "tiny-qwen2"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


JOB_FIELDS = ("model", "prompts", "n", "length", "steps", "warmup", "lr", "threshold", "threads", "seed", "lora_r",
              "lora_alpha", "lora_targets", "checkpointing", "bare", "bare_repeats", "bare_sample", "device", "precision")


def job_key(trainer: str, setup: str, memory: str | None) -> str:
    return f"{trainer}-{setup}" + (f"-{memory}" if trainer == "ours" else "")


def jobs_of(args: argparse.Namespace) -> list[dict]:
    """The runs: per setup, ours in each memory mode, then TRL."""
    jobs = []
    for setup in args.setups:
        if "ours" in args.trainers:
            jobs += [{"trainer": "ours", "setup": setup, "memory": m} for m in args.memory]
        if "trl" in args.trainers:
            jobs.append({"trainer": "trl", "setup": setup, "memory": None})
    for job in jobs:
        job["key"] = job_key(job["trainer"], job["setup"], job["memory"])
    return jobs


def launch(job: dict, args: argparse.Namespace, model_dir: str) -> dict:
    spec = {**{k: getattr(args, k) for k in JOB_FIELDS}, **job, "model_dir": model_dir}
    cmd = [sys.executable, __file__, "--job", json.dumps(spec)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # stderr passes through
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(job)
    return result


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def per_step(r: dict) -> dict[str, float]:
    out = {p: mean([s[p] for s in r["steps"]]) for p in ("total", *PHASES)}
    out["forward_backward"] = out["forward_loss"] + out["backward"]
    return out


def ratio(a: float | None, b: float | None, floor: float = 1e-3) -> str:
    if a is None or b is None or b != b or a != a or abs(b) < floor:
        return "-"
    return f"{a / b:.2f}"


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or x != x else format(x, spec)


def label(key: str) -> str:
    trainer, setup, *memory = key.split("-")
    name = "resd" if trainer == "ours" else "TRL" + ("+PEFT" if setup == "lora" else "")
    return f"{name} ({memory[0]})" if memory else name


def bytes_per_param(r: dict) -> dict[str, float] | None:
    state = r.get("state_bytes")
    if not state:
        return None
    n = max(1, state["params"])
    return {k: state[k] / n for k in (*STATE_KINDS, "total")}


def setup_table(setup: str, results: dict[str, dict]) -> list[dict]:
    """Print the table of one setup; returns its summary rows (ours vs TRL)."""
    keys = [k for k in results if results[k]["setup"] == setup]
    ours = [k for k in keys if results[k]["trainer"] == "ours"]
    trl = next((k for k in keys if results[k]["trainer"] == "trl"), None)
    steps = {k: per_step(results[k]) for k in keys}
    bpp = {k: bytes_per_param(results[k]) for k in keys}
    bares = [results[k]["bare"] for k in ours if results[k].get("bare")]
    shared_bare = min((b["total"] for b in bares), default=None)
    any_r = results[keys[0]]
    params = (any_r.get("state_bytes") or {}).get("params")
    print(f"\n### {'full-parameter' if setup == 'full' else 'LoRA'}: "
          + ", ".join(f"{label(k)} trains {results[k]['trainable_params'] / 1e6:.2f} M" for k in keys)
          + (f" of {params / 1e6:.2f} M parameters" if params else ""))
    header = [label(k) for k in keys] + ([f"{label(k)} / TRL" for k in ours] if trl else [])
    print("| | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")

    def row(name: str, values: dict[str, float | None], spec: str, ratios: bool = True) -> None:
        cells = [fmt(values.get(k), spec) for k in keys]
        if trl:
            cells += [ratio(values.get(k), values.get(trl)) if ratios else "-" for k in ours]
        print(f"| {name} | " + " | ".join(cells) + " |")

    row("s / step", {k: steps[k]["total"] for k in keys}, ".2f")
    for p in PHASES:
        row(f"  {p} (s)", {k: steps[k][p] for k in keys}, ".2f")
    row("  forward + backward (s)", {k: steps[k]["forward_backward"] for k in keys}, ".2f")
    row("peak RSS (MiB)", {k: results[k]["peak_rss_mib"] for k in keys}, ",.0f")
    row("RSS after set-up (MiB)", {k: results[k]["setup_rss_mib"] for k in keys}, ",.0f")
    row("peak - set-up (MiB)", {k: results[k]["peak_rss_mib"] - results[k]["setup_rss_mib"] for k in keys}, ",.0f")
    if any("cuda_peak_mib" in results[k] for k in keys):
        row("CUDA peak allocated (MiB)", {k: results[k].get("cuda_peak_mib") for k in keys}, ",.0f")
        row("CUDA allocated after set-up (MiB)", {k: results[k].get("cuda_setup_mib") for k in keys}, ",.0f")
    row("bytes / parameter", {k: bpp[k]["total"] if bpp[k] else None for k in keys}, ".2f")
    for kind in STATE_KINDS:
        row(f"  {kind}", {k: bpp[k][kind] if bpp[k] else None for k in keys}, ".2f", ratios=False)
    if bares:
        for part in BARE_PARTS:
            row(f"bare {part.replace('_', ' ')} (s)",
                {k: results[k]["bare"][part] for k in ours if results[k].get("bare")}, ".2f", ratios=False)
        row("bare compute (s)", {k: results[k]["bare"]["total"] for k in ours if results[k].get("bare")}, ".2f",
            ratios=False)
        against = {k: steps[k]["total"] / results[k]["bare"]["total"] for k in ours if results[k].get("bare")}
        if trl and shared_bare:
            against[trl] = steps[trl]["total"] / shared_bare
        row("step / bare compute", against, ".2f")
        gen = {k: steps[k]["generate"] / results[k]["bare"]["generate"] for k in ours if results[k].get("bare")}
        row("  generate / bare generate", gen, ".2f", ratios=False)
        rest = {k: (steps[k]["total"] - steps[k]["generate"])
                / (results[k]["bare"]["forward_backward"] + results[k]["bare"]["teacher_forward"])
                for k in ours if results[k].get("bare")}
        row("  rest of step / bare fwd+bwd+teacher", rest, ".2f", ratios=False)
    for k in ours:
        lib, mine = results[k].get("library_state_bytes"), results[k].get("state_bytes")
        if lib and mine and lib.get("total") != mine["total"]:
            print(f"note: {label(k)}: resd.trainer.optim.persistent_bytes counts {lib['total'] / max(1, lib['params']):.2f} "
                  f"bytes/param ({lib}), this script {mine['total'] / max(1, mine['params']):.2f}")
    summary = []
    for k in ours:
        entry = {"setup": setup, "ours": k, "trl": trl, "ours_step_over_bare": against.get(k) if bares else None,
                 "trl_step_over_bare": against.get(trl) if bares and trl else None}
        if trl:
            entry["time_ratio"] = {p: (steps[k][p] / steps[trl][p] if abs(steps[trl][p]) > 1e-3 else None)
                                   for p in ("total", *PHASES, "forward_backward")}
            entry["peak_rss_ratio"] = results[k]["peak_rss_mib"] / results[trl]["peak_rss_mib"]
            entry["bytes_per_param"] = {"ours": bpp[k]["total"] if bpp[k] else None,
                                        "trl": bpp[trl]["total"] if bpp[trl] else None}
            entry["bytes_per_param_ratio"] = (bpp[k]["total"] / bpp[trl]["total"] if bpp[k] and bpp[trl] else None)
        summary.append(entry)
    return summary


def report(results: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    ckpt = {"default": "each trainer's default (resd off, TRL on)", "on": "on for both", "off": "off for both"}
    print(f"\nmodel {args.model} ({args.precision}, {args.device}), {args.prompts} prompts x {args.n} samples x {args.length} tokens per step, top-k 100 "
          f"+ tail, alpha 0.5, EMA 0.05, lr {args.lr}, success threshold {args.threshold}, {args.threads} threads; "
          f"{args.warmup} warm-up step(s), mean of {args.steps} timed steps; gradient checkpointing "
          f"{ckpt[args.checkpointing]}; LoRA r {args.lora_r}, alpha {args.lora_alpha:g}, targets {args.lora_targets}")
    for k, r in results.items():
        print(f"{label(k)} [{r['setup']}]: mean s/step of each round {r['all_round_totals']}; generated tokens per step "
              f"{r['tokens_per_step']}, distilled-sample fraction {[round(x, 3) for x in r['sd_fraction']]}, "
              f"distillation loss {[float(format(x, '.3g')) for x in r['distill_loss']]}")
    summary = []
    for setup in args.setups:
        if any(r["setup"] == setup for r in results.values()):
            summary += setup_table(setup, results)
    for setup in args.setups:
        tokens = {k: r["tokens_per_step"][args.warmup:] for k, r in results.items() if r["setup"] == setup}
        if len({tuple(t) for t in tokens.values()}) > 1:
            print(f"WARNING: {setup}: generated token counts differ ({tokens}); compare per token")
    if any(s.get("trl") for s in summary):
        print("\n### summary: resd / TRL (time and memory ratios below 1 favour resd); step / bare compute "
              f"(bare = plain {'sampled' if args.bare_sample else 'greedy'} generate + student fwd/bwd with a "
              "cross-entropy + teacher forward, no optimizer/EMA; target <= 1.15)")
        cols = ["s/step", *PHASES, "fwd+bwd", "peak RSS", "bytes/param resd", "bytes/param TRL", "bytes/param ratio",
                "resd step/bare", "TRL step/bare"]
        print("| run | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for s in summary:
            if not s.get("trl"):
                continue
            t = s["time_ratio"]
            cells = [fmt(t[p], ".2f") for p in ("total", *PHASES, "forward_backward")]
            cells += [fmt(s["peak_rss_ratio"], ".2f"), fmt(s["bytes_per_param"]["ours"], ".2f"),
                      fmt(s["bytes_per_param"]["trl"], ".2f"), fmt(s["bytes_per_param_ratio"], ".2f"),
                      fmt(s["ours_step_over_bare"], ".2f"), fmt(s["trl_step_over_bare"], ".2f")]
            print(f"| {label(s['ours'])} vs {label(s['trl'])}, {s['setup']} | " + " | ".join(cells) + " |")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "embedded"], default="tiny")
    parser.add_argument("--hidden", type=int, default=256, help="tiny model hidden size")
    parser.add_argument("--layers", type=int, default=4, help="tiny model layers")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt (group size)")
    parser.add_argument("--length", type=int, default=64, help="generated tokens per sample (forced)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threshold", type=float, default=0.0, help="success threshold (0: every sample distilled)")
    parser.add_argument("--rounds", type=int, default=1, help="subprocess runs per trainer, alternating the order")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per trainer (1: robust when other jobs share the cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setups", nargs="+", choices=["full", "lora"], default=["full", "lora"],
                        help="full-parameter and/or LoRA runs (default both)")
    parser.add_argument("--lora", action="store_true", help="only the LoRA runs (same as --setups lora)")
    parser.add_argument("--trainers", nargs="+", choices=["ours", "trl"], default=["ours", "trl"])
    parser.add_argument("--memory", nargs="+", choices=["exact", "lean"], default=["exact"],
                        help="our train.memory mode(s); one resd run per mode (default exact)")
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: resd's model.lora.r)")
    parser.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: resd's model.lora.alpha)")
    parser.add_argument("--lora-targets", default=None,
                        help="PEFT target modules, 'all-linear' or comma-separated (default: resd's)")
    parser.add_argument("--checkpointing", choices=["default", "off", "on"], default="default",
                        help="gradient checkpointing: each trainer's default (resd off, TRL on), or the same for both")
    parser.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare-compute measurement")
    parser.add_argument("--bare-repeats", type=int, default=1, help="bare compute: best of N")
    parser.add_argument("--bare-sample", action="store_true",
                        help="bare generation samples with HF's multinomial sampler instead of greedy")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i] for both trainers")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="weights' dtype (default: bf16 for the embedded model, fp32 for the tiny one)")
    parser.add_argument("--json", help="write every number (and the summary) to this file")
    parser.add_argument("--job", help="internal: run one job (JSON) in this process")
    args = parser.parse_args()
    if args.job:
        job = argparse.Namespace(**json.loads(args.job))
        result = run_ours(job) if job.trainer == "ours" else run_trl(job)
        print(json.dumps(result))
        return
    if args.lora:
        args.setups = ["lora"]
    if args.precision is None:
        args.precision = "bf16" if args.model == "embedded" else "fp32"
    complete_lora_args(args)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-sdpo-") as workdir:
        results = run_jobs(args, prepare_model(args, Path(workdir)))
    summary = report(results, args)
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before / after: {load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores; "
          f"{args.rounds} round(s) per run, the fastest shown, peak RSS the largest of all rounds")
    if args.json:
        out = {"args": {k: v for k, v in vars(args).items() if k != "job"}, "results": results, "summary": summary,
               "load_average": [load_before, load_after], "cpu_count": os.cpu_count()}
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


def complete_lora_args(args: argparse.Namespace) -> None:
    """Unset LoRA options take resd's ``model.lora`` defaults (TRL+PEFT gets the same)."""
    from resd.config import LoraSection

    lora_defaults = LoraSection()
    args.lora_r = lora_defaults.r if args.lora_r is None else args.lora_r
    args.lora_alpha = lora_defaults.alpha if args.lora_alpha is None else args.lora_alpha
    if args.lora_targets is None:
        t = lora_defaults.target_modules
        args.lora_targets = t if isinstance(t, str) else ",".join(t)


def run_jobs(args: argparse.Namespace, model_dir: str) -> dict[str, dict]:
    """Every job of ``args`` in its own subprocess, ``args.rounds`` times in alternating order; the
    best round of each."""
    jobs = jobs_of(args)
    runs: dict[str, list[dict]] = {j["key"]: [] for j in jobs}
    for r in range(args.rounds):  # alternate the order so that drifting background load hits both alike
        for job in (jobs if r % 2 == 0 else jobs[::-1]):
            runs[job["key"]].append(launch(job, args, model_dir))
    return {key: best_round(rs) for key, rs in runs.items()}


def best_round(rounds: list[dict]) -> dict:
    """The round with the lowest mean step time; peak RSS is the maximum over all rounds."""
    best = dict(min(rounds, key=lambda r: mean([s["total"] for s in r["steps"]])))
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rounds)
    if all("cuda_peak_mib" in r for r in rounds):
        best["cuda_peak_mib"] = max(r["cuda_peak_mib"] for r in rounds)
    best["all_round_totals"] = [round(mean([s["total"] for s in r["steps"]]), 2) for r in rounds]
    return best


if __name__ == "__main__":
    main()
