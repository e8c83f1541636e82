"""Score a batch in worker processes, with a wall-clock time limit per example.

A check that hangs (even in pure Python inside ``score``), crashes (raises, or kills its process)
or floods its output is stopped and scored as a failure (score 0, acc 0) with feedback saying
what happened; the rest of the batch goes on. Workers are started with ``forkserver`` (``spawn``
where that does not exist) and receive a pickled copy of the environment, so the environment must
be picklable and its class importable (a class registered with ``@register`` in a module is). The
copy is taken when the pool starts: later changes to the environment object are not seen by the
workers (call :func:`shutdown` to restart them). As with any ``multiprocessing`` code, a script
that uses this must guard its entry point with ``if __name__ == "__main__":``.

:class:`ParallelScorer` is the pool; ``Environment.score_batch(..., workers=N)`` uses a pool kept
per environment object (see :func:`score_in_workers`).
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing import reduction
from typing import Any

from resd.envs.base import Environment, Example, Feedback

__all__ = ["ParallelScorer", "failure_feedback", "score_in_workers", "shutdown"]

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
_OUTPUT_TAIL = 2000  # bytes of a failed check's output kept in the feedback details
_MAX_START_FAILURES = 3


def failure_feedback(kind: str, message: str, **details: Any) -> Feedback:
    """The zero-score feedback of a check that did not finish (``kind``: timeout, crash or flood)."""
    return Feedback(0.0, 0.0, message, {"env_error": kind, **details})


def _set_parent_death_signal() -> None:
    """Ask Linux to kill this process when its parent dies (best effort; no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn: Any, env_bytes: bytes) -> None:
    """Worker loop: receive (index, response, example, truncated), send back a Feedback or an error."""
    out_fd = reduction.recv_handle(conn)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _set_parent_death_signal()
    try:
        env = pickle.loads(env_bytes)
    except BaseException as e:  # noqa: BLE001 - report anything that stops the environment from loading
        conn.send(("init_error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, response, example, truncated = task
        try:
            result = env.score(response, example, truncated=truncated)
            if not isinstance(result, Feedback):
                raise TypeError(f"score() returned {type(result).__name__}, not Feedback")
            reply: tuple[Any, ...] = ("ok", index, result)
        except BaseException as e:  # noqa: BLE001 - any failure of the check is reported, not fatal
            reply = ("error", index, f"{type(e).__name__}: {e}")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            conn.send(reply)
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable value in Feedback.details
            conn.send(("error", index, f"its result could not be sent back ({type(e).__name__}: {e})"))


class _Worker:
    """One worker process, its task pipe and the read end of its stdout/stderr."""

    def __init__(self, ctx: Any, env_bytes: bytes) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child_conn, env_bytes), name="resd-env-worker")
        self.proc.start()
        child_conn.close()
        read_fd, write_fd = os.pipe()
        try:
            reduction.send_handle(self.conn, write_fd, self.proc.pid)
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.out_fd: int | None = read_fd
        self.ready = False
        self.started = time.monotonic()
        self.task: int | None = None
        self.deadline = 0.0
        self.out_bytes = 0
        self.out_tail = b""

    def assign(self, index: int, payload: tuple[Any, ...], timeout_s: float) -> None:
        self.task = index
        self.out_bytes = 0
        self.out_tail = b""
        self.conn.send(payload)
        self.deadline = time.monotonic() + timeout_s

    def read_output(self) -> bool:
        """Drain the output pipe; False once it is closed."""
        if self.out_fd is None:
            return False
        while True:
            try:
                chunk = os.read(self.out_fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                chunk = b""
            if not chunk:
                os.close(self.out_fd)
                self.out_fd = None
                return False
            self.out_bytes += len(chunk)
            self.out_tail = (self.out_tail + chunk)[-_OUTPUT_TAIL:]

    def stop(self) -> None:
        """Kill the process (if alive) and release its pipes."""
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()
        if self.out_fd is not None:
            os.close(self.out_fd)
            self.out_fd = None
        if self.proc.exitcode is not None:
            self.proc.close()


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "it did not exit"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class ParallelScorer:
    """A pool of worker processes that score responses with a per-example time limit.

    Args:
        env: the environment (pickled once and loaded in every worker).
        workers: number of worker processes.
        timeout_s: wall-clock limit of one ``score`` call.
        max_output_bytes: a check writing more than this to stdout/stderr is stopped (flooding).
        start_method: ``forkserver`` (default where available) or ``spawn``.
        startup_timeout_s: how long a worker may take to start and load the environment.
    """

    def __init__(
        self,
        env: Environment,
        *,
        workers: int = 2,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        start_method: str | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        try:
            self._env_bytes = pickle.dumps(env)
        except Exception as e:
            raise TypeError(
                f"environment {getattr(env, 'name', '') or type(env).__name__!r} cannot be sent to worker "
                f"processes ({type(e).__name__}: {e}); make it picklable or score without workers"
            ) from e
        if start_method is None:
            start_method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self._ctx = multiprocessing.get_context(start_method)
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.max_output_bytes = int(max_output_bytes)
        self.startup_timeout_s = float(startup_timeout_s)
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> ParallelScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop all workers; the scorer cannot be used afterwards."""
        self._closed = True
        self._stop_workers()

    def _stop_workers(self) -> None:
        for w in self._pool:
            w.stop()
        self._pool.clear()

    def score_batch(
        self,
        responses: Sequence[str],
        examples: Sequence[Example],
        truncated: Sequence[bool] | None = None,
    ) -> list[Feedback]:
        """Score ``responses[i]`` against ``examples[i]`` in the workers; results in input order."""
        if self._closed:
            raise RuntimeError("this ParallelScorer is closed")
        truncated = list(truncated) if truncated is not None else [False] * len(responses)
        if not len(responses) == len(examples) == len(truncated):
            raise ValueError(
                "responses, examples and truncated differ in length: "
                f"{len(responses)}, {len(examples)}, {len(truncated)}"
            )
        with self._lock:
            try:
                return self._run(list(responses), list(examples), truncated)
            except BaseException:
                # e.g. KeyboardInterrupt: workers still busy with this batch must not answer the next one
                for w in [w for w in self._pool if w.task is not None]:
                    self._drop(w)
                raise

    def _run(self, responses: list[str], examples: list[Example], truncated: list[bool]) -> list[Feedback]:
        results: list[Feedback | None] = [None] * len(responses)
        pending = collections.deque(range(len(responses)))
        start_failures = 0
        while pending or any(w.task is not None for w in self._pool):
            wanted = min(self.workers, len(pending) + sum(w.task is not None for w in self._pool))
            while len(self._pool) < wanted:
                self._pool.append(_Worker(self._ctx, self._env_bytes))
            for w in self._pool:
                if w.ready and w.task is None and pending:
                    i = pending.popleft()
                    w.assign(i, (i, responses[i], examples[i], bool(truncated[i])), self.timeout_s)
            start_failures += self._wait_and_collect(results)
            if start_failures >= _MAX_START_FAILURES:
                self._stop_workers()
                raise RuntimeError(
                    f"worker processes failed to start {start_failures} times; is the environment importable "
                    "in a fresh process (its class defined in a module, not in __main__ of an unguarded script)?"
                )
        return [
            r if r is not None else failure_feedback("crash", "Environment check crashed: no result") for r in results
        ]

    def _wait_and_collect(self, results: list[Feedback | None]) -> int:
        """Wait for the next event, record finished, failed and timed-out checks; return start failures."""
        now = time.monotonic()
        deadlines = [w.deadline for w in self._pool if w.task is not None]
        deadlines += [w.started + self.startup_timeout_s for w in self._pool if not w.ready]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        handles: list[Any] = []
        for w in self._pool:
            handles += [w.conn, w.proc.sentinel]
            if w.out_fd is not None:
                handles.append(w.out_fd)
        ready = set(multiprocessing.connection.wait(handles, timeout=timeout))
        start_failures = 0
        for w in list(self._pool):
            if w.out_fd is not None and w.out_fd in ready:
                w.read_output()
            if w.task is not None and w.out_bytes > self.max_output_bytes:
                results[w.task] = failure_feedback(
                    "flood",
                    f"Environment check flooded its output (more than {self.max_output_bytes} bytes)",
                    output_tail=w.out_tail.decode("utf-8", "replace"),
                )
                self._drop(w)
                continue
            if w.conn in ready:
                try:
                    message = w.conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None:
                    self._handle(w, message, results)
                    continue
            if w.proc.sentinel in ready or not w.proc.is_alive():
                w.read_output()
                if w.task is not None:
                    results[w.task] = failure_feedback(
                        "crash",
                        f"Environment check crashed: the worker process died ({_exit_description(w.proc.exitcode)})",
                        output_tail=w.out_tail.decode("utf-8", "replace"),
                    )
                elif not w.ready:
                    start_failures += 1
                self._drop(w)
                continue
            now = time.monotonic()
            if w.task is not None and now >= w.deadline:
                results[w.task] = failure_feedback(
                    "timeout",
                    f"Environment check timed out after {self.timeout_s:g} s",
                    output_tail=w.out_tail.decode("utf-8", "replace"),
                )
                self._drop(w)
            elif not w.ready and now >= w.started + self.startup_timeout_s:
                start_failures += 1
                self._drop(w)
        return start_failures

    def _handle(self, w: _Worker, message: tuple[Any, ...], results: list[Feedback | None]) -> None:
        kind = message[0]
        if kind == "ready":
            w.ready = True
        elif kind == "init_error":
            self._drop(w)
            self._stop_workers()
            raise RuntimeError(f"the environment could not be loaded in a worker process: {message[1]}")
        elif kind == "ok" and message[1] == w.task:
            results[message[1]] = message[2]
            w.task = None
        elif kind == "error" and message[1] == w.task:
            results[message[1]] = failure_feedback(
                "crash",
                f"Environment check crashed: {message[2]}",
                output_tail=w.out_tail.decode("utf-8", "replace"),
            )
            w.task = None

    def _drop(self, w: _Worker) -> None:
        w.stop()
        self._pool.remove(w)


_scorers: dict[int, tuple[Any, ParallelScorer, tuple[int, float]]] = {}
_scorers_lock = threading.Lock()


def score_in_workers(
    env: Environment,
    responses: Sequence[str],
    examples: Sequence[Example],
    truncated: Sequence[bool] | None = None,
    *,
    workers: int = 2,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Feedback]:
    """Score with a :class:`ParallelScorer` kept for ``env`` (restarted if the settings change)."""
    key = id(env)
    settings = (int(workers), float(timeout_s))
    with _scorers_lock:
        entry = _scorers.get(key)
        if entry is not None and (entry[0]() is not env or entry[2] != settings):
            entry[1].close()
            entry = None
        if entry is None:
            scorer = ParallelScorer(env, workers=settings[0], timeout_s=settings[1])
            ref = weakref.ref(env, lambda _, k=key: _forget(k))
            entry = (ref, scorer, settings)
            _scorers[key] = entry
    return entry[1].score_batch(responses, examples, truncated)


def _forget(key: int) -> None:
    entry = _scorers.pop(key, None)
    if entry is not None:
        entry[1].close()


def shutdown(env: Environment | None = None) -> None:
    """Stop the worker pool of ``env`` (all pools when None); the next call starts fresh workers."""
    with _scorers_lock:
        keys = [id(env)] if env is not None else list(_scorers)
        for key in keys:
            entry = _scorers.pop(key, None)
            if entry is not None:
                entry[1].close()


atexit.register(shutdown)
