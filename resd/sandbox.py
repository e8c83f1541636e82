"""Run untrusted (model-written) Python in a sandbox.

:func:`run_python` runs a program in a fresh process with, depending on what the machine offers
(:func:`mode`, :func:`protection`):

* ``bwrap`` (bubblewrap, Debian package ``bubblewrap``): new PID, network, IPC and UTS namespaces
  (no network), a read-only view of the system directories and the Python installation only (no
  home directories, no project directory, no host ``/tmp``), a private size-limited tmpfs as the
  working directory, and, when started as root, an unprivileged per-run uid so that files owned by
  root are out of reach and the process-count limit is enforced. Every process the program starts
  dies with the sandbox (PID namespace), including detached grandchildren.
* ``unshare`` (util-linux): user, PID, network, IPC, UTS and mount namespaces; the filesystem is
  the caller's (writable where the caller can write).
* ``rlimits``: resource limits only; no isolation of the filesystem or the network.

In every mode: resource limits on CPU time, address space, file size and number of processes, a
wall-clock kill of the whole process group, a minimal environment (nothing inherited), capped
output, and the launcher is killed if the calling process dies. The mode is picked once per
process (the first that works, in the order above); set ``RESD_SANDBOX=bwrap|unshare|rlimits`` to
force one.

:func:`run_tests` runs a list of function-call, stdin or assert-style tests of one program inside
the sandbox with a per-test time limit and returns what the program produced; comparing with the
expected outputs is left to the caller, so expected outputs never enter the sandbox.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = [
    "MODES",
    "SandboxResult",
    "SandboxUnavailable",
    "TestOutcome",
    "available_modes",
    "mode",
    "protection",
    "run_python",
    "run_tests",
]

MODES = ("bwrap", "unshare", "rlimits")
STATUSES = ("ok", "error", "timeout", "memory", "killed")

_ENV_VAR = "RESD_SANDBOX"
_WORKDIR = "/tmp/sandbox"  # the program's working directory inside bwrap
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Per-run uids when started as root: unique among live sandboxes because the caller's pid is.
_UID_BASE = 100_000
_UID_SLOTS = 256
_uid_counter = itertools.count()


class SandboxUnavailable(RuntimeError):
    """The requested sandbox mode does not work on this machine."""


@dataclasses.dataclass
class SandboxResult:
    """What happened to a sandboxed program.

    Attributes:
        status: ``ok`` (exit code 0), ``error`` (non-zero exit, e.g. an uncaught exception),
            ``timeout`` (wall-clock, idle or CPU limit), ``memory`` (out of memory) or ``killed``
            (ended by a signal it was not sent by the time limits, or stopped for flooding output).
        stdout, stderr: decoded output, each cut at the output cap.
        returncode: the launcher's exit status (negative: killed by that signal).
        wall_s: wall-clock seconds from start to end.
        reason: why the status is not ``ok``, in words.
        output_truncated: the output went over the cap (the program was stopped).
        mode: the sandbox mode used.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int | None
    wall_s: float
    reason: str = ""
    output_truncated: bool = False
    mode: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------------------------
# Mode detection
# --------------------------------------------------------------------------------------------

_probe_lock = threading.Lock()
_probe_results: dict[str, str] = {}  # mode -> "" when it works, else the reason it does not


def _is_root() -> bool:
    return os.geteuid() == 0


def available_modes() -> list[str]:
    """The sandbox modes that work on this machine, strongest first."""
    return [m for m in MODES if _probe(m) == ""]


def mode() -> str:
    """The mode :func:`run_python` uses by default (``RESD_SANDBOX`` overrides the choice)."""
    forced = os.environ.get(_ENV_VAR, "").strip()
    if forced:
        _check_mode(forced)
        return forced
    for m in MODES:
        if _probe(m) == "":
            return m
    raise SandboxUnavailable("no sandbox mode works here: " + "; ".join(f"{m}: {_probe(m)}" for m in MODES))


_default_mode = mode  # run_python's parameter ``mode`` shadows the function


def _check_mode(name: str) -> None:
    if name not in MODES:
        raise ValueError(f"unknown sandbox mode {name!r}; use one of {', '.join(MODES)}")
    reason = _probe(name)
    if reason:
        raise SandboxUnavailable(f"sandbox mode {name!r} does not work here: {reason}")


