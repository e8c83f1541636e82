"""The sandbox against hostile programs, in every mode this machine supports, and its test harness."""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import sys
import time

import psutil
import pytest

from resd import sandbox
from resd.sandbox import harness, launch, run_python, run_tests

IS_ROOT = os.geteuid() == 0
SYSTEM_PYTHON = "/usr/bin/python3"


def _configs() -> list:
    """(mode, interpreter) pairs to test: each available mode, plus rlimits with a uid drop if possible."""
    configs = []
    for mode in sandbox.available_modes():
        configs.append(pytest.param(mode, None, id=mode))
    if (
        "rlimits" in sandbox.available_modes()
        and IS_ROOT
        and os.path.exists(SYSTEM_PYTHON)
        and launch.reachable_by_others(SYSTEM_PYTHON)
        and not launch.reachable_by_others(sys.executable)
    ):
        configs.append(pytest.param("rlimits", SYSTEM_PYTHON, id="rlimits-uid-drop"))
    return configs


CONFIGS = _configs()


def _drops_uid(mode: str, python: str | None) -> bool:
    return IS_ROOT and (
        mode == "bwrap" or (mode == "rlimits" and launch.reachable_by_others(python or sys.executable))
    )


def _process_limit_enforced(mode: str, python: str | None) -> bool:
    # root ignores RLIMIT_NPROC; only a dropped uid (or a non-root caller) makes it bite
    return _drops_uid(mode, python) or not IS_ROOT


def _own_namespaces(mode: str) -> bool:
    return mode in ("bwrap", "unshare")


def _run(mode, python, code, token, **kw):
    kw.setdefault("timeout_s", 1.0)
    return run_python(code, mode=mode, python=python, args=[token], **kw)


