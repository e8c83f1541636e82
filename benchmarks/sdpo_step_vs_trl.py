"""Seconds per SDPO training step and peak memory: our Trainer against TRL's ``SDPOTrainer``.

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

Each trainer runs in its own fresh subprocess (peak RSS = ``ru_maxrss`` of that process), on CPU,
with ``--threads`` torch threads; one warm-up step, then ``--steps`` timed steps. A step is split
into generation (``model.generate``), the rest of the rollout phase (scoring, teacher contexts,
tokenization), forward + loss, backward, and the optimizer part (clip, AdamW, EMA, bookkeeping).

Models: ``--model tiny`` (default) is a randomly initialized small Qwen2 around the real Qwen
tokenizer (vocabulary 151,936, so the loss work is realistic) saved to a temp dir;
``--model embedded`` is the embedded Qwen2.5-Coder-0.5B-Instruct (630 M parameters, untied head;
bf16). Our trainer keeps float32 master weights, float32 AdamW states and a float32 EMA shadow of the
teacher, about 16 GB before activations; TRL trains the bf16 weights directly, about 6 GB. Check
that enough memory is free before running it.

Run: ``python benchmarks/sdpo_step_vs_trl.py`` (about 3.5 minutes on 2 cores; ``--rounds 2`` repeats each
trainer in alternating order and keeps its fastest round, which helps on a shared machine), or
``python benchmarks/sdpo_step_vs_trl.py --model embedded --prompts 2 --n 4 --length 32 --steps 2``.
Needs ``pip install trl``. Nothing touches the network (``HF_HUB_OFFLINE=1``).
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


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timers:
    """Accumulates wall time per bucket; ``wrap`` replaces a callable attribute by a timed one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, bucket: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
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


# ---------------------------------------------------------------------------------------- ours
def run_ours(args: argparse.Namespace) -> dict:
    import torch

    from resd import envs
    from resd.config import load_config
    from resd.models import load_model, load_tokenizer
    from resd.trainer.trainer import Trainer

    torch.set_num_threads(args.threads)
    dtype = "bf16" if args.model == "embedded" else "fp32"
    tokenizer = load_tokenizer(args.model_dir)
    model = load_model(args.model_dir, dtype)
    env = envs.load("arithmetic")
    run_dir = tempfile.mkdtemp(prefix="bench-ours-")
    config = load_config(preset="sdpo", overrides=[
        "name=bench-ours", f"seed={args.seed}", f"model.name={args.model_dir}", f"model.precision={dtype}",
        "data.env=arithmetic", "data.shuffle=false",
        f"rollout.n={args.n}", f"rollout.max_new_tokens={args.length}", f"rollout.batch_size={args.prompts * args.n}",
        "rollout.temperature=1.0", "rollout.top_p=1.0",
        f"train.steps={args.warmup + args.steps}", f"train.batch_size={args.prompts}",
        f"train.mini_batch_size={args.prompts}", f"train.lr={args.lr}", "train.warmup_steps=0",
        "train.weight_decay=0.0", "train.grad_clip=1.0", "train.rollout_is_threshold=null",
        "loss.alpha=0.5", "loss.topk=100", "loss.add_tail=true", "loss.full_logit=true",
        "loss.aggregation=seq-mean-token-mean", "teacher.kind=ema", "teacher.update_rate=0.05",
        f"reprompt.success_reward_threshold={args.threshold}", "reprompt.include_environment_feedback=false",
        "reprompt.dont_reprompt_on_self_success=true", "reprompt.remove_thinking_from_demonstration=true",
        f"logging.run_dir={run_dir}", "logging.progress=false", "logging.samples_per_step=0",
    ])
    trainer = Trainer(config, model=model, tokenizer=tokenizer, env=env, run_dir=run_dir)

    generate = trainer.model.generate

    def fixed_length_generate(*a, **kw):
        kw.setdefault("min_new_tokens", args.length)
        return generate(*a, **kw)

    trainer.model.generate = fixed_length_generate
    timers = Timers()
    timers.wrap(trainer.model, "generate", "generate")
    timers.wrap(trainer.learner, "_micro_loss", "forward_loss")
    timers.wrap(torch.Tensor, "backward", "backward")
    setup_rss = rss_mib()

    steps, tokens, losses, fractions = [], [], [], []
    for step in range(args.warmup + args.steps):
        timers.take()
        start = time.perf_counter()
        examples = trainer.data.next_batch(args.prompts)
        samples, _ = trainer.sample(examples)
        metrics = trainer.algorithm.prepare(samples, trainer.step + 1)
        metrics.update(trainer.learner.tokenize_teacher_prompts(samples))
        rollout_end = time.perf_counter()
        metrics.update(trainer.learner.update(samples))
        total = time.perf_counter() - start
        trainer.step += 1
        t = timers.take()
        t["rollout"] = rollout_end - start
        if step >= args.warmup:
            steps.append(phases(total, t))
        tokens.append(sum(len(s.response_ids) for s in samples))
        losses.append(metrics.get("loss/distill", float("nan")))
        fractions.append(metrics.get("self_distillation/reprompt_sample_fraction", float("nan")))
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"trainer": "ours", "setup_rss_mib": setup_rss, "peak_rss_mib": peak_rss_mib(), "steps": steps,
            "tokens_per_step": tokens, "distill_loss": losses, "sd_fraction": fractions}