def _probe(name: str) -> str:
    with _probe_lock:
        if name not in _probe_results:
            _probe_results[name] = _probe_uncached(name)
        return _probe_results[name]


def _probe_uncached(name: str) -> str:
    needed = {
        "bwrap": ("prlimit", "bwrap"),
        "unshare": ("prlimit", "setpriv", "unshare"),
        "rlimits": ("prlimit", "setpriv"),
    }
    for tool in needed[name]:
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if name == "bwrap" and _is_root() and shutil.which("setpriv") is None:
        return "setpriv not found"
    try:
        result = _run(name, "print('sandbox-ok')", b"", 20.0, 512, (), None, 4096, 16, 16, 8, sys.executable)
    except OSError as e:
        return f"cannot start: {e}"
    if result.status == "ok" and result.stdout.strip() == "sandbox-ok":
        return ""
    detail = (result.stderr.strip().splitlines() or [result.reason or result.status])[-1]
    return f"test run failed ({result.status}): {detail[:200]}"


def protection(mode_name: str | None = None) -> str:
    """A one-paragraph description of what the sandbox protects against in ``mode_name``."""
    name = mode_name or mode()
    limits = "rlimits on CPU time, address space, file size and process count; wall-clock kill of the process group"
    common = f"{limits}; empty environment (no inherited variables); capped output; dies with its caller"
    if name == "bwrap":
        who = (
            "an unprivileged per-run uid (root-owned files unreadable)"
            if _is_root()
            else "the caller's uid inside a user namespace"
        )
        return (
            "bubblewrap: new PID/network/IPC/UTS namespaces (no network; all processes die with the "
            "sandbox), read-only view of the system directories and the Python installation only "
            "(home, project and host /tmp invisible), private size-limited tmpfs working directory, "
            f"runs as {who}; {common}."
        )
    no_nproc = " the process-count limit (root is exempt from it; a fork bomb is stopped only by the clock);"
    if name == "unshare":
        return (
            "unshare: new user/PID/network/IPC/UTS/mount namespaces (no network; all processes die "
            "with the sandbox); NOT protected: the filesystem is the caller's, writable where the caller "
            f"can write;{no_nproc if _is_root() else ''} {common}."
        )
    drop = _is_root() and _reachable_by_others(sys.executable)
    who = "an unprivileged per-run uid" if drop else "the caller's uid"
    exempt = no_nproc if _is_root() and not drop else ""
    return (
        f"rlimits only, runs as {who}; NOT protected: network, filesystem (readable and writable where "
        f"that uid can), other processes of that uid, and /proc of the machine;{exempt} detached processes "
        f"are hunted down after the run; {common}."
    )


# --------------------------------------------------------------------------------------------
# Running a program
# --------------------------------------------------------------------------------------------


