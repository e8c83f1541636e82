"""Starting a program in a sandbox mode, talking to it over pipes, and ending it with all its processes.

:func:`run_program` runs one program to completion (what :func:`resd.sandbox.run_python` returns);
:class:`Launch` is a started sandbox whose stdin and stdout the caller uses as a channel (the test
harness). The program runs ``python -I -S -B main.py`` with a bare interpreter: no ``site``, so
no installed package is importable, and in ``bwrap`` mode the package directories are not even
visible.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
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
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from resd.sandbox import limits
from resd.sandbox.modes import is_root

STATUSES = ("ok", "error", "timeout", "memory", "killed")
WORKDIR = "/tmp/sandbox"  # the program's working directory in bwrap mode
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
INODES = 4096  # files and directories the program may create in its tmpfs
_UID_BASE = 100_000
_UID_SLOTS = 256
_uid_counter = itertools.count()
_REAPER = Path(__file__).with_name("reaper.py")


@dataclasses.dataclass
class SandboxResult:
    """What happened to a sandboxed program.

    Attributes:
        status: ``ok`` (exit code 0), ``error`` (non-zero exit, e.g. an uncaught exception),
            ``timeout`` (wall-clock or CPU limit), ``memory`` (out of memory) or ``killed``
            (ended by a signal, or stopped for flooding output).
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


# ------------------------------------------------------------------------------------------ who runs it


def _sandbox_uid() -> int:
    # unique among live sandboxes: the caller's pid is, and one caller runs at most 256 at once
    return _UID_BASE + (os.getpid() % 4_194_304) * _UID_SLOTS + next(_uid_counter) % _UID_SLOTS


def reachable_by_others(path: str) -> bool:
    """True if an unprivileged uid can execute ``path`` (and read its installation)."""
    try:
        real = os.path.realpath(path)
        for target in (real, *python_roots(path)):
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


def drops_uid(name: str, python: str) -> bool:
    """Whether the program runs as an unprivileged per-run uid in mode ``name``."""
    return is_root() and (name == "bwrap" or (name == "rlimits" and reachable_by_others(sandbox_python(python))))


# ------------------------------------------------------------------------------------------ what it sees


def sandbox_python(python: str | None) -> str:
    """The interpreter that runs the program: the real file behind ``python`` (a virtualenv's
    interpreter is a link to its base interpreter, whose standard library is all the program needs)."""
    return os.path.realpath(python or sys.executable)


@lru_cache(maxsize=16)
def python_roots(python: str) -> tuple[str, ...]:
    """Directories outside the system directories that ``python`` needs to run (its installation)."""
    real = os.path.realpath(python)
    candidates = {os.path.dirname(os.path.dirname(real))}
    if real == os.path.realpath(sys.executable):
        candidates |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    roots: list[str] = []
    for path in sorted(candidates):
        if any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS):
            continue
        if any(path == r or path.startswith(r + "/") for r in roots):
            continue
        roots.append(path)
    return tuple(roots)


@lru_cache(maxsize=16)
def hidden_dirs(python: str) -> tuple[str, ...]:
    """Directories under the visible roots that hold installed packages: covered by empty tmpfs."""
    patterns = [
        "lib*/python3*/site-packages",
        "lib*/python3*/dist-packages",
        "lib/python3/dist-packages",
        "local/lib*/python3*/site-packages",
        "local/lib*/python3*/dist-packages",
        "local/lib/python3/dist-packages",
        "lib/python3*/site-packages",
    ]
    found: set[str] = set()
    for root in (*SYSTEM_DIRS, *python_roots(python)):
        for pattern in patterns:
            for path in glob.glob(os.path.join(root, pattern)):
                if os.path.isdir(path) and not os.path.islink(path):
                    found.add(path)
    # this package itself, wherever it is installed, if a visible root holds it
    here = os.path.realpath(Path(__file__).parents[2])
    if any(here == r or here.startswith(r + "/") for r in (*SYSTEM_DIRS, *python_roots(python))):
        found.add(here)
    return tuple(sorted(found))