def _leftovers(token: str, wait_s: float = 3.0) -> list[int]:
    """Processes whose command line carries ``token``, after letting killed ones disappear."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if token in " ".join(proc.info["cmdline"] or ()):
                    found.append(proc.pid)
            except psutil.Error:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _consent_to_weak_modes(monkeypatch):
    """The weak modes are exercised here on purpose (their refusal is tested separately)."""
    monkeypatch.setenv(sandbox.UNISOLATED_OPT_IN, "1")


@pytest.fixture
def token() -> str:
    value = "resdtok" + secrets.token_hex(6)
    yield value
    assert _leftovers(value) == [], "a sandboxed process outlived its run"


# ---------------------------------------------------------------- basics


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_ok_program_gets_stdin_args_and_a_fresh_directory(mode, python, token):
    code = (
        "import os, sys\nprint(input()[::-1], sys.argv[1:])\n"
        "print(sorted(os.listdir('.')))\nopen('mark', 'w').write('1')\n"
    )
    first = _run(mode, python, code, token, stdin="olleh\n")
    assert first.status == "ok", first
    assert first.returncode == 0 and first.mode == mode
    assert first.stdout.splitlines() == [f"hello ['{token}']", "['main.py']"]
    second = _run(mode, python, code, token, stdin="x\n")
    assert second.stdout.splitlines()[1] == "['main.py']"  # the previous run's file is gone


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_uncaught_exception_is_an_error(mode, python, token):
    result = _run(mode, python, "raise ValueError('nope')", token)
    assert result.status == "error"
    assert result.returncode == 1
    assert "ValueError: nope" in result.stderr


# ---------------------------------------------------------------- the hostile corpus


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_infinite_loop_times_out(mode, python, token):
    result = _run(mode, python, "while True:\n    pass\n", token, timeout_s=1.0)
    assert result.status == "timeout"
    assert 1.0 <= result.wall_s < 3.0
    assert "wall-clock" in result.reason


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_fork_bomb(mode, python, token):
    if not _process_limit_enforced(mode, python):
        pytest.skip("the process-count limit does not bind root in this mode (documented in protection())")
    # bounded (at most 256 processes even without a limit), and reports each failed fork
    bounded = (
        "import os, time\n"
        "for _ in range(8):\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        print('fork refused', flush=True)\n"
        "        break\n"
        "t = time.time()\n"
        "while time.time() - t < 30:\n"
        "    pass\n"
    )
    result = _run(mode, python, bounded, token, timeout_s=1.0, max_processes=16)
    assert result.status == "timeout"
    assert "fork refused" in result.stdout
    classic = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = _run(mode, python, classic, token, timeout_s=1.0, max_processes=16)
    assert result.status == "timeout"
    assert result.wall_s < 4.0


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_memory_bombs(mode, python, token):
    at_once = _run(mode, python, "x = bytearray(10**10)", token, memory_mb=256)
    assert at_once.status == "memory", at_once
    growing = _run(
        mode, python, "x = []\nwhile True:\n    x.append(bytearray(10**7))\n", token, memory_mb=256, timeout_s=5
    )
    assert growing.status == "memory", growing
    assert growing.wall_s < 4


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_huge_output_is_capped_and_stopped(mode, python, token):
    cap = 65536
    for stream in ("stdout", "stderr"):
        code = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 100000)\n"
        result = _run(mode, python, code, token, max_output_bytes=cap, timeout_s=5)
        assert result.status == "killed", result.reason
        assert result.output_truncated
        assert len(getattr(result, stream)) == cap
        assert result.wall_s < 4


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_file_size_limit(mode, python, token):
    code = "with open('big', 'wb') as f:\n    f.write(b'x' * (3 << 20))\n"
    result = _run(mode, python, code, token, max_file_mb=1)
    assert result.status == "error"
    assert "File too large" in result.stderr


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_writing_outside_its_directory(mode, python, token, tmp_path):
    if not _drops_uid(mode, python) and mode != "bwrap":
        pytest.skip("this mode does not protect the filesystem (documented in protection())")
    code = "import sys\nwith open(sys.argv[2], 'w') as f:\n    f.write('pwned')\nprint('wrote')\n"
    targets = [
        os.path.join(os.getcwd(), f".{token}"),
        str(tmp_path / token),
        os.path.join(os.path.dirname(sandbox.__file__), token),
    ]
    if mode == "bwrap":
        targets.append(f"/tmp/{token}")  # bwrap gives the program its own /tmp
    try:
        for target in targets:
            result = run_python(code, mode=mode, python=python, args=[token, target])
            assert not os.path.exists(target), f"the sandbox wrote {target}"
            if not target.startswith("/tmp/"):
                assert result.status == "error" and "wrote" not in result.stdout
    finally:
        for target in targets:
            if os.path.exists(target):
                os.remove(target)


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_parent_environment_is_not_visible(mode, python, token, monkeypatch):
    secret = f"hunter2-{token}"
    monkeypatch.setenv("RESD_FAKE_SECRET", secret)
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "print(os.environ.get('RESD_FAKE_SECRET'))\n"
        "leaks = []\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        if b'hunter2' in open(f'/proc/{pid}/environ', 'rb').read():\n"
        "            leaks.append(pid)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('leaks', len(leaks))\n"
    )
    result = _run(mode, python, code, token)
    assert result.status == "ok", result
    lines = result.stdout.splitlines()
    assert "RESD_FAKE_SECRET" not in lines[0] and "HOME" in lines[0]
    assert lines[1] == "None"
    assert secret not in result.stdout + result.stderr
    if _own_namespaces(mode) or _drops_uid(mode, python):
        assert lines[2] == "leaks 0"


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_network_connection_is_refused(mode, python, token):
    if not _own_namespaces(mode):
        pytest.skip("this mode has no network namespace (documented in protection())")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'pwned')\nprint('connected')\n"
        )
        result = _run(mode, python, code, token, timeout_s=3)
        assert result.status == "error"
        assert "connected" not in result.stdout
        assert "Error" in result.stderr
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    outside = _run(
        mode, python, "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n", token, timeout_s=3
    )
    assert outside.status == "error"


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_killing_its_parent(mode, python, token):
    code = (
        "import os, time\n"
        "try:\n"
        "    os.kill(os.getppid(), 9)\n"
        "except OSError as e:\n"
        "    print('refused', type(e).__name__, flush=True)\n"
        "time.sleep(0.2)\n"
        "print('still here', flush=True)\n"
    )
    result = _run(mode, python, code, token, timeout_s=3)
    assert result.status in ("ok", "killed")
    assert result.wall_s < 3
    if mode == "bwrap":
        # its parent is the namespace's init, owned by another uid: out of reach
        assert result.status == "ok" and "still here" in result.stdout
    # elsewhere it can only kill its disposable launcher (rlimits: the shell in between; unshare: it
    # is the namespace's init, getppid() is 0 and kill(0, 9) ends its own process group): "killed"
    assert run_python("print(1)", mode=mode, python=python).stdout == "1\n"


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_killing_every_process_it_can(mode, python, token):
    if not (_own_namespaces(mode) or _drops_uid(mode, python)):
        pytest.skip("kill(-1) as root outside a PID namespace would hit the whole machine")
    result = _run(mode, python, "import os, time\nos.kill(-1, 9)\ntime.sleep(0.1)\nprint('done')\n", token, timeout_s=3)
    assert result.status in ("ok", "killed", "error")
    assert psutil.Process().is_running()


@pytest.mark.parametrize(("mode", "python"), CONFIGS)
def test_detached_grandchild_dies_with_the_run(mode, python, token):
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        print('grandchild up', flush=True)\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('parent done', flush=True)\n"
    )
    result = _run(mode, python, code, token, timeout_s=10)
    assert "grandchild up" in result.stdout and "parent done" in result.stdout
    assert result.wall_s < 4  # it did not wait for the grandchild's sleep
    # the token fixture checks that no process of this run is left


def test_this_process_still_works_after_the_corpus():
    assert run_python("print(sum(range(10)))").stdout == "45\n"
    assert sum(range(10)) == 45


# ---------------------------------------------------------------- mode selection and reporting


def test_modes_and_protection_are_reported(monkeypatch):
    modes = sandbox.available_modes()
    assert modes, "no sandbox mode works"
    assert sandbox.mode() == modes[0]
    for mode in modes:
        text = sandbox.protection(mode)
        assert "rlimit" in text and len(text) > 80
    monkeypatch.setenv("RESD_SANDBOX", modes[-1])
    assert sandbox.mode() == modes[-1]
    monkeypatch.setenv("RESD_SANDBOX", "chroot-jail")
    with pytest.raises(ValueError):
        sandbox.mode()
    with pytest.raises(ValueError):
        run_python("pass", mode="nonsense")


def test_bwrap_is_used_when_installed():
    if not os.path.exists("/usr/bin/bwrap"):
        pytest.skip("bubblewrap not installed")
    assert sandbox.mode() == "bwrap"
    assert "bubblewrap" in sandbox.protection()


@pytest.mark.parametrize(
    ("returncode", "stderr", "stopped", "status"),
    [
        (0, "", "", "ok"),
        (1, "Traceback...\nValueError: x", "", "error"),
        (1, "Traceback...\nMemoryError", "", "memory"),
        (-signal.SIGXCPU, "", "", "timeout"),
        (128 + signal.SIGXCPU, "", "", "timeout"),
        (-signal.SIGKILL, "", "", "killed"),
        (137, "", "", "killed"),
        (-9, "", "timeout", "timeout"),
        (-9, "", "memory", "memory"),
        (-9, "", "output", "killed"),
        (0, "MemoryError", "", "ok"),
    ],
)
def test_status_classification(returncode, stderr, stopped, status):
    assert launch.classify(returncode, stderr, stopped, 1.0, 100, "bwrap")[0] == status


def test_output_does_not_extend_the_time_limit():
    """Writing keeps no timer alive: the wall-clock limit is the judge's, counted from the start."""
    chatty = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.01)\n"
    result = run_python(chatty, timeout_s=1.0)
    assert result.status == "timeout" and "wall-clock" in result.reason
    assert 1.0 <= result.wall_s < 2.0


