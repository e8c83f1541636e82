"""The trusted launcher of the ``rlimits`` mode: no process the program starts outlives the run.

Run as ``python -I -S reaper.py COMMAND...`` by the caller (not by the program). It makes itself
the *child subreaper* of everything below it, so processes that detach (double fork, ``setsid``)
are re-parented to it instead of to init, runs ``COMMAND``, and when that ends, or when the caller
dies or signals it, kills every process still below it. It exits with the command's status
(``128 + N`` when the command was killed by signal N). Standard library only.
"""

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def children(pid):
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
    except (OSError, ValueError):
        pass
    return found


def kill_below():
    """SIGKILL every descendant until none is left (they re-parent to us as their parents die)."""
    me = os.getpid()
    for _ in range(10000):
        todo, seen = children(me), []
        while todo:
            pid = todo.pop()
            seen.append(pid)
            todo.extend(children(pid))
        if not seen:
            return
        for pid in seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap()
        time.sleep(0.001)


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    parent = os.getppid()

    def stop(signum, frame):
        kill_below()
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    if os.getppid() != parent or parent == 1:
        stop(signal.SIGTERM, None)
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            os.execvp(sys.argv[1], sys.argv[1:])
        finally:
            os._exit(127)
    while True:
        pid, status = os.waitpid(child, 0)
        if pid == child:
            break
    kill_below()
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    main()
