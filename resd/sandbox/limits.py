"""Caps on a whole sandbox (all of its processes together): memory and process count.

Per-process rlimits alone let one program take ``memory x processes``. Where this process may
create control groups, each run gets its own (cgroup v2 when this process's cgroup delegates the
``memory`` and ``pids`` controllers, else cgroup v1 ``memory`` and ``pids`` hierarchies), which the
kernel enforces. Elsewhere a :class:`Watchdog` sums the resident memory of the sandbox's processes
every few milliseconds and stops the run when it goes over; the process count is then bounded by
the per-uid ``RLIMIT_NPROC`` of the launch.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from pathlib import Path

__all__ = ["Cgroup", "Watchdog", "create_cgroup", "describe", "kind"]

_kind_cache: list[str] = []
_leftover_lock = threading.Lock()
_leftover: list[Path] = []  # cgroups whose last processes were still exiting; removed later


def _remove_leftovers() -> None:
    with _leftover_lock:
        for d in list(_leftover):
            try:
                os.rmdir(d)
                _leftover.remove(d)
            except FileNotFoundError:
                _leftover.remove(d)
            except OSError:
                continue


atexit.register(_remove_leftovers)


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of every cgroup mount."""
    found = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                found.append((fields[4], rest[0], rest[2]))
    except OSError:
        pass
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under ``""`` its v2 path."""
    paths: dict[str, str] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    except (OSError, ValueError):
        pass
    return paths


def _v2_parent() -> Path | None:
    own = _own_paths().get("")
    for point, fstype, _ in _mounts():
        if fstype != "cgroup2" or own is None:
            continue
        parent = Path(point) / own.lstrip("/")
        try:
            delegated = set((parent / "cgroup.subtree_control").read_text().split())
        except OSError:
            continue
        if {"memory", "pids"} <= delegated and os.access(parent, os.W_OK):
            return parent
    return None


def _v1_parents() -> dict[str, Path] | None:
    own = _own_paths()
    parents: dict[str, Path] = {}
    for point, fstype, options in _mounts():
        if fstype != "cgroup":
            continue
        for controller in ("memory", "pids"):
            if controller in options.split(",") and controller in own:
                parent = Path(point) / own[controller].lstrip("/")
                if os.access(parent, os.W_OK) and (parent / "cgroup.procs").exists():
                    parents[controller] = parent
    return parents if set(parents) == {"memory", "pids"} else None


def kind() -> str:
    """``cgroup2``, ``cgroup1`` or ``watchdog``: how whole-sandbox caps are enforced here."""
    if not _kind_cache:
        if os.environ.get("RESD_SANDBOX_NO_CGROUP") == "1":
            _kind_cache.append("watchdog")
        elif _v2_parent() is not None:
            _kind_cache.append("cgroup2")
        elif _v1_parents() is not None:
            _kind_cache.append("cgroup1")
        else:
            _kind_cache.append("watchdog")
    return _kind_cache[0]


def describe() -> str:
    how = {
        "cgroup2": "a per-run cgroup v2 (memory.max, pids.max)",
        "cgroup1": "a per-run cgroup v1 (memory.limit_in_bytes, pids.max)",
        "watchdog": "a watchdog summing the sandbox's resident memory (no writable cgroup here) and RLIMIT_NPROC",
    }[kind()]
    return f"memory and process count capped for the whole sandbox by {how}"


class Cgroup:
    """One run's control group(s); processes enter through :meth:`enter_command`."""

    def __init__(self, dirs: list[Path], version: int) -> None:
        self.dirs = dirs
        self.version = version

    def enter_command(self, command: list[str]) -> list[str]:
        """``command`` run by a shell that first moves itself into this cgroup."""
        moves = " && ".join(f"echo $$ > '{d}/cgroup.procs'" for d in self.dirs)
        return ["/bin/sh", "-c", f'{moves} && exec "$@"', "sh", *command]

    def oom_killed(self) -> bool:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (self.dirs[0] / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except (OSError, ValueError):
                continue
        return sorted(found)

    def kill_all(self) -> None:
        if self.version == 2:
            try:
                (self.dirs[0] / "cgroup.kill").write_text("1")
                return
            except OSError:
                pass
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.002)

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # processes still exiting
                    self.kill_all()
                    time.sleep(0.005)
            else:
                with _leftover_lock:
                    _leftover.append(d)


def create_cgroup(token: str, memory_bytes: int, max_processes: int) -> Cgroup | None:
    """A fresh cgroup capping memory (no swap) and processes, or None where none can be made."""
    which = kind()
    _remove_leftovers()
    name = f"resd-sandbox-{token}"
    made: list[Path] = []
    try:
        if which == "cgroup2":
            parent = _v2_parent()
            assert parent is not None
            d = parent / name
            d.mkdir()
            made.append(d)
            (d / "memory.max").write_text(str(memory_bytes))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(max_processes))
            return Cgroup(made, 2)
        if which == "cgroup1":
            parents = _v1_parents()
            assert parents is not None
            mem, pids = parents["memory"] / name, parents["pids"] / name
            for d in (mem, pids):
                d.mkdir()
                made.append(d)
            (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
            if (mem / "memory.memsw.limit_in_bytes").exists():
                (mem / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            (pids / "pids.max").write_text(str(max_processes))
            return Cgroup(made, 1)
    except OSError:
        for d in made:
            try:
                os.rmdir(d)
            except OSError:
                pass
    return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (through ``/proc/PID/task/TID/children``)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found


class Watchdog:
    """Sums the resident memory of a launcher's process tree; :meth:`over` says when it is too much."""

    interval_s = 0.02

    def __init__(self, root_pid: int, memory_bytes: int) -> None:
        self.root_pid = root_pid
        self.memory_bytes = memory_bytes
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.next_check = 0.0
        self.tripped = False

    def over(self) -> bool:
        now = time.monotonic()
        if self.tripped or now < self.next_check:
            return self.tripped
        self.next_check = now + self.interval_s
        total = 0
        for pid in descendants(self.root_pid):
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * self.page
            except (OSError, ValueError, IndexError):
                continue
        self.tripped = total > self.memory_bytes
        return self.tripped