def run_python(
    code: str,
    stdin: str | bytes = "",
    timeout_s: float = 1.0,
    memory_mb: int = 512,
    *,
    args: Sequence[str] = (),
    idle_timeout_s: float | None = None,
    max_output_bytes: int = 1 << 20,
    max_file_mb: int = 16,
    tmpfs_mb: int = 64,
    max_processes: int = 32,
    mode: str | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` with ``python -I -B`` in the sandbox and return its result.

    Args:
        code: the program's source.
        stdin: fed to the program's standard input (then closed).
        timeout_s: wall-clock limit; the CPU-time limit is this rounded up plus one second.
        memory_mb: address-space limit of each process.
        args: ``sys.argv[1:]`` of the program.
        idle_timeout_s: also stop the program when it writes nothing to stdout for this long.
        max_output_bytes: cap of stdout and of stderr each; a program going over it is stopped.
        max_file_mb: largest file the program may write.
        tmpfs_mb: size of the private working directory and ``/tmp`` (bwrap mode).
        max_processes: process (and thread) limit of the program.
        mode: ``bwrap``, ``unshare`` or ``rlimits``; default :func:`mode`.
        python: interpreter to run (default: this process's interpreter).
    """
    name = mode or _default_mode()
    _check_mode(name)
    data = stdin.encode("utf-8") if isinstance(stdin, str) else bytes(stdin)
    return _run(
        name,
        code,
        data,
        float(timeout_s),
        int(memory_mb),
        tuple(str(a) for a in args),
        idle_timeout_s,
        int(max_output_bytes),
        int(max_file_mb),
        int(tmpfs_mb),
        int(max_processes),
        python or sys.executable,
    )


def _minimal_env(home: str, token: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        # one thread per numerical library keeps the address space small and the process count low
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "RESD_SANDBOX_RUN": token,
    }


def _sandbox_uid() -> int:
    return _UID_BASE + (os.getpid() % 4_194_304) * _UID_SLOTS + next(_uid_counter) % _UID_SLOTS


def _reachable_by_others(path: str) -> bool:
    """True if an unprivileged uid can execute ``path`` (and read its installation)."""
    try:
        real = os.path.realpath(path)
        targets = [real]
        if os.path.realpath(path) == os.path.realpath(sys.executable):
            targets += [sys.prefix, sys.base_prefix]
        for target in targets:
            current = target
            while True:
                st = os.stat(current)
                if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH:
                    return False
                parent = os.path.dirname(current)
                if parent == current:
                    break
                current = parent
        return bool(os.stat(real).st_mode & stat.S_IXOTH)
    except OSError:
        return False


def _python_roots(python: str) -> list[str]:
    """Directories that must be visible for ``python`` to run (outside the system dirs)."""
    candidates = {os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        candidates |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots: list[str] = []
    for path in sorted(os.path.realpath(c) for c in candidates):
        if any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS):
            continue
        if any(path == r or path.startswith(r + "/") for r in roots):
            continue
        roots.append(path)
    return roots


def _bwrap_fs_args(python: str, host_dir: str, files: Sequence[str], tmpfs_bytes: int) -> list[str]:
    fs: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            fs += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            fs += ["--ro-bind", d, d]
    # The private /tmp comes first: a Python installation that lives under the host's /tmp (a
    # virtualenv in a temporary checkout) is then bound on top of it instead of being hidden by it.
    fs += ["--perms", "1777", "--size", str(tmpfs_bytes), "--tmpfs", "/tmp"]
    made: set[str] = {"/tmp"}
    for root in _python_roots(python):
        # bwrap would create the missing parents with mode 0700, unreadable to the sandbox's uid
        parts = root.strip("/").split("/")[:-1]
        for k in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:k])
            if parent not in made:
                made.add(parent)
                fs += ["--perms", "0755", "--dir", parent]
        fs += ["--ro-bind", root, root]
    # a symlinked interpreter (virtualenv) must resolve the same way inside
    if os.path.islink(python) and not any(python.startswith(r + "/") for r in _python_roots(python)):
        fs += ["--ro-bind", python, python]
    fs += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    fs += ["--dev", "/dev", "--proc", "/proc"]
    fs += ["--perms", "0777", "--dir", _WORKDIR]
    for f in files:
        fs += ["--ro-bind", os.path.join(host_dir, f), f"{_WORKDIR}/{f}"]
    fs += ["--chdir", _WORKDIR]
    return fs


def _command(
    name: str,
    python: str,
    host_dir: str,
    files: Sequence[str],
    program_args: Sequence[str],
    cpu_s: int,
    memory_mb: int,
    max_file_mb: int,
    tmpfs_mb: int,
    max_processes: int,
    uid: int | None,
) -> tuple[list[str], str]:
    """The launcher command line and the working directory it runs in."""
    root = _is_root()
    limits = [
        "prlimit",
        f"--cpu={cpu_s}:{cpu_s + 1}",
        f"--as={memory_mb << 20}",
        f"--fsize={max_file_mb << 20}",
        "--core=0",
    ]
    py = [python, "-I", "-B", "main.py", *program_args]
    if name == "bwrap":
        ns = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        ns += ["--die-with-parent", "--new-session"]
        fs = _bwrap_fs_args(python, host_dir, files, tmpfs_mb << 20)
        if root:
            assert uid is not None
            # bwrap runs privileged (no user namespace), then drops to the per-run uid; root does not
            # count against RLIMIT_NPROC but that uid does.
            inner = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
            inner += ["--bounding-set=-all", "--", *py]
            caps = ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            return [*limits, f"--nproc={max_processes}", "bwrap", *ns, *fs, *caps, "--", *inner], host_dir
        # unprivileged: the process limit is set inside the new user namespace, where it counts
        # only the sandbox's own processes
        inner = ["prlimit", f"--nproc={max_processes}", *py]
        return [*limits, "bwrap", "--unshare-user", *ns, *fs, "--", *inner], host_dir
    if name == "unshare":
        ns = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--ipc", "--uts", "--mount"]
        ns += ["--fork", "--kill-child", "--mount-proc"]
        inner = ["prlimit", f"--nproc={max_processes}", *py]
        return [*limits, "setpriv", "--pdeathsig=KILL", "--", *ns, "--", *inner], host_dir
    # rlimits: a shell in between, so that the program's parent is a disposable process
    shell = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *py]
    if uid is not None:
        drop = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return [*limits, f"--nproc={max_processes}", "setpriv", "--pdeathsig=KILL", *drop, "--", *shell], host_dir
    nproc = _count_user_tasks(os.getuid()) + max_processes
    return [*limits, f"--nproc={nproc}", "setpriv", "--pdeathsig=KILL", "--", *shell], host_dir


def _run(
    name: str,
    code: str,
    stdin: bytes,
    timeout_s: float,
    memory_mb: int,
    args: Sequence[str],
    idle_timeout_s: float | None,
    max_output_bytes: int,
    max_file_mb: int,
    tmpfs_mb: int,
    max_processes: int,
    python: str,
) -> SandboxResult:
    token = secrets.token_hex(8)
    host_dir = tempfile.mkdtemp(prefix="resd-sandbox-")
    uid = None
    if _is_root() and (name == "bwrap" or (name == "rlimits" and _reachable_by_others(python))):
        uid = _sandbox_uid()
    try:
        with open(os.path.join(host_dir, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        os.chmod(os.path.join(host_dir, "main.py"), 0o644)
        os.chmod(host_dir, 0o755)
        if uid is not None and name == "rlimits":
            os.chown(host_dir, uid, uid)
            os.chmod(host_dir, 0o700)
        home = _WORKDIR if name == "bwrap" else host_dir
        cmd, cwd = _command(
            name,
            python,
            host_dir,
            files=["main.py"],
            program_args=args,
            cpu_s=math.ceil(timeout_s) + 1,
            memory_mb=memory_mb,
            max_file_mb=max_file_mb,
            tmpfs_mb=tmpfs_mb,
            max_processes=max_processes,
            uid=uid,
        )
        return _supervise(
            cmd, cwd, _minimal_env(home, token), stdin, timeout_s, idle_timeout_s, max_output_bytes, name, uid, token
        )
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def _supervise(
    cmd: list[str],
    cwd: str,
    env: dict[str, str],
    stdin: bytes,
    timeout_s: float,
    idle_timeout_s: float | None,
    max_output_bytes: int,
    name: str,
    uid: int | None,
    token: str,
) -> SandboxResult:
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    stopped_for = ""  # "timeout", "idle", "output" when we ended the program
    try:
        stopped_for = _pump(
            proc,
            lambda: _kill_all(proc, name, uid, token),
            stdin,
            out,
            err,
            start,
            timeout_s,
            idle_timeout_s,
            max_output_bytes,
        )
        if not stopped_for:
            # pipes closed; the launcher may still be running (it closed its output itself)
            if _wait_exit(proc.pid, start + timeout_s - time.monotonic()) is None:
                stopped_for = "timeout"
    finally:
        _kill_all(proc, name, uid, token)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        returncode = proc.wait()
    wall = time.monotonic() - start
    stdout = bytes(out).decode("utf-8", "replace")
    stderr = bytes(err).decode("utf-8", "replace")
    status, reason = _classify(returncode, stderr, stopped_for, timeout_s, idle_timeout_s, max_output_bytes, name)
    return SandboxResult(status, stdout, stderr, returncode, wall, reason, stopped_for == "output", name)


def _pump(
    proc: subprocess.Popen,
    on_exit: Callable[[], None],
    data: bytes,
    out: bytearray,
    err: bytearray,
    start: float,
    timeout_s: float,
    idle_timeout_s: float | None,
    cap: int,
) -> str:
    """Feed stdin and collect output until both pipes close; return why we stopped early, if we did."""
    sel = selectors.DefaultSelector()
    fds = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}  # type: ignore[union-attr]
    for fd in fds:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    in_fd = proc.stdin.fileno()  # type: ignore[union-attr]
    view = memoryview(data)
    if data:
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()  # type: ignore[union-attr]
    deadline = start + timeout_s
    idle_deadline = start + idle_timeout_s if idle_timeout_s else math.inf
    exited_seen = False
    try:
        while any(key.events & selectors.EVENT_READ for key in sel.get_map().values()):
            now = time.monotonic()
            limit = min(deadline, idle_deadline)
            if now >= limit:
                return "timeout" if deadline <= idle_deadline else "idle"
            events = sel.select(timeout=min(limit - now, 0.05))
            for key, _ in events:
                fd = key.fd
                if fd == in_fd:
                    try:
                        n = os.write(fd, view[:65536])
                    except BlockingIOError:
                        n = 0
                    except OSError:  # the program closed its stdin: drop the rest
                        n = len(view)
                    view = view[n:]
                    if not view:
                        sel.unregister(fd)
                        proc.stdin.close()  # type: ignore[union-attr]
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    continue
                buf = fds[fd]
                room = cap - len(buf)
                buf += chunk[: max(room, 0)]
                if len(chunk) > room:
                    return "output"
                if fd == proc.stdout.fileno() and idle_timeout_s:  # type: ignore[union-attr]
                    idle_deadline = time.monotonic() + idle_timeout_s
            if not events and not exited_seen and _wait_exit(proc.pid, 0) is not None:
                # the launcher is gone but something it started still holds the pipes
                exited_seen = True
                on_exit()
        return ""
    finally:
        sel.close()


def _wait_exit(pid: int, timeout: float) -> int | None:
    """Wait up to ``timeout`` s for ``pid`` to exit without reaping it (its pid stays reserved)."""
    end = time.monotonic() + max(timeout, 0.0)
    delay = 0.001
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return 0
        if info is not None:
            return info.si_status
        if time.monotonic() >= end:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _kill_all(proc: subprocess.Popen, name: str, uid: int | None, token: str) -> None:
    """Kill the launcher's process group (while the launcher is unreaped) and any escapees."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if name != "rlimits":
        return  # the PID namespace dies with its first process
    for pid in _pids():
        try:
            if uid is not None:
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
            else:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"RESD_SANDBOX_RUN={token}".encode() not in f.read().split(b"\0"):
                        continue
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _count_user_tasks(uid: int) -> int:
    count = 0
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


def _signal_of(returncode: int, name: str) -> int | None:
    if returncode < 0:
        return -returncode
    # bwrap and the rlimits shell report a child killed by signal N as exit status 128 + N
    if name in ("bwrap", "rlimits") and 128 < returncode < 128 + 65:
        return returncode - 128
    return None


def _classify(
    returncode: int,
    stderr: str,
    stopped_for: str,
    timeout_s: float,
    idle_timeout_s: float | None,
    cap: int,
    name: str,
) -> tuple[str, str]:
    if stopped_for == "timeout":
        return "timeout", f"wall-clock limit of {timeout_s:g} s exceeded"
    if stopped_for == "idle":
        return "timeout", f"no output for {idle_timeout_s:g} s"
    if stopped_for == "output":
        return "killed", f"output over {cap} bytes; stopped"
    if returncode == 0:
        return "ok", ""
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    if "MemoryError" in last:
        return "memory", "out of memory (address-space limit)"
    sig = _signal_of(returncode, name)
    if sig == signal.SIGXCPU:
        return "timeout", "CPU-time limit exceeded"
    if sig is not None:
        try:
            sig_name = signal.Signals(sig).name
        except ValueError:
            sig_name = str(sig)
        return "killed", f"killed by signal {sig_name}"
    return "error", f"exit code {returncode}"


# --------------------------------------------------------------------------------------------
# Test harness
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TestOutcome:
    """What one test produced inside the sandbox.

    Attributes:
        status: ``ok``, ``error`` (an exception, or the program died), ``timeout``, or ``skipped``
            (not run: earlier tests timed out ``stop_after_timeouts`` times, or the total time ran out).
        value: ``call`` tests: canonical JSON (sorted keys, no spaces) of the return value;
            ``stdin`` tests: everything the program printed; ``code`` tests: "".
        display: ``call`` tests: ``str()`` of the return value (cut at 1000 characters).
        error: the exception line ``"Type: message"`` when status is ``error``.
        frames: up to 3 innermost frames in the program's file: dicts ``line``, ``lineno``, ``name``.
        debug: what the program wrote to stderr or with ``debug_print`` (capped).
        time_s: seconds the test ran.
        overflow: the value or output went over the test's output cap (and was cut).
    """

    __test__ = False  # not a pytest class

    status: str
    value: str = ""
    display: str = ""
    error: str = ""
    frames: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    debug: str = ""
    time_s: float = 0.0
    overflow: bool = False


_DRIVER = r"""
import __future__
import ast, builtins, io, json, linecache, os, signal, sys, time, traceback, typing

_TYPING_NAMES = ("Any", "Callable", "DefaultDict", "Deque", "Dict", "FrozenSet", "Generic", "Iterable",
                 "Iterator", "List", "Literal", "Mapping", "Optional", "Sequence", "Set", "Tuple", "Type",
                 "TypeVar", "Union")


class _TimeLimit(BaseException):
    pass


class _NotPlain(Exception):
    pass


def _on_alarm(signum, frame):
    raise _TimeLimit()


class _Sink(io.RawIOBase):
    def __init__(self, cap):
        self.cap, self.data, self.overflow = cap, bytearray(), False

    def writable(self):
        return True

    def write(self, b):
        room = self.cap - len(self.data)
        if len(b) > room:
            self.overflow = True
            self.data += bytes(b[:max(room, 0)])
        else:
            self.data += b
        return len(b)


def _text_sink(cap):
    raw = _Sink(cap)
    return raw, io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors="replace", write_through=True)


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    raise _NotPlain(f"Non-serializable result type: {type(value).__name__}")


def _error(exc, filename):
    if isinstance(exc, _NotPlain):
        return {"error": str(exc), "frames": []}
    try:
        line = f"{type(exc).__name__}: {exc}"
    except BaseException:
        line = f"{type(exc).__name__}: <unprintable message>"
    frames = []
    try:
        for fs in traceback.extract_tb(exc.__traceback__):
            if fs.filename == filename:
                frames.append({"line": fs.line or "", "lineno": fs.lineno, "name": fs.name})
    except BaseException:
        pass
    return {"error": line, "frames": frames[-3:]}


def _resolve(ns, source, fn_name):
    fn = ns.get(fn_name) if fn_name else None
    if callable(fn):
        return fn
    cls = ns.get("Solution")
    if fn_name and isinstance(cls, type) and callable(getattr(cls, fn_name, None)):
        return getattr(cls(), fn_name)
    try:
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and callable(ns.get(node.name)):
                return ns[node.name]
    except SyntaxError:
        pass
    raise NameError(f"name {fn_name!r} is not defined")


def _namespace(main, debug):
    def debug_print(*args, sep=" ", end="\n", **_):
        try:
            debug.write(sep.join(str(a) for a in args) + end)
        except Exception:
            pass
    ns = {"__builtins__": builtins, "__name__": "__main__" if main else "__not_main__", "debug_print": debug_print}
    for name in _TYPING_NAMES:
        ns[name] = getattr(typing, name)
    return ns


def _one(test, source, filename):
    kind = test["kind"]
    cap = int(test.get("output_cap", 1 << 20))
    out_raw, out = _text_sink(cap)
    dbg_raw, dbg = _text_sink(int(test.get("debug_cap", 16384)))
    stdin_text = test.get("stdin", "") if kind == "stdin" else ""
    fake_in = io.TextIOWrapper(io.BufferedReader(io.BytesIO(stdin_text.encode("utf-8"))), encoding="utf-8")
    ns = _namespace(kind != "call", dbg)
    rec = {"status": "ok"}
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = fake_in, out, dbg
    try:
        if kind == "call":
            flags = __future__.annotations.compiler_flag
            exec(compile(source, filename, "exec", flags=flags, dont_inherit=True), ns)
            fn = _resolve(ns, source, test.get("fn_name") or "")
            result = fn(*test.get("args", []), **test.get("kwargs", {}))
            value = json.dumps(_plain(result), sort_keys=True, separators=(",", ":"))
            rec["overflow"] = len(value) > cap
            rec["value"] = value[:cap]
            try:
                rec["display"] = str(result)[:1000]
            except Exception:
                rec["display"] = value[:1000]
        elif kind == "stdin":
            try:
                exec(compile(source, filename, "exec", dont_inherit=True), ns)
            except SystemExit as e:
                if e.code not in (None, 0):
                    raise
        elif kind == "code":
            exec(compile(source, filename, "exec", dont_inherit=True), ns)
            exec(compile(test.get("source", ""), "Tests.py", "exec", dont_inherit=True), ns)
        else:
            raise ValueError(f"unknown test kind {kind!r}")
    except _TimeLimit:
        raise
    except BaseException as e:
        rec = {"status": "error", **_error(e, filename)}
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    for stream in (out, dbg):
        try:
            stream.flush()
        except Exception:
            pass
    if kind == "stdin":
        rec["value"] = out_raw.data.decode("utf-8", "replace")
        rec["overflow"] = out_raw.overflow
    rec["debug"] = dbg_raw.data.decode("utf-8", "replace")
    return rec


def main():
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    nonce = payload.pop("nonce")
    report = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace")
    source, filename, limit = payload["code"], payload["filename"], float(payload["time_limit_s"])
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    signal.signal(signal.SIGALRM, _on_alarm)
    max_timeouts = payload.get("max_timeouts")
    timeouts = 0
    for test in payload["tests"]:
        if max_timeouts is not None and timeouts >= max_timeouts:
            break
        start = time.perf_counter()
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            rec = _one(test, source, filename)
        except _TimeLimit:
            rec = {"status": "timeout"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        timeouts += rec["status"] == "timeout"
        rec["i"] = test["i"]
        rec["time"] = time.perf_counter() - start
        try:
            line = json.dumps(rec, ensure_ascii=False)
        except Exception as e:
            line = json.dumps({"i": test["i"], "status": "error", "error": f"{type(e).__name__}: {e}"})
        report.write("\n" + nonce + " " + line + "\n")
        report.flush()


main()
"""


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
    mode: str | None = None,
) -> list[TestOutcome]:
    """Run the tests of one program in the sandbox, one after another in a driver process.

    Each test is a mapping with ``kind``:

    * ``"call"``: exec the program (``__name__ != "__main__"``), then call ``fn_name`` (a top-level
      function, else a method of a class ``Solution``, else the first top-level function) with
      ``args`` (a list) and ``kwargs`` (a dict);
    * ``"stdin"``: exec the program as ``__main__`` with ``stdin`` (a string) as standard input and
      capture what it prints (``sys.exit(0)`` ends it normally);
    * ``"code"``: exec the program as ``__main__``, then ``source`` (assert-style test code).

    Optional per test: ``output_cap`` (bytes of value or output kept, default 1 MiB).
    A test that runs over ``time_limit_s`` is a ``timeout``; a program that dies, hangs in C code
    or floods its output ends its driver, and the remaining tests are run in a new one.
    ``workers`` drivers run at once (tests dealt round-robin). Tests not yet run when
    ``total_timeout_s`` has passed, or after ``stop_after_timeouts`` tests of a driver's share timed
    out, are ``skipped``. Never raises on a hostile program.
    """
    items = []
    for i, t in enumerate(tests):
        item = dict(t)
        item["i"] = i
        items.append(item)
    outcomes: list[TestOutcome | None] = [None] * len(items)
    if not items:
        return []
    deadline = time.monotonic() + total_timeout_s if total_timeout_s else math.inf
    n = max(1, min(int(workers), len(items)))
    chunks = [items[k::n] for k in range(n)]
    if n == 1:
        _run_chunk(code, chunks[0], outcomes, time_limit_s, memory_mb, filename, deadline, stop_after_timeouts, mode)
    else:
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [
                pool.submit(
                    _run_chunk,
                    code,
                    c,
                    outcomes,
                    time_limit_s,
                    memory_mb,
                    filename,
                    deadline,
                    stop_after_timeouts,
                    mode,
                )
                for c in chunks
            ]
            for f in futures:
                f.result()
    return [o if o is not None else TestOutcome("skipped") for o in outcomes]


def _run_chunk(
    code: str,
    items: list[dict[str, Any]],
    outcomes: list[TestOutcome | None],
    time_limit_s: float,
    memory_mb: int,
    filename: str,
    deadline: float,
    stop_after_timeouts: int | None,
    sandbox_mode: str | None,
) -> None:
    """Run ``items`` in drivers, starting a new one after the test a driver died on (unfilled: skipped)."""
    slack = 1.0  # process start-up and reporting, on top of the per-test limit
    remaining = list(items)
    timeouts = 0
    while remaining:
        budget = min(len(remaining) * (time_limit_s + slack) + slack, deadline - time.monotonic())
        if budget <= 0:
            return
        nonce = secrets.token_hex(16)
        payload: dict[str, Any] = {"nonce": nonce, "code": code, "filename": filename, "time_limit_s": time_limit_s}
        if stop_after_timeouts is not None:
            payload["max_timeouts"] = stop_after_timeouts - timeouts
        payload["tests"] = remaining
        caps = sum(int(t.get("output_cap", 1 << 20)) + int(t.get("debug_cap", 16384)) for t in remaining)
        result = run_python(
            _DRIVER,
            stdin=json.dumps(payload, ensure_ascii=False),
            timeout_s=budget,
            memory_mb=memory_mb,
            idle_timeout_s=time_limit_s + slack,
            max_output_bytes=8 * caps + (1 << 20),
            mode=sandbox_mode,
        )
        reported = _parse_reports(result.stdout, nonce)
        for item in remaining:
            if item["i"] in reported:
                outcomes[item["i"]] = reported[item["i"]]
                timeouts += reported[item["i"]].status == "timeout"
        unreported = [t for t in remaining if t["i"] not in reported]
        if not unreported or (stop_after_timeouts is not None and timeouts >= stop_after_timeouts):
            return
        # the first unreported test is the one the driver was running when it ended
        current = unreported[0]
        outcomes[current["i"]] = _outcome_of_dead_driver(result)
        timeouts += outcomes[current["i"]].status == "timeout"  # type: ignore[union-attr]
        remaining = unreported[1:]


def _parse_reports(stdout: str, nonce: str) -> dict[int, TestOutcome]:
    reports: dict[int, TestOutcome] = {}
    prefix = nonce + " "
    for line in stdout.split("\n"):
        if not line.startswith(prefix):
            continue
        try:
            rec = json.loads(line[len(prefix) :])
            i = int(rec["i"])
            status = rec.get("status")
            if status not in ("ok", "error", "timeout"):
                continue
            frames = [
                {"line": str(f.get("line", "")), "lineno": int(f.get("lineno", 0)), "name": str(f.get("name", ""))}
                for f in rec.get("frames", [])
            ]
            reports.setdefault(
                i,
                TestOutcome(
                    status=status,
                    value=str(rec.get("value", "")),
                    display=str(rec.get("display", "")),
                    error=str(rec.get("error", "")),
                    frames=frames,
                    debug=str(rec.get("debug", "")),
                    time_s=float(rec.get("time", 0.0)),
                    overflow=bool(rec.get("overflow", False)),
                ),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return reports


def _outcome_of_dead_driver(result: SandboxResult) -> TestOutcome:
    if result.status == "timeout":
        return TestOutcome("timeout")
    if result.status == "memory":
        return TestOutcome("error", error="MemoryError: out of memory")
    if result.output_truncated:
        return TestOutcome("error", error="OutputLimitExceeded: the program wrote too much output")
    return TestOutcome(
        "error", error=f"ProcessError: the program terminated abnormally ({result.reason or result.status})"
    )