def _bwrap_filesystem(python: str, host_dir: str, files: Sequence[str], tmpfs_bytes: int) -> list[str]:
    fs: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            fs += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            fs += ["--ro-bind", d, d]
    fs += ["--perms", "1777", "--size", str(tmpfs_bytes), "--tmpfs", "/tmp"]
    made: set[str] = {"/tmp"}
    roots = python_roots(python)
    for root in roots:
        # bwrap would create missing parents with mode 0700, unreadable to the sandbox's uid
        parts = root.strip("/").split("/")[:-1]
        for k in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:k])
            if parent not in made:
                made.add(parent)
                fs += ["--perms", "0755", "--dir", parent]
        fs += ["--ro-bind", root, root]
    for hidden in hidden_dirs(python):
        fs += ["--perms", "0555", "--size", "4096", "--tmpfs", hidden]
    fs += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    fs += ["--dev", "/dev", "--proc", "/proc"]
    fs += ["--perms", "0777", "--dir", WORKDIR]
    for f in files:
        fs += ["--ro-bind", os.path.join(host_dir, f), f"{WORKDIR}/{f}"]
    fs += ["--chdir", WORKDIR]
    return fs


# ------------------------------------------------------------------------------------------ the command


@dataclasses.dataclass
class Limits:
    """Resource limits of one sandbox."""

    cpu_s: int
    memory_mb: int
    max_file_mb: int = 16
    tmpfs_mb: int = 64
    max_processes: int = 32


def build_command(
    name: str, python: str, host_dir: str, files: Sequence[str], program_args: Sequence[str], lim: Limits, uid: int | None
) -> tuple[list[str], str]:
    """The launcher command line and the host directory it starts in."""
    rlimits = [
        "prlimit",
        f"--cpu={lim.cpu_s}:{lim.cpu_s + 1}",
        f"--as={lim.memory_mb << 20}",
        f"--fsize={lim.max_file_mb << 20}",
        "--core=0",
    ]
    py = [python, "-I", "-S", "-B", "main.py", *program_args]
    if name == "bwrap":
        ns = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        ns += ["--die-with-parent", "--new-session"]
        fs = _bwrap_filesystem(python, host_dir, files, lim.tmpfs_mb << 20)
        if uid is not None:
            # bwrap runs privileged (no user namespace); a shell inside, still privileged, gives the
            # working tmpfs an inode limit (bwrap has no option for it), then drops to the per-run
            # uid, which RLIMIT_NPROC counts
            drop = f"setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all --bounding-set=-all --"
            script = f'mount -o remount,nr_inodes={INODES} /tmp && exec {drop} "$@"'
            caps = ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SYS_ADMIN"]
            inner = ["/bin/sh", "-c", script, "sh", *py]
            return [*rlimits, f"--nproc={lim.max_processes}", "bwrap", *ns, *fs, *caps, "--", *inner], host_dir
        inner = ["prlimit", f"--nproc={lim.max_processes}", *py]
        return [*rlimits, "bwrap", "--unshare-user", *ns, *fs, "--", *inner], host_dir
    reaper = [sys.executable, "-I", "-S", "-B", str(_REAPER)]
    if name == "unshare":
        ns = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--ipc", "--uts", "--mount"]
        ns += ["--fork", "--kill-child", "--mount-proc"]
        return [*reaper, *rlimits, *ns, "--", "prlimit", f"--nproc={lim.max_processes}", *py], host_dir
    if uid is not None:
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        return [*reaper, *rlimits, f"--nproc={lim.max_processes}", *drop, *py], host_dir
    nproc = _count_user_tasks(os.getuid()) + lim.max_processes
    return [*reaper, *rlimits, f"--nproc={nproc}", *py], host_dir


def minimal_env(home: str) -> dict[str, str]:
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
    }


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


# ------------------------------------------------------------------------------------------ a running sandbox


