"""Which sandbox mode runs model-written code, and what each mode protects.

* ``bwrap`` (bubblewrap, the default): new PID, network, IPC and UTS namespaces; a read-only view
  of the system directories and the interpreter's standard library with every ``site-packages`` and
  ``dist-packages`` directory hidden (so neither resd, its data nor any installed package is
  visible); a private ``/tmp`` working directory.
* ``unshare`` and ``rlimits`` are *weak*: the program sees (and, where the caller may, writes) the
  caller's filesystem, answer keys included. They run model code only when the caller sets
  :data:`UNISOLATED_OPT_IN` to ``1``; naming the mode (``RESD_SANDBOX=unshare``) is not consent.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading

from resd.sandbox import limits

MODES = ("bwrap", "unshare", "rlimits")
WEAK_MODES = ("unshare", "rlimits")
MODE_VARIABLE = "RESD_SANDBOX"
#: set to ``1`` to let the weak modes run model-written code (see :func:`require_allowed`)
UNISOLATED_OPT_IN = "RESD_UNSAFE_SANDBOX_WITHOUT_ISOLATION"


class SandboxUnavailable(RuntimeError):
    """The requested sandbox mode does not work here, or may not run model code without consent."""


def is_root() -> bool:
    return os.geteuid() == 0


_probe_lock = threading.Lock()
_probe_results: dict[str, str] = {}  # mode -> "" when it works, else the reason it does not


def available_modes() -> list[str]:
    """The sandbox modes that work on this machine, strongest first (consent not considered)."""
    return [m for m in MODES if probe(m) == ""]


def mode() -> str:
    """The mode :func:`resd.sandbox.run_python` uses by default (``RESD_SANDBOX`` overrides it)."""
    forced = os.environ.get(MODE_VARIABLE, "").strip()
    if forced:
        check_mode(forced)
        return forced
    for m in MODES:
        if probe(m) == "":
            return m
    raise SandboxUnavailable("no sandbox mode works here: " + "; ".join(f"{m}: {probe(m)}" for m in MODES))


def check_mode(name: str) -> None:
    if name not in MODES:
        raise ValueError(f"unknown sandbox mode {name!r}; use one of {', '.join(MODES)}")
    reason = probe(name)
    if reason:
        raise SandboxUnavailable(f"sandbox mode {name!r} does not work here: {reason}")


def opted_in() -> bool:
    return os.environ.get(UNISOLATED_OPT_IN, "").strip() == "1"


def require_allowed(name: str) -> None:
    """Refuse to run model code in a weak mode unless the caller opted in explicitly."""
    if name not in WEAK_MODES or opted_in():
        return
    who = "as root it could write anywhere on this machine" if is_root() else "it could write your files"
    bwrap = probe("bwrap")
    why = f" (bubblewrap: {bwrap})" if bwrap else ""
    raise SandboxUnavailable(
        f"refusing to run model-written code in sandbox mode {name!r}{why}: this mode does not isolate the "
        f"filesystem, so the program could read the answer keys and forge its reward, and {who}. Install "
        f"bubblewrap (Debian: apt-get install bubblewrap), or set {UNISOLATED_OPT_IN}=1 to accept that risk."
    )


def probe(name: str) -> str:
    with _probe_lock:
        if name not in _probe_results:
            _probe_results[name] = _probe_uncached(name)
        return _probe_results[name]


def _probe_uncached(name: str) -> str:
    from resd.sandbox.launch import run_program

    needed = {"bwrap": ("prlimit", "bwrap"), "unshare": ("prlimit", "setpriv", "unshare"), "rlimits": ("prlimit",)}
    for tool in needed[name]:
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if name == "bwrap" and is_root() and (shutil.which("setpriv") is None or shutil.which("mount") is None):
        return "setpriv or mount not found"
    try:
        result = run_program(name, "print('sandbox-ok')", timeout_s=20.0, memory_mb=512, max_processes=16)
    except OSError as e:
        return f"cannot start: {e}"
    if result.status == "ok" and result.stdout.strip() == "sandbox-ok":
        return ""
    detail = (result.stderr.strip().splitlines() or [result.reason or result.status])[-1]
    return f"test run failed ({result.status}): {detail[:200]}"


def protection(mode_name: str | None = None) -> str:
    """What the sandbox protects against in ``mode_name`` (default: the mode in use), in one paragraph."""
    from resd.sandbox.launch import drops_uid

    name = mode_name or mode()
    caps = limits.describe()
    common = (
        f"{caps}; CPU-time, address-space and file-size rlimits set before the program starts; per-test wall "
        "time measured by the judging process; empty environment; capped output; the expected answers never "
        "enter the sandbox, which returns plain data only, compared outside"
    )
    if name == "bwrap":
        who = (
            "an unprivileged per-run uid (root-owned files unreadable)"
            if is_root()
            else "the caller's uid inside a user namespace"
        )
        # util-linux mount refuses a non-root uid even inside bwrap's user namespace
        tmp = "size- and inode-limited tmpfs" if is_root() else "size-limited tmpfs (no inode limit without root)"
        return (
            "bubblewrap: new PID/network/IPC/UTS namespaces (no network; every process dies with the sandbox "
            "and with its caller), read-only view of the system directories and the interpreter's standard "
            "library only (every site-packages/dist-packages directory, the project and home directories and "
            f"the host /tmp invisible, so resd and its data are unreachable), a private {tmp} as working "
            f"directory, runs as {who}; {common}."
        )
    consent = f"runs model code only with {UNISOLATED_OPT_IN}=1"
    if name == "unshare":
        return (
            f"unshare ({consent}): new user/PID/network/IPC/UTS/mount namespaces (no network; every process dies "
            "with the sandbox and with its caller); NOT protected: the filesystem is the caller's, readable and "
            "writable where the caller can (answer keys included; as root: the whole machine); "
            f"{common}."
        )
    drop = drops_uid("rlimits", sys.executable)
    who = "an unprivileged per-run uid" if drop else "the caller's uid"
    return (
        f"rlimits only ({consent}), runs as {who}; NOT protected: network, filesystem (readable and writable "
        "where that uid can, answer keys included), /proc of the machine"
        + ("" if drop else ", and every process of the caller's uid (the program can signal or trace them)")
        + "; a trusted reaper kills every process the program started when it ends or when its caller dies"
        + ("" if drop else " (unless the program kills the reaper first, which the same uid can do)")
        + f"; {common}."
    )
