"""The training loop, the same for every algorithm.

One :meth:`Trainer.train_step`:

1. the schedule picks the prompts (:mod:`resd.trainer.schedule`);
2. rollouts: ``rollout.n`` responses per prompt, scored by the environment (:mod:`resd.trainer.rollouts`);
3. the algorithm turns the scored samples into learning targets: advantages, teacher contexts,
   weights (:mod:`resd.algorithms`);
4. the learner updates the policy and the self-teacher (:mod:`resd.trainer.learner`);
5. logging, then validation and checkpoints when due.

Nothing here depends on which algorithm runs.
"""

from __future__ import annotations

import logging
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from resd import envs
from resd.algorithms import Services, build_algorithm
from resd.config import Config
from resd.distributed import CollectiveError, init_distributed, is_collective_failure
from resd.fileio import atomic_write_text
from resd.run_dir import RunDir
from resd.sample import Sample
from resd.trainer.checkpoint import latest_valid, load_checkpoint, save_checkpoint
from resd.trainer.console import Console, fmt_count, fmt_number, fmt_seconds, losses, step_line, validation_line
from resd.trainer.learner import Learner, NonFiniteError
from resd.trainer.policy import Policy
from resd.trainer.rng import rng_state, seed_everything, set_rng_state
from resd.trainer.rollouts import Rollouts
from resd.trainer.run_logger import RunLogger
from resd.trainer.schedule import build_schedule
from resd.trainer.validation import Validation

log = logging.getLogger(__name__)

__all__ = ["NonFiniteError", "Sample", "Trainer"]