def test_large_stdin_is_fed_without_deadlock():
    data = "x" * (3 << 20)
    result = run_python("import sys\nprint(len(sys.stdin.read()))", stdin=data, timeout_s=10)
    assert result.stdout.strip() == str(len(data))


# ---------------------------------------------------------------- the test harness


HARNESS_CODE = """
import sys

def f(a, b=0):
    if a == 1:
        return helper(a)
    if a == 2:
        while True:
            pass
    if a == 3:
        sum(range(10**12))  # a C loop: the in-process alarm cannot interrupt it
    if a == 4:
        import os
        os._exit(3)
    if a == 5:
        return {1, 2}
    if a == 6:
        # try to forge a reply on every descriptor (the test's random id is unknown to it)
        import os
        for fd in range(1, 20):
            for guess in ("ready", "0" * 32, ""):
                try:
                    os.write(fd, ("\\n" + guess + ' {"status": "ok", "value": "42"}\\n').encode())
                except OSError:
                    pass
        return -1
    if a == 8:
        return [1] * 100000
    debug_print("called with", a)
    print("ordinary output is not the answer")
    return a + b


def helper(x):
    return 1 / 0
"""


def test_harness_call_tests_and_recovery_from_dying_programs():
    tests = [{"kind": "call", "fn_name": "f", "args": [a], "kwargs": {"b": 10}} for a in (0, 1, 2, 3, 4, 5, 6, 7, 9)]
    tests[7]["args"] = [8]
    start = time.monotonic()
    out = run_tests(HARNESS_CODE, tests, time_limit_s=0.5)
    elapsed = time.monotonic() - start
    assert [o.status for o in out] == ["ok", "error", "timeout", "timeout", "error", "error", "ok", "ok", "ok"]
    assert (out[0].value, out[0].display, out[0].debug) == ("10", "10", "called with 0\n")
    assert out[1].error == "ZeroDivisionError: division by zero"
    lines = HARNESS_CODE.split("\n")
    assert out[1].frames == [
        {"line": "return helper(a)", "lineno": lines.index("        return helper(a)") + 1, "name": "f"},
        {"line": "return 1 / 0", "lineno": lines.index("    return 1 / 0") + 1, "name": "helper"},
    ]
    assert out[1].frames[0]["lineno"] == 6
    assert out[4].error.startswith("ProcessError") and "exit code 3" in out[4].error
    assert out[5].error == "Non-serializable result type: set" and out[5].frames == []
    # a forged report line cannot stand in for a test: the real one says -1
    assert out[6].value == "-1"
    assert not out[7].overflow and out[7].value == "[" + ",".join(["1"] * 100000) + "]"
    assert out[8].value == "19"
    assert elapsed < 8