class Launch:
    """A started sandbox: pipes to its stdin/stdout/stderr, its limits, and a way to end all of it.

    Use as a context manager; leaving it kills every process of the sandbox and removes its files.
    """

    def __init__(
        self,
        name: str,
        code: str,
        *,
        python: str | None,
        lim: Limits,
        args: Sequence[str] = (),
        max_output_bytes: int = 1 << 20,
    ) -> None:
        self.name = name
        self.cap = max_output_bytes
        self.memory_mb = lim.memory_mb
        self.start = time.monotonic()
        self.out, self.err = bytearray(), bytearray()
        self.stopped_for = ""  # "timeout", "output", "memory" when we ended it
        self._pending = memoryview(b"")
        self._host_dir = tempfile.mkdtemp(prefix="resd-sandbox-")
        interpreter = sandbox_python(python)
        self._uid = _sandbox_uid() if drops_uid(name, interpreter) else None
        self._cgroup = None
        self._watchdog: limits.Watchdog | None = None
        try:
            main = os.path.join(self._host_dir, "main.py")
            with open(main, "w", encoding="utf-8") as f:
                f.write(code)
            os.chmod(main, 0o644)
            os.chmod(self._host_dir, 0o755)
            if self._uid is not None and name == "rlimits":
                os.chown(self._host_dir, self._uid, self._uid)
                os.chmod(self._host_dir, 0o700)
            cmd, cwd = build_command(name, interpreter, self._host_dir, ["main.py"], args, lim, self._uid)
            self._cgroup = limits.create_cgroup(secrets.token_hex(8), lim.memory_mb << 20, lim.max_processes + 8)
            if self._cgroup is not None:
                cmd = self._cgroup.enter_command(cmd)
            home = WORKDIR if name == "bwrap" else self._host_dir
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=minimal_env(home),
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            self._cleanup_files()
            if self._cgroup is not None:
                self._cgroup.remove()
            raise
        if self._cgroup is None:
            self._watchdog = limits.Watchdog(self.proc.pid, lim.memory_mb << 20)
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None and self.proc.stderr is not None and self.proc.stdin is not None
        self._bufs = {self.proc.stdout.fileno(): self.out, self.proc.stderr.fileno(): self.err}
        for fd in self._bufs:
            os.set_blocking(fd, False)
            self._sel.register(fd, selectors.EVENT_READ)
        self._in_fd = self.proc.stdin.fileno()
        os.set_blocking(self._in_fd, False)
        self._in_open = True
        self._writing = False

    # -- the channel

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the program's stdin (written while :meth:`pump` runs)."""
        if not self._in_open:
            return
        self._pending = memoryview(bytes(self._pending) + data)
        if not self._writing:
            self._sel.register(self._in_fd, selectors.EVENT_WRITE)
            self._writing = True

    def close_stdin(self) -> None:
        if self._in_open and not self._pending:
            self._close_in()
        else:
            self._close_after_send = True

    _close_after_send = False

    def _close_in(self) -> None:
        if self._writing:
            self._sel.unregister(self._in_fd)
            self._writing = False
        self._in_open = False
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass

    def pump(self, deadline: float, done: Callable[[], bool] | None = None) -> str:
        """Move data until ``done()`` holds, the output pipes close, or ``deadline`` passes.

        Returns ``"done"``, ``"closed"``, or why the sandbox was stopped (``"timeout"``,
        ``"output"``, ``"memory"``; it is then killed).
        """
        exited_seen = False
        while True:
            if done is not None and done():
                return "done"
            if not any(key.events & selectors.EVENT_READ for key in self._sel.get_map().values()):
                return "closed"
            now = time.monotonic()
            if now >= deadline:
                return self._stop("timeout")
            if self._watchdog is not None and self._watchdog.over():
                return self._stop("memory")
            events = self._sel.select(timeout=min(deadline - now, 0.02))
            for key, _ in events:
                fd = key.fd
                if fd == self._in_fd:
                    try:
                        n = os.write(fd, self._pending[:65536])
                    except BlockingIOError:
                        n = 0
                    except OSError:  # the program closed its stdin: drop the rest
                        n = len(self._pending)
                    self._pending = self._pending[n:]
                    if not self._pending:
                        self._sel.unregister(fd)
                        self._writing = False
                        if self._close_after_send:
                            self._close_in()
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self._sel.unregister(fd)
                    continue
                buf = self._bufs[fd]
                room = self.cap - len(buf)
                buf += chunk[: max(room, 0)]
                if len(chunk) > room:
                    return self._stop("output")
            if not events and not exited_seen and _exited(self.proc.pid):
                # the launcher is gone but something it started still holds the pipes
                exited_seen = True
                self.kill_all()

    def _stop(self, why: str) -> str:
        self.stopped_for = why
        self.kill_all()
        return why

    # -- the end

    def kill_all(self) -> None:
        """Kill the launcher's process group (while the launcher is unreaped) and everything in the cgroup."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._cgroup is not None:
            self._cgroup.kill_all()
        if self.name == "rlimits" and self._uid is not None:
            _kill_uid(self._uid)

    def finish(self, timeout_s: float) -> tuple[int, bool]:
        """Wait for the launcher (killing everything after ``timeout_s``); (returncode, out of memory)."""
        if _wait_exit(self.proc.pid, timeout_s) is None and not self.stopped_for:
            self.stopped_for = "timeout"
        self.kill_all()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        returncode = self.proc.wait()
        oom = self.stopped_for == "memory" or (self._cgroup is not None and self._cgroup.oom_killed())
        return returncode, oom

    def _cleanup_files(self) -> None:
        shutil.rmtree(self._host_dir, ignore_errors=True)

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc.poll() is None or self.proc.returncode is None:
                self.kill_all()
                self.proc.wait()
        finally:
            self._sel.close()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    stream.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            if self._cgroup is not None:
                self._cgroup.remove()
            self._cleanup_files()


def _kill_uid(uid: int) -> None:
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
    except ChildProcessError:
        return True


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


# ------------------------------------------------------------------------------------------ one program


def run_program(
    name: str,
    code: str,
    stdin: bytes = b"",
    *,
    timeout_s: float,
    memory_mb: int,
    args: Sequence[str] = (),
    max_output_bytes: int = 1 << 20,
    max_file_mb: int = 16,
    tmpfs_mb: int = 64,
    max_processes: int = 32,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` to completion in mode ``name`` (no consent check: see :func:`resd.sandbox.run_python`)."""
    lim = Limits(math.ceil(timeout_s) + 1, memory_mb, max_file_mb, tmpfs_mb, max_processes)
    with Launch(name, code, python=python, lim=lim, args=args, max_output_bytes=max_output_bytes) as run:
        if stdin:
            run.send(stdin)
        run.close_stdin()
        deadline = run.start + timeout_s
        run.pump(deadline)
        returncode, oom = run.finish(deadline - time.monotonic())
        wall = time.monotonic() - run.start
        stdout = bytes(run.out).decode("utf-8", "replace")
        stderr = bytes(run.err).decode("utf-8", "replace")
        status, reason = classify(returncode, stderr, run.stopped_for, timeout_s, max_output_bytes, name, oom)
        return SandboxResult(status, stdout, stderr, returncode, wall, reason, run.stopped_for == "output", name)


def _signal_of(returncode: int, name: str) -> int | None:
    if returncode < 0:
        return -returncode
    # bwrap and the reaper report a child killed by signal N as exit status 128 + N
    if 128 < returncode < 128 + 65:
        return returncode - 128
    return None


def classify(
    returncode: int, stderr: str, stopped_for: str, timeout_s: float, cap: int, name: str, oom: bool = False
) -> tuple[str, str]:
    """(status, reason) of an ended program."""
    if stopped_for == "timeout":
        return "timeout", f"wall-clock limit of {timeout_s:g} s exceeded"
    if stopped_for == "output":
        return "killed", f"output over {cap} bytes; stopped"
    if stopped_for == "memory" or (oom and returncode != 0):
        return "memory", "out of memory (whole-sandbox limit)"
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
