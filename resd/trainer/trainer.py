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
    test-time solving); otherwise they are built from the config.
    """

    def __init__(self, config: Config, *, model=None, tokenizer=None, env=None, run_dir: str | Path | None = None,
                 train_rows: list[dict[str, Any]] | None = None) -> None:
        self.config = cfg = config
        self.dist = init_distributed(cfg.dist.timeout_s)
        seed_everything(cfg.seed)
        self.policy = Policy(cfg, self.dist, model=model, tokenizer=tokenizer)
        self.env = env or envs.load(cfg.data.env, **cfg.data.env_kwargs)
        if train_rows is None:
            train_rows = self.env.load_split(cfg.data.train_split, cfg.data.train_path, cfg.data.train_limit)
        self.schedule = build_schedule(cfg, train_rows)
        default_dir = Path("runs") / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
        self.run = RunDir(run_dir or cfg.logging.run_dir or self.dist.all_gather(str(default_dir))[0])
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
        main = self.dist.is_main
        lc = cfg.logging
        self.logger = RunLogger(self.run, cfg.to_dict(), main and lc.wandb, main and lc.tensorboard,
                                main and lc.trackio, lc.project, cfg.name, enabled=main)

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
        previous = self._install_signal_handlers()
        bar = tqdm(total=self.schedule.planned_steps(), initial=self.step, desc=cfg.name,
                   disable=not (cfg.logging.progress and self.dist.is_main), dynamic_ncols=True)
        try:
            if cfg.eval.before_train and self.step == 0:
                self.validate()
            while not self.finished() and not self.stop_requested:
                self.dist.where = f"training step {self.step + 1}"
                metrics = self.train_step()
                if self.step % cfg.logging.log_every == 0:
                    self.logger.log(self.step, metrics)
                bar.update(1)
                loss = metrics.get("loss/distill", metrics.get("loss/pg", 0.0))
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", loss=f"{loss:.3g}")
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
        return self.run_dir

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
        self._last_val_rollouts = self.rollouts_seen
        self._last_val_step = self.step
        if self.validation.improved(self.step, summary):
            if self.config.eval.save_best:
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

    def resume(self, path: str | Path | None = None) -> bool:
        """Load the given checkpoint, or the newest valid one of this run. Returns False if none exists."""
        if path is None:
            found = latest_valid(self.checkpoint_root) if self.dist.is_main else None
            path = self.dist.all_gather(str(found) if found else None)[0]
        if path is None:
            self.logger.truncate_after(0)  # killed before the first checkpoint: start over cleanly
            return False
        tensors, objects, state = load_checkpoint(Path(path))
        self.learner.load_tensors(tensors)
        self.learner.load_optimizer_state(objects["optimizer"])
        set_rng_state(objects["rng"])
        self.step = int(state["step"])
        self.validation.best = state.get("best")
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