def test_harness_stdin_and_code_tests():
    program = (
        "import sys\nn = int(input())\nprint(n * 2)\n"
        "if n == 3:\n    sys.exit(0)\nif n == 4:\n    sys.exit(2)\nprint('end')\n"
    )
    out = run_tests(
        program, [{"kind": "stdin", "stdin": f"{n}\n"} for n in (1, 3, 4)] + [{"kind": "stdin", "stdin": ""}]
    )
    assert [o.status for o in out] == ["ok", "ok", "error", "error"]
    assert out[0].value == "2\nend\n" and out[1].value == "6\n"
    assert out[2].error == "SystemExit: 2" and out[2].frames[-1]["lineno"] == 7
    assert out[3].error.startswith("EOFError")
    binary = (
        "import sys\ndata = sys.stdin.buffer.read().split()\n"
        "sys.stdout.buffer.write(str(sum(map(int, data))).encode())\n"
    )
    assert run_tests(binary, [{"kind": "stdin", "stdin": "1 2 3"}])[0].value == "6"
    reads_fd0 = "print(sum(map(int, open(0).read().split())))\n"
    assert run_tests(reads_fd0, [{"kind": "stdin", "stdin": "4 5"}])[0].value == "9\n"
    with pytest.raises(ValueError, match="kind"):
        run_tests("pass", [{"kind": "code", "source": "assert True"}])  # judged inside: forgeable, refused


def test_harness_syntax_error_and_solution_class():
    bad = run_tests("def f(:\n    pass\n", [{"kind": "call", "fn_name": "f", "args": []}])
    assert bad[0].status == "error" and bad[0].error.startswith("SyntaxError") and "Solution.py" in bad[0].error
    cls = "class Solution:\n    def twice(self, x: List[int]) -> List[int]:\n        return x + x\n"
    assert run_tests(cls, [{"kind": "call", "fn_name": "twice", "args": [[1]]}])[0].value == "[1,1]"
    first_def = "def helper_name(x):\n    return x + 1\n"
    assert run_tests(first_def, [{"kind": "call", "fn_name": "missing", "args": [1]}])[0].value == "2"
    nothing = run_tests("x = 1\n", [{"kind": "call", "fn_name": "missing", "args": [1]}])
    assert nothing[0].error == "NameError: name 'missing' is not defined"