# ----------------------------------------------------------------------------------------- TRL
def run_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from resd import envs
    from resd.models import load_tokenizer

    torch.set_num_threads(args.threads)
    dtype = "bfloat16" if args.model == "embedded" else "float32"
    tokenizer = load_tokenizer(args.model_dir)
    env = envs.load("arithmetic")
    rows = env.load_split("train")
    dataset = Dataset.from_list([{"prompt": env.prompt_messages(r), "row": i} for i, r in enumerate(rows)])

    def env_reward(prompts, completions, row, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [env.score(text, rows[i]).score for text, i in zip(texts, row, strict=True)]

    total_steps = args.warmup + args.steps
    config = SDPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        seed=args.seed,
        use_cpu=True,
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
    )
    trainer = SDPOTrainer(model=args.model_dir, reward_funcs=env_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)

    timers = Timers()
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
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            total = time.perf_counter() - self.start
            if state.global_step > args.warmup:
                record["steps"].append(phases(total, timers.take()))
            for key, name in (("distill_loss", "self_distillation/distillation_loss"),
                              ("sd_fraction", "self_distillation/reprompt_sample_fraction")):
                record[key].append(metrics[name][-1] if metrics.get(name) else float("nan"))

    trainer.add_callback(StepTimer())
    setup_rss = rss_mib()
    trainer.train()
    shutil.rmtree(config.output_dir, ignore_errors=True)
    return {"trainer": "trl", "setup_rss_mib": setup_rss, "peak_rss_mib": peak_rss_mib(), "steps": record["steps"],
            "tokens_per_step": counted, "distill_loss": record["distill_loss"], "sd_fraction": record["sd_fraction"]}


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


def launch(trainer: str, args: argparse.Namespace, model_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--trainer", trainer, "--model-dir", model_dir, "--model", args.model,
           "--prompts", str(args.prompts), "--n", str(args.n), "--length", str(args.length),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--lr", str(args.lr),
           "--threshold", str(args.threshold), "--threads", str(args.threads), "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # stderr passes through
    return json.loads(out.stdout.strip().splitlines()[-1])


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    per_step = {k: {p: mean([s[p] for s in r["steps"]]) for p in ("total", *PHASES)} for k, r in results.items()}
    print(f"model {args.model}, {args.prompts} prompts x {args.n} samples x {args.length} tokens per step, top-k 100 + tail, "
          f"alpha 0.5, EMA 0.05, lr {args.lr}, success threshold {args.threshold}, {args.threads} threads; "
          f"{args.warmup} warm-up step(s), mean of {args.steps} timed steps")
    for k, r in results.items():
        print(f"{k}: mean s/step of each round {r['all_round_totals']}")
        print(f"{k}: generated tokens per step {r['tokens_per_step']}, distilled-sample fraction "
              f"{[round(x, 3) for x in r['sd_fraction']]}, "
              f"distillation loss {[float(format(x, '.3g')) for x in r['distill_loss']]}")
    print()
    print("| | ours | TRL | ours / TRL |")
    print("|---|---|---|---|")
    rows = [("s / step", "total")] + [(f"  {p} (s)", p) for p in PHASES]
    for label, key in rows:
        o, t = per_step["ours"][key], per_step["trl"][key]
        ratio = f"{o / t:.2f}" if t > 1e-3 else "-"
        print(f"| {label} | {o:.2f} | {t:.2f} | {ratio} |")
    o, t = results["ours"], results["trl"]
    op, tp = o["peak_rss_mib"], t["peak_rss_mib"]
    print(f"| peak RSS (MiB) | {op:,.0f} | {tp:,.0f} | {op / tp:.2f} |")
    print(f"| RSS after set-up (MiB) | {o['setup_rss_mib']:,.0f} | {t['setup_rss_mib']:,.0f} | "
          f"{o['setup_rss_mib'] / t['setup_rss_mib']:.2f} |")
    od, td = o["peak_rss_mib"] - o["setup_rss_mib"], t["peak_rss_mib"] - t["setup_rss_mib"]
    print(f"| peak - set-up (MiB) | {od:,.0f} | {td:,.0f} | {od / td:.2f} |")
    tokens_o, tokens_t = o["tokens_per_step"][args.warmup:], t["tokens_per_step"][args.warmup:]
    if tokens_o != tokens_t:
        print(f"WARNING: generated token counts differ (ours {tokens_o}, TRL {tokens_t}); compare per token")


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
    parser.add_argument("--trainer", choices=["ours", "trl"], help="internal: run one trainer in this process")
    parser.add_argument("--model-dir", help="internal: checkpoint directory")
    args = parser.parse_args()
    if args.trainer:
        result = run_ours(args) if args.trainer == "ours" else run_trl(args)
        print(json.dumps(result))
        return
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="bench-sdpo-") as workdir:
        model_dir = prepare_model(args, Path(workdir))
        for r in range(args.rounds):  # alternate the order so that drifting background load hits both alike
            for name in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
                runs[name].append(launch(name, args, model_dir))
    results = {name: best_round(rs) for name, rs in runs.items()}
    report(results, args)
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{args.rounds} round(s) per trainer, the fastest shown, peak RSS the largest of all rounds")


def best_round(rounds: list[dict]) -> dict:
    """The round with the lowest mean step time; peak RSS is the maximum over all rounds."""
    best = dict(min(rounds, key=lambda r: mean([s["total"] for s in r["steps"]])))
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rounds)
    best["all_round_totals"] = [round(mean([s["total"] for s in r["steps"]]), 2) for r in rounds]
    return best


if __name__ == "__main__":
    main()