class Trainer:
    """Trains a policy with the configured algorithm and schedule.

    ``model``, ``tokenizer``, ``env`` and ``train_rows`` may be passed in (tests, notebooks,
    test-time solving); otherwise they are built from the config. ``resume=True`` continues the run
    directory's newest valid checkpoint; :attr:`resumed` says whether one was loaded.
    """

    def __init__(self, config: Config, *, model=None, tokenizer=None, env=None, run_dir: str | Path | None = None,
                 train_rows: list[dict[str, Any]] | None = None, resume: bool = False) -> None:
        self.config = cfg = config
        self.dist = init_distributed(cfg.dist.timeout_s)
        self.console = Console(self.dist.is_main and cfg.logging.console)
        seed_everything(cfg.seed)
        default_dir = Path("runs") / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
        self.run = RunDir(run_dir or cfg.logging.run_dir or self.dist.all_gather(str(default_dir))[0])
        checkpoint = self._latest_checkpoint() if resume else None
        if model is None:
            lora = ", LoRA" if cfg.model.lora.enabled else ""
            self.console.print(f"loading model {cfg.model.name} ({cfg.model.precision}{lora}) ...")
        t0 = time.perf_counter()
        # A full-parameter checkpoint holds every weight; a LoRA one only adapters over the init_from base.
        full_resume = checkpoint is not None and not cfg.model.lora.enabled
        self.policy = Policy(cfg, self.dist, model=model, tokenizer=tokenizer, apply_init_from=not full_resume)
        self.load_seconds = time.perf_counter() - t0
        self.env = env or envs.load(cfg.data.env, **cfg.data.env_kwargs)
        if train_rows is None:
            train_rows = self.env.load_split(cfg.data.train_split, cfg.data.train_path, cfg.data.train_limit)
        self.train_rows = len(train_rows)
        self.schedule = build_schedule(cfg, train_rows)
        if self.dist.is_main:
            self.run.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.dist.barrier()
        self.rollouts = Rollouts(cfg, self.env, self.policy, self.dist)
        self.services = Services(self.env, None, self.policy.tokenizer, self.rollouts.seeds, self.dist, self.run)
        self.algorithm = build_algorithm(cfg, self.services)
        self.learner = Learner(cfg, self.policy, self.dist, self.algorithm.pg_weight, self.schedule.planned_steps())
        self.policy.make_generator()
        self.services.generator = self.policy.generator
        self.step = 0
        self.validation = Validation(cfg, self.env, self.dist, self.run)
        self.rollouts_seen = 0
        self._last_val_rollouts = 0
        self._last_val_step = -1
        self.elapsed = 0.0
        self.stop_requested = False
        self.logger = RunLogger.for_run(self.run, cfg, enabled=self.dist.is_main)
        self.resumed = self._resume_from(checkpoint) if resume else False

    # ------------------------------------------------------------------ what the parts hold
    @property
    def model(self):
        return self.policy.model

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    @property
    def generator(self):
        return self.policy.generator

    @property
    def teacher(self):
        return self.learner.teacher

    @property
    def data(self):
        return self.schedule.data

    @property
    def best(self) -> dict[str, Any] | None:
        """``{"step", "metric", "value"}`` of the best validation so far."""
        return self.validation.best

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One step of the schedule: rollouts on its batch, then :meth:`learn`."""
        t0 = time.perf_counter()
        samples, metrics = self.sample(self.schedule.next_batch())
        metrics.update(self.learn(samples))
        metrics.update(self.schedule.after_step(samples))
        metrics["time/step_s"] = time.perf_counter() - t0
        self.elapsed += metrics["time/step_s"]
        metrics["progress/elapsed_s"] = self.elapsed
        return metrics

    def sample(self, examples: list[dict[str, Any]]) -> tuple[list[Sample], dict[str, float]]:
        """Rollouts for ``examples``, scored (no update)."""
        self.rollouts.step = self.step
        return self.rollouts.collect(examples)

    def learn(self, samples: list[Sample]) -> dict[str, float]:
        """The algorithm's targets for ``samples`` and the update; counts as one step (logged)."""
        t0 = time.perf_counter()
        self.learner.step = self.step + 1
        metrics = self.algorithm.prepare(samples, self.step + 1)
        metrics.update(self.learner.tokenize_teacher_prompts(samples))
        t1 = time.perf_counter()
        if samples:
            metrics.update(self.learner.update(samples))
        metrics["time/update_s"] = time.perf_counter() - t1
        self.step += 1
        metrics.update(self.algorithm.after_update(samples, self.step))
        self.rollouts_seen += len(samples)
        metrics["progress/rollouts"] = float(self.rollouts_seen)
        metrics["time/learn_s"] = time.perf_counter() - t0
        records = [self.sample_record(s) for s in samples[: self.config.logging.samples_per_step]]
        self.logger.log_samples(self.step, records)
        return metrics

    def sample_record(self, s: Sample) -> dict[str, Any]:
        return {
            "example_id": self.env.example_id(s.example) if s.example else None,
            "prompt": s.prompt_messages[-1]["content"],
            "response": s.text,
            "score": s.feedback.score,
            "acc": s.feedback.acc,
            "feedback": s.feedback.feedback,
            "teacher_prompt": s.teacher_messages[-1]["content"] if s.teacher_messages else None,
            "sd_mask": s.sd_mask,
            **{k: v for k, v in s.extra.items() if isinstance(v, (str, int, float, bool))},
            **self.algorithm.sample_record(s),
        }

    # ------------------------------------------------------------------ the loop
    def finished(self) -> bool:
        return self.schedule.finished(self.step)

    def after_step(self) -> None:
        """Validation and checkpoints that are due after a step."""
        cfg = self.config
        validate_now, save_now = self.schedule.due(self.step)
        every = cfg.eval.every_steps
        if (every and self.step % every == 0) or (validate_now and self._last_val_step != self.step):
            self.validate()
        every = cfg.eval.every_rollouts  # (a validation just above already moved the mark)
        if every and self.rollouts_seen // every > self._last_val_rollouts // every:
            self.validate()
        every = cfg.logging.save_every
        if (every and self.step % every == 0) or save_now:
            self.save()

    def train(self) -> Path:
        """Run until the schedule is done (or a stop is requested). Returns the run directory."""
        cfg = self.config
        self.print_start_summary()
        previous = self._install_signal_handlers()
        total = self.schedule.planned_steps()
        start_step, start_time = self.step, time.perf_counter()
        bar = tqdm(total=total, initial=self.step, desc=cfg.name,
                   disable=not (cfg.logging.progress and self.dist.is_main), dynamic_ncols=True)
        try:
            if cfg.eval.before_train and self.step == 0:
                self.validate()
            while not self.finished() and not self.stop_requested:
                self.dist.where = f"training step {self.step + 1}"
                metrics = self.train_step()
                if self.step % cfg.logging.log_every == 0:
                    self.logger.log(self.step, metrics)
                    self.console.print(step_line(self.step, total, metrics))
                bar.update(1)
                bar.set_postfix(reward=fmt_number(metrics.get("reward/mean", 0.0)),
                                **{name: fmt_number(value) for name, value in losses(metrics)})
                self.after_step()
            if cfg.logging.save_final:
                self.save()
        except Exception as e:  # FSDP's own collectives fail with the backend's bare message
            if not self.dist.enabled or isinstance(e, CollectiveError) or not is_collective_failure(e):
                raise
            raise self.dist.collective_error("inside FSDP", e) from e
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.logger.close()
        self.print_closing_summary(self.step - start_step, time.perf_counter() - start_time)
        return self.run_dir

    # ------------------------------------------------------------------ console
    def print_start_summary(self) -> None:
        """Model, parameters, precision, device, algorithm, data and the run directory, before the first step."""
        if not self.console.enabled:
            return
        cfg = self.config
        params = list(self.model.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        lora = f", LoRA r={cfg.model.lora.r}" if cfg.model.lora.enabled else ""
        procs = f", {self.dist.world} processes" if self.dist.enabled else ""
        loaded = f", loaded in {fmt_seconds(self.load_seconds)}" if self.load_seconds >= 0.5 else ""
        schedule = "stream" if cfg.uses_stream else "standard"
        steps = self.schedule.planned_steps()
        if self.validation.scheduled():
            val = f"{len(self.validation.rows())} val ({cfg.data.val_split}, k={cfg.eval.k})"
        else:
            val = "no validation scheduled"
        rows = [
            ("model", f"{cfg.model.name} ({cfg.model.precision}{lora}) on {self.policy.device}{procs}{loaded}"),
            ("parameters", f"{fmt_count(trainable)} trainable of {fmt_count(total)}"),
            ("algorithm", f"{self.algorithm.name}, {schedule} schedule, {steps} steps, "
                          f"{cfg.train.batch_size} prompts x {cfg.rollout.n} rollouts per step"),
            ("data", f"{cfg.data.env}: {self.train_rows} train rows, {val}"),
            ("run dir", str(self.run_dir)),
        ]
        if self.step:
            rows.append(("resumed", f"at step {self.step} ({self.rollouts_seen} rollouts)"))
        if self.logger.trackers:
            rows.append(("trackers", ", ".join(t.name for t in self.logger.trackers)))
        self.console.block(f"resd run {cfg.name}", rows)

    def print_closing_summary(self, steps: int, seconds: float) -> None:
        """The held-out metric before -> after (and the best), the run directory and how to see the report."""
        if not self.console.enabled:
            return
        cfg = self.config
        name = self.validation.metric_name
        history = self.logger.series(f"val/{name}")
        rows = []
        if history:
            (first_step, first), (last_step, last) = history[0], history[-1]
            text = f"{fmt_number(first)} at step {first_step}"
            if len(history) > 1:
                text += f" -> {fmt_number(last)} at step {last_step}"
            best = self.best
            if best is not None and best.get("metric") == name:
                text += f" (best {fmt_number(best['value'])} at step {best['step']})"
            rows.append((f"held-out {name}", f"{text} [{cfg.data.val_split}]"))
            companion = name.replace("/mean@", "/best@", 1)
            other = self.logger.series(f"val/{companion}") if companion != name else []
            if len(other) > 1:
                rows.append((f"held-out {companion}", f"{fmt_number(other[0][1])} -> {fmt_number(other[-1][1])}"))
        else:
            rows.append(("held-out", "no validation ran (eval.before_train, eval.every_steps, eval.every_rollouts)"))
        rows.append(("run dir", str(self.run_dir)))
        if self.stop_requested:
            rows.append(("resume", f"resd train --resume {self.run_dir}"))
        rows.append(("report", f"resd report {self.run_dir}"))
        state = "stopped" if self.stop_requested else "done"
        self.console.block(f"{state}: {steps} steps, {self.rollouts_seen} rollouts in {fmt_seconds(seconds)}", rows)

    def _install_signal_handlers(self) -> dict[int, Any]:
        def request_stop(signum, _frame):
            log.warning("received signal %d: saving a checkpoint after this step and stopping", signum)
            self.stop_requested = True

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not in the main thread
                pass
        return previous

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Evaluate on the held-out split (:mod:`resd.trainer.validation`), log ``val/*`` metrics, and
        checkpoint when the best metric improves."""
        self.dist.where = f"validation after step {self.step}"
        summary = self.validation.evaluate(self.step, self.generator, self.tokenizer)
        metrics = {f"val/{k}": v for k, v in summary.items()}
        metrics.update({"progress/rollouts": float(self.rollouts_seen), "progress/elapsed_s": self.elapsed})
        self.logger.log(self.step, metrics)
        self.logger.log_table("val/samples_table", self.validation.last_records, self.step)
        self._last_val_rollouts = self.rollouts_seen
        self._last_val_step = self.step
        improved = self.validation.improved(self.step, summary)
        cfg = self.config
        self.console.print(validation_line(self.step, cfg.data.val_split, int(summary.get("prompts", 0)), cfg.eval.k,
                                           summary, self.validation.last_aliases, best=improved))
        if improved:
            if cfg.eval.save_best:
                self.save()
            self.validation.write_best()
        return metrics

    # ------------------------------------------------------------------ checkpoints
    @property
    def run_dir(self) -> Path:
        return self.run.root

    @property
    def checkpoint_root(self) -> Path:
        return self.run.checkpoints

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0 writes; every rank takes part in gathering the shards)."""
        self.dist.where = f"checkpoint at step {self.step}"
        tensors = self.learner.tensors()
        optimizer_state = self.learner.optimizer_state()
        path = None
        if self.dist.is_main:
            state = {
                "step": self.step,
                "best": self.validation.best,
                "rollouts_seen": self.rollouts_seen,
                "elapsed": self.elapsed,
                "nonfinite_in_a_row": self.learner.nonfinite_in_a_row,
                "data": self.data.state_dict(),
                "extra": {"schedule": self.schedule.state_dict(), "algorithm": self.algorithm.state_dict()},
                "world_size": self.dist.world,
            }
            best = self.validation.best
            protect = frozenset({best["step"]}) if best else frozenset()
            objects = {"optimizer": optimizer_state, "rng": rng_state()}
            path = save_checkpoint(self.checkpoint_root, self.step, tensors, objects, state,
                                   self.config.logging.keep_last, protect)
        self.dist.barrier()
        return path

    def load_weights(self, path: str | Path) -> None:
        """Take the student's (and the teacher's) weights of a checkpoint, nothing else: the step, the
        optimizer and the data position stay those of this trainer (test-time training from a run)."""
        tensors, _, _ = load_checkpoint(Path(path))
        self.learner.load_tensors(tensors)
        self.policy.sync_rollout_weights()

    def _latest_checkpoint(self) -> Path | None:
        """The run directory's newest valid checkpoint, as rank 0 found it."""
        found = latest_valid(self.run.checkpoints) if self.dist.is_main else None
        path = self.dist.all_gather(str(found) if found else None)[0]
        return Path(path) if path else None

    def resume(self, path: str | Path | None = None) -> bool:
        """Load the given checkpoint, or the newest valid one of this run. Returns False if none exists."""
        return self._resume_from(Path(path) if path is not None else self._latest_checkpoint())

    def _resume_from(self, path: Path | None) -> bool:
        if path is None:
            self.logger.truncate_after(0)  # killed before the first checkpoint: start over cleanly
            return False
        tensors, objects, state = load_checkpoint(Path(path))
        self.learner.load_tensors(tensors)
        self.learner.load_optimizer_state(objects["optimizer"])
        set_rng_state(objects["rng"])
        self.step = int(state["step"])
        self.validation.set_best(state.get("best"))
        self.rollouts_seen = self._last_val_rollouts = int(state["rollouts_seen"])
        self.elapsed = float(state["elapsed"])
        self.learner.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.data.load_state_dict(state["data"])
        extra = state.get("extra", {})
        if "schedule" not in extra and "outer" in extra:  # a checkpoint of the former stream trainer
            extra = {"schedule": extra, "algorithm": {k: v for k, v in extra.items() if k == "context"}}
        self.schedule.load_state_dict(extra.get("schedule", {}))
        self.algorithm.load_state_dict(extra.get("algorithm", {}))
        self.policy.sync_rollout_weights()
        self.logger.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return True