def test_harness_stop_after_timeouts_total_timeout_and_workers():
    program = "def f(x):\n    while x:\n        pass\n    return x\n"
    tests = [{"kind": "call", "fn_name": "f", "args": [x]} for x in (0, 1, 1, 0)]
    out = run_tests(program, tests, time_limit_s=0.3, stop_after_timeouts=1)
    assert [o.status for o in out] == ["ok", "timeout", "skipped", "skipped"]
    start = time.monotonic()
    out = run_tests(program, tests, time_limit_s=0.3, total_timeout_s=0.5)
    assert out[0].status == "ok" and out[1].status == "timeout" and out[-1].status == "skipped"
    assert time.monotonic() - start < 3
    out = run_tests(program, tests, time_limit_s=0.3, workers=2)
    assert [o.status for o in out] == ["ok", "timeout", "timeout", "ok"]
    assert run_tests(program, []) == []


def test_reply_parser_never_raises_on_garbage():
    rng = random.Random(0)
    alphabet = ['{', '}', '"', ':', ',', "status", "ok", "error", "value", "frames", "lineno", "0", "1", "-",
                "[", "]", " ", "null", "true", "overflow"]  # fmt: skip
    for _ in range(3000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))).encode()
        record = harness._parse(line)
        if record is not None:
            outcome = harness._outcome(record, 0.1)
            assert outcome.status in ("ok", "error") and isinstance(outcome.value, str)
            assert all(isinstance(f["lineno"], int) for f in outcome.frames)


# ---------------------------------------------------------------- integrity of the judging side


@pytest.mark.parametrize("weak", sandbox.WEAK_MODES)
def test_weak_modes_refuse_model_code_without_explicit_consent(weak, monkeypatch):
    monkeypatch.delenv(sandbox.UNISOLATED_OPT_IN, raising=False)
    monkeypatch.setenv("RESD_SANDBOX", weak)  # naming the mode is not consent
    for call in (lambda: run_python("print(1)"), lambda: run_python("print(1)", mode=weak)):
        with pytest.raises(sandbox.SandboxUnavailable, match=sandbox.UNISOLATED_OPT_IN) as info:
            call()
        assert "answer keys" in str(info.value) and "bubblewrap" in str(info.value)
    with pytest.raises(sandbox.SandboxUnavailable, match=sandbox.UNISOLATED_OPT_IN):
        run_tests("def f():\n    return 1\n", [{"kind": "call", "fn_name": "f"}], mode=weak)
    monkeypatch.setenv(sandbox.UNISOLATED_OPT_IN, "1")
    if weak in sandbox.available_modes():
        assert run_python("print(1)", mode=weak).stdout == "1\n"


