"""The trusted side of running tests: send each input, time it, take back plain output.

:func:`run_tests` starts the driver (:mod:`resd.sandbox.driver`) in the sandbox and sends it one
test at a time, each tagged with a fresh random id. The per-test time limit is this process's own
clock, from sending a test until its reply arrives; a test that runs over it ends the whole sandbox,
and the remaining tests run in a new one. Replies carry only what the program produced (a JSON value,
printed text, or an exception), cut at constant caps; the expected outputs never enter the sandbox,
and comparing is left to the caller, so nothing the program can do inside turns into a verdict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from resd.sandbox.launch import Launch, Limits, classify

#: bytes of a return value (as JSON) or of printed output kept per test; never derived from the answer
OUTPUT_CAP = 8 << 20
#: bytes of stderr / ``debug_print`` output kept per test
DEBUG_CAP = 16384
KINDS = ("call", "stdin")
_STARTUP_S = 10.0  # for the interpreter to start and read the program, before any test runs
_DRIVER = Path(__file__).with_name("driver.py")


@dataclasses.dataclass
class TestOutcome:
    """What one test produced inside the sandbox.

    Attributes:
        status: ``ok``, ``error`` (an exception, or the program died), ``timeout``, or ``skipped``
            (not run: earlier tests timed out ``stop_after_timeouts`` times, or the total time ran out).
        value: ``call`` tests: canonical JSON (sorted keys, no spaces) of the return value;
            ``stdin`` tests: everything the program printed.
        display: ``call`` tests: ``str()`` of the return value (cut at 1000 characters).
        error: the exception line ``"Type: message"`` when status is ``error``.
        frames: up to 3 innermost frames in the program's file: dicts ``line``, ``lineno``, ``name``.
        traceback: the exception's traceback restricted to the program's frames.
        phase: where an error happened: ``define`` (running the program's top level before the
            call), ``resolve`` (finding the function), ``call``, or ``run`` (a ``stdin`` program).
        debug: what the program wrote to stderr or with ``debug_print`` (capped).
        time_s: seconds the test ran, by the judging process's clock.
        overflow: the value or output went over :data:`OUTPUT_CAP` (and was cut).
    """

    __test__ = False  # not a pytest class

    status: str
    value: str = ""
    display: str = ""
    error: str = ""
    frames: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    traceback: str = ""
    phase: str = ""
    debug: str = ""
    time_s: float = 0.0
    overflow: bool = False


def driver_source() -> str:
    return _DRIVER.read_text(encoding="utf-8")


def run_tests(
    code: str,
    tests: Sequence[Mapping[str, Any]],
    *,
    time_limit_s: float = 1.0,
    memory_mb: int = 1024,
    filename: str = "Solution.py",
    workers: int = 1,
    total_timeout_s: float | None = None,
    stop_after_timeouts: int | None = None,
    prelude: str = "",
    prelude_names: Sequence[str] = (),
    max_processes: int = 32,
    mode: str | None = None,
) -> list[TestOutcome]:
    """Run the tests of one program in the sandbox, one after another, and return what it produced.

    Each test is a mapping with ``kind``:

    * ``"call"``: exec the program (``__name__ != "__main__"``), then call ``fn_name`` (a top-level
      function, else a method of a class ``Solution``, else, unless ``fallback`` is false, the first
      top-level function) with ``args`` (a list) and ``kwargs`` (a dict) of plain data;
    * ``"stdin"``: exec the program as ``__main__`` with ``stdin`` (a string) as its standard input
      (file descriptor 0) and capture what it writes to its standard output (``sys.exit(0)`` ends it
      normally).

    ``prelude`` is trusted source (standard library only) whose names ``prelude_names`` are put into
    the program's namespace (helpers the task offers).
    A test that runs over ``time_limit_s`` is a ``timeout``; a program that dies or floods its output
    ends its sandbox, and the remaining tests run in a new one. ``workers`` sandboxes run at once
    (tests dealt round-robin). Tests not yet run when ``total_timeout_s`` has passed, or after
    ``stop_after_timeouts`` tests of a sandbox's share timed out, are ``skipped``. ``memory_mb``
    caps the whole sandbox. Never raises on a hostile program.
    """
    from resd.sandbox import resolve_mode

    name = resolve_mode(mode)
    items = []
    for i, t in enumerate(tests):
        kind = t.get("kind")
        if kind not in KINDS:
            raise ValueError(f"test {i}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        items.append((i, {k: v for k, v in t.items() if k in ("kind", "fn_name", "args", "kwargs", "stdin", "fallback")}))
    outcomes: list[TestOutcome | None] = [None] * len(items)
    if not items:
        return []
    deadline = time.monotonic() + total_timeout_s if total_timeout_s else math.inf
    n = max(1, min(int(workers), len(items)))
    chunks = [items[k::n] for k in range(n)]
    job = _Job(code, filename, prelude, tuple(prelude_names), time_limit_s, memory_mb, max_processes, name, deadline, stop_after_timeouts)
    if n == 1:
        job.run(chunks[0], outcomes)
    else:
        with ThreadPoolExecutor(max_workers=n) as pool:
            for f in [pool.submit(job.run, c, outcomes) for c in chunks]:
                f.result()
    return [o if o is not None else TestOutcome("skipped") for o in outcomes]


@dataclasses.dataclass
class _Job:
    code: str
    filename: str
    prelude: str
    prelude_names: tuple[str, ...]
    time_limit_s: float
    memory_mb: int
    max_processes: int
    mode: str
    deadline: float
    stop_after_timeouts: int | None

    def run(self, items: list[tuple[int, dict[str, Any]]], outcomes: list[TestOutcome | None]) -> None:
        """Run ``items`` in sandboxes, starting a new one after a test that ended its sandbox."""
        remaining = list(items)
        timeouts = 0
        while remaining:
            if self.stop_after_timeouts is not None and timeouts >= self.stop_after_timeouts:
                return
            done = self._session(remaining, outcomes)
            for i, _ in remaining[:done]:
                timeouts += outcomes[i] is not None and outcomes[i].status == "timeout"  # type: ignore[union-attr]
            if done == 0:
                return  # could not run anything (total time used up)
            remaining = remaining[done:]

    def _session(self, items: list[tuple[int, dict[str, Any]]], outcomes: list[TestOutcome | None]) -> int:
        """Run tests in one sandbox until one ends it; returns how many tests got an outcome."""
        budget = min(len(items) * self.time_limit_s + _STARTUP_S, self.deadline - time.monotonic())
        if budget <= 0:
            return 0
        lim = Limits(math.ceil(budget) + 1, self.memory_mb, max_processes=self.max_processes)
        cap = OUTPUT_CAP + 4 * DEBUG_CAP + (1 << 16)
        with Launch(self.mode, driver_source(), python=None, lim=lim, max_output_bytes=cap) as run:
            start = {
                "code": self.code,
                "filename": self.filename,
                "prelude": self.prelude,
                "prelude_names": list(self.prelude_names),
                "output_cap": OUTPUT_CAP,
            }
            run.send((json.dumps(start, ensure_ascii=False) + "\n").encode("utf-8"))
            ready = _Reply(run, "ready")
            if run.pump(min(time.monotonic() + _STARTUP_S, self.deadline), ready.found) != "done":
                outcomes[items[0][0]] = self._dead(run, "startup")
                return 1
            count = 0
            for i, test in items:
                now = time.monotonic()
                if now >= self.deadline:
                    return count
                tid = secrets.token_hex(16)
                run.out.clear()
                run.send((json.dumps({"id": tid, **test}, ensure_ascii=False) + "\n").encode("utf-8"))
                reply = _Reply(run, tid)
                limit = min(now + self.time_limit_s, self.deadline)
                why = run.pump(limit, reply.found)
                elapsed = time.monotonic() - now
                count += 1
                if why == "done":
                    outcomes[i] = _outcome(reply.record, elapsed)
                    continue
                outcomes[i] = TestOutcome("timeout", time_s=elapsed) if why == "timeout" else self._dead(run, why)
                return count
            return count

    def _dead(self, run: Launch, why: str) -> TestOutcome:
        """The outcome of the test a sandbox ended on without replying."""
        returncode, oom = run.finish(0.5)
        stderr = bytes(run.err).decode("utf-8", "replace")
        status, reason = classify(returncode, stderr, run.stopped_for, self.time_limit_s, run.cap, run.name, oom)
        if status == "timeout":
            return TestOutcome("timeout")
        if status == "memory":
            return TestOutcome("error", error="MemoryError: out of memory")
        if run.stopped_for == "output":
            return TestOutcome("error", error="OutputLimitExceeded: the program wrote too much output")
        if status == "ok":
            return TestOutcome("error", error="ProcessError: the program exited (exit code 0) before the test finished")
        return TestOutcome("error", error=f"ProcessError: the program terminated abnormally ({reason or status})")


class _Reply:
    """Finds the reply line ``<tag> <json>`` (or the bare ``ready``) in what the sandbox wrote."""

    def __init__(self, run: Launch, tag: str) -> None:
        self.run = run
        self.tag = tag.encode("ascii")
        self.scanned = 0
        self.record: dict[str, Any] = {}

    def found(self) -> bool:
        out = self.run.out
        while True:
            at = out.find(b"\n" + self.tag, max(self.scanned - len(self.tag) - 1, 0))
            if at < 0:
                self.scanned = len(out)
                return False
            end = out.find(b"\n", at + 1)
            if end < 0:
                return False  # the line is not complete yet
            line = bytes(out[at + 1 + len(self.tag) : end])
            self.scanned = end
            if self.tag == b"ready" and line == b"":
                return True
            if line.startswith(b" "):
                record = _parse(line[1:])
                if record is not None:
                    self.record = record
                    return True


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line.decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("status") not in ("ok", "error"):
        return None
    return rec


def _outcome(rec: dict[str, Any], elapsed: float) -> TestOutcome:
    """A reply as an outcome, every field coerced to its type and cut to its cap (replies are hostile)."""

    def text(key: str, cap: int) -> str:
        value = rec.get(key, "")
        return value[:cap] if isinstance(value, str) else ""

    frames = []
    raw_frames = rec.get("frames")
    for f in raw_frames[:3] if isinstance(raw_frames, list) else []:
        if isinstance(f, dict):
            lineno = f.get("lineno")
            frames.append(
                {
                    "line": str(f.get("line", ""))[:500],
                    "lineno": lineno if isinstance(lineno, int) else 0,
                    "name": str(f.get("name", ""))[:200],
                }
            )
    value = text("value", OUTPUT_CAP)
    return TestOutcome(
        status=rec["status"],
        value=value,
        display=text("display", 1000),
        error=text("error", 4000),
        frames=frames,
        traceback=text("traceback", 4000),
        phase=text("phase", 16),
        debug=text("debug", DEBUG_CAP),
        time_s=elapsed,
        overflow=bool(rec.get("overflow", False)) or len(value) >= OUTPUT_CAP,
    )
