"""Run untrusted (model-written) Python so that it can neither reach the host nor forge its verdict.

The package is laid out by trust:

* :mod:`resd.sandbox.modes`: which isolation is used (``bwrap`` by default; the weak ``unshare`` and
  ``rlimits`` modes only with explicit consent) and :func:`protection`, what holds in each;
* :mod:`resd.sandbox.launch`: the command line, the filesystem view and the supervision of one
  sandbox (limits, output caps, killing every process of it);
* :mod:`resd.sandbox.limits`: whole-sandbox memory and process caps (cgroups, or a watchdog);
* :mod:`resd.sandbox.harness`: the judging side of running tests (inputs out, plain output back,
  this process's clock for time limits);
* :mod:`resd.sandbox.driver` and :mod:`resd.sandbox.reaper`: programs that run *inside* the
  sandbox (standard library only), shipped as files, never imported by the judging side.

:func:`run_python` runs one program; :func:`run_tests` runs a program against test inputs and
returns what it produced, for the caller to compare with expected outputs that never enter the
sandbox.
"""

from __future__ import annotations

from collections.abc import Sequence

from resd.sandbox.harness import DEBUG_CAP, OUTPUT_CAP, TestOutcome, run_tests
from resd.sandbox.launch import STATUSES, SandboxResult, run_program
from resd.sandbox.modes import (
    MODES,
    UNISOLATED_OPT_IN,
    WEAK_MODES,
    SandboxUnavailable,
    available_modes,
    check_mode,
    mode,
    protection,
    require_allowed,
)

__all__ = [
    "DEBUG_CAP",
    "MODES",
    "OUTPUT_CAP",
    "STATUSES",
    "UNISOLATED_OPT_IN",
    "WEAK_MODES",
    "SandboxResult",
    "SandboxUnavailable",
    "TestOutcome",
    "available_modes",
    "mode",
    "protection",
    "resolve_mode",
    "run_python",
    "run_tests",
]

_default_mode = mode  # run_python's parameter ``mode`` shadows the function


def resolve_mode(name: str | None) -> str:
    """The mode to run model code in: ``name`` or the default, checked to work and to be allowed."""
    chosen = name or _default_mode()
    check_mode(chosen)
    require_allowed(chosen)
    return chosen


def run_python(
    code: str,
    stdin: str | bytes = "",
    timeout_s: float = 1.0,
    memory_mb: int = 512,
    *,
    args: Sequence[str] = (),
    max_output_bytes: int = 1 << 20,
    max_file_mb: int = 16,
    tmpfs_mb: int = 64,
    max_processes: int = 32,
    mode: str | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` with ``python -I -S -B`` in the sandbox and return its result.

    Args:
        code: the program's source.
        stdin: fed to the program's standard input (then closed).
        timeout_s: wall-clock limit; the CPU-time limit is this rounded up plus one second.
        memory_mb: memory of the whole sandbox (all its processes together), and address-space
            limit of each process.
        args: ``sys.argv[1:]`` of the program.
        max_output_bytes: cap of stdout and of stderr each; a program going over it is stopped.
        max_file_mb: largest file the program may write.
        tmpfs_mb: size of the private working directory and ``/tmp`` (bwrap mode).
        max_processes: process (and thread) limit of the program.
        mode: ``bwrap``, ``unshare`` or ``rlimits``; default :func:`mode`. The weak modes need
            ``RESD_UNSAFE_SANDBOX_WITHOUT_ISOLATION=1`` (see :func:`resd.sandbox.modes.require_allowed`).
        python: interpreter to run (default: the real interpreter behind this process's).

    Raises:
        SandboxUnavailable: the mode does not work here, or is weak and not consented to.
    """
    name = resolve_mode(mode)
    data = stdin.encode("utf-8") if isinstance(stdin, str) else bytes(stdin)
    return run_program(
        name,
        code,
        data,
        timeout_s=float(timeout_s),
        memory_mb=int(memory_mb),
        args=tuple(str(a) for a in args),
        max_output_bytes=int(max_output_bytes),
        max_file_mb=int(max_file_mb),
        tmpfs_mb=int(tmpfs_mb),
        max_processes=int(max_processes),
        python=python,
    )