def test_installed_packages_and_resd_data_are_invisible():
    if "bwrap" not in sandbox.available_modes():
        pytest.skip("bubblewrap not installed")
    import resd

    data_file = "code_problems.jsonl"
    code = (
        "import os, sys\n"
        "for name in ('resd', 'torch', 'pymunk', 'numpy', 'transformers'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "        print('imported', name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "hits = []\n"
        "for top in ('/usr', '/etc', '/opt', '/root', '/home', '/tmp', '/work', '/srv', '/var', sys.prefix):\n"
        "    for root, dirs, files in os.walk(top):\n"
        f"        hits += [os.path.join(root, f) for f in files if f == {data_file!r} or f == 'distance.py']\n"
        "print('hits', hits)\n"
        f"print('package', os.path.exists({os.path.dirname(resd.__file__)!r}))\n"
    )
    result = run_python(code, mode="bwrap", timeout_s=60)
    assert result.status == "ok", result
    assert "imported" not in result.stdout
    assert "hits []" in result.stdout and "package False" in result.stdout


def test_the_time_limit_cannot_be_switched_off_from_inside():
    slow = (
        "import signal, time\n"
        "def f(x):\n"
        "    signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "    signal.alarm(0)\n"
        "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "    for _ in range(30):\n"
        "        print('still working', flush=True)\n"
        "        time.sleep(0.1)\n"
        "    return x\n"
    )
    start = time.monotonic()
    out = run_tests(slow, [{"kind": "call", "fn_name": "f", "args": [k]} for k in range(3)], time_limit_s=0.5)
    assert [o.status for o in out] == ["timeout"] * 3
    assert time.monotonic() - start < 4.0  # 3 x 0.5 s plus start-ups, not 3 x 3 s


def test_inode_limit_of_the_working_directory():
    if not (sandbox.mode() == "bwrap" and IS_ROOT):
        pytest.skip("the inode limit is set by the privileged bwrap launch")
    code = (
        "import os\nn = 0\ntry:\n    for n in range(300000):\n        open(f'f{n}', 'w').close()\n"
        "except OSError as e:\n    print('stopped at', n, type(e).__name__)\n"
    )
    result = run_python(code, timeout_s=20)
    assert result.status == "ok", result
    stopped = int(result.stdout.split()[2])
    assert stopped < 5000


def test_memory_is_capped_for_the_whole_sandbox_not_per_process():
    """Six children of 150 MB each under a 300 MB sandbox: at most two can hold their memory."""
    code = (
        "import os, time\n"
        "kids = []\n"
        "for _ in range(6):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = bytearray(150 << 20)\n"
        "        for i in range(0, len(block), 4096):\n"
        "            block[i] = 1\n"
        "        time.sleep(1)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "held = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 for pid in kids)\n"
        "print('held', held)\n"
    )
    result = run_python(code, memory_mb=300, timeout_s=15)
    assert result.wall_s < 10
    if result.status == "ok":  # a cgroup: the kernel killed children over the limit
        assert int(result.stdout.split()[1]) <= 2, result
    else:  # the watchdog stopped the whole sandbox
        assert result.status == "memory", result


def test_watchdog_fallback_stops_a_tree_over_its_memory(monkeypatch):
    from resd.sandbox import limits

    monkeypatch.setattr(limits, "_kind_cache", ["watchdog"])
    code = (
        "import os, time\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        block = bytearray(120 << 20)\n"
        "        for i in range(0, len(block), 4096):\n"
        "            block[i] = 1\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "time.sleep(30)\n"
    )
    result = run_python(code, memory_mb=300, timeout_s=15)
    assert result.status == "memory", result
    assert result.wall_s < 10


@pytest.mark.parametrize("name", ["bwrap", "rlimits"])
def test_no_process_outlives_its_callers_sigkill(name, token, tmp_path):
    if name not in sandbox.available_modes():
        pytest.skip(f"{name} does not work here")
    program = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[1]], {})\n"
        "    os._exit(0)\n"
        "print('detached', flush=True)\n"
        "time.sleep(60)\n"
    )
    caller = (
        "import sys\nfrom resd.sandbox import run_python\n"
        f"run_python({program!r}, mode={name!r}, timeout_s=60, args=[{token!r}])\n"
    )
    env = {**os.environ, sandbox.UNISOLATED_OPT_IN: "1"}
    proc = psutil.Popen([sys.executable, "-c", caller], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(_leftovers(token, wait_s=0)) < 2:
        time.sleep(0.05)
    assert len(_leftovers(token, wait_s=0)) >= 2, "the detached process never started"
    proc.kill()
    proc.wait()
    # the token fixture asserts that nothing carrying the token is left


def test_without_bubblewrap_the_fallback_refuses_until_consent(monkeypatch):
    from resd.sandbox import modes

    monkeypatch.delenv(sandbox.UNISOLATED_OPT_IN, raising=False)
    monkeypatch.delenv("RESD_SANDBOX", raising=False)
    monkeypatch.setitem(modes._probe_results, "bwrap", "bwrap not found")
    with pytest.raises(sandbox.SandboxUnavailable) as info:
        run_python("print(1)")
    message = str(info.value)
    assert "bwrap not found" in message and f"{sandbox.UNISOLATED_OPT_IN}=1" in message
    assert "apt-get install bubblewrap" in message


def test_the_driver_is_a_module_that_keeps_only_plain_data():
    from resd.sandbox import driver

    assert driver.plain((1, [2.5, "x"], {"k": None, 3: True})) == [1, [2.5, "x"], {"k": None, "3": True}]

    class Liar(int):
        def __eq__(self, other):
            return True

    for value in (Liar(3), {1, 2}, b"x", [object()], {(1, 2): 3}):
        with pytest.raises(driver.NotPlain):
            driver.plain(value)
