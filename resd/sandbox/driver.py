"""The test driver that runs inside the sandbox, next to the program under test.

This file is copied into the sandbox as ``main.py`` and run by a bare interpreter (``python -I -S``):
it may import the standard library only. It is the untrusted side of the protocol in
:mod:`resd.sandbox.harness`; nothing it sends is taken as a verdict:

1. it reads a start line ``{"code", "filename", "prelude"}`` from fd 0 and answers ``ready``;
2. for each request line ``{"id", "kind": "call"|"stdin", ...}`` it executes the program in a fresh
   namespace (``call``: then calls the named function with ``args``/``kwargs``; ``stdin``: as
   ``__main__`` with the test's input on fd 0) and answers ``<id> <json>`` with what the program
   produced: the return value as canonical JSON (plain data only) or what it printed, or the
   exception.

The program shares this process, so it can read and change anything here, including the channel;
that gains it nothing, because the expected answers, the time limits and the comparison never leave
the trusted side, and only the program's own output (which it controls anyway) travels back.
"""

import __future__
import ast
import builtins
import io
import json
import linecache
import os
import sys
import traceback
import typing

TYPING_NAMES = (
    "Any", "Callable", "DefaultDict", "Deque", "Dict", "FrozenSet", "Generic", "Iterable", "Iterator",
    "List", "Literal", "Mapping", "Optional", "Sequence", "Set", "Tuple", "Type", "TypeVar", "Union",
)  # fmt: skip
DEBUG_CAP = 16384
DISPLAY_CAP = 1000


class NotPlain(Exception):
    """The return value is not plain data (None, bool, int, float, str, list, tuple, dict)."""


def plain(value, depth=0):
    """``value`` as JSON-ready plain data; raises :class:`NotPlain` for anything else.

    Exact types only: a subclass of ``int`` or ``list`` (which could carry a custom ``__eq__``) is
    not plain.
    """
    if depth > 200:
        raise NotPlain("result nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple):
        return [plain(v, depth + 1) for v in value]
    if kind is dict:
        out = {}
        for k, v in value.items():
            if type(k) not in (str, int, float, bool) and k is not None:
                raise NotPlain(f"Non-serializable dict key type: {type(k).__name__}")
            out[json.dumps(k) if type(k) is not str else k] = plain(v, depth + 1)
        return out
    raise NotPlain(f"Non-serializable result type: {kind.__name__}")


def describe(exc):
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:
        return f"{type(exc).__name__}: <unprintable message>"


def error_record(exc, filename, phase):
    """The exception as feedback: its line, the program's innermost frames and a short traceback."""
    if isinstance(exc, NotPlain):
        return {"status": "error", "error": str(exc), "frames": [], "phase": phase, "traceback": ""}
    frames, text = [], ""
    try:
        te = traceback.TracebackException.from_exception(exc)
        te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == filename])
        frames = [{"line": f.line or "", "lineno": f.lineno, "name": f.name} for f in te.stack][-3:]
        text = "".join(te.format())[-4000:]
    except BaseException:
        pass
    return {"status": "error", "error": describe(exc), "frames": frames, "phase": phase, "traceback": text}


def resolve(ns, source, fn_name, fallback):
    """The function to call: ``fn_name``, else a method of class ``Solution``, else the first def."""
    fn = ns.get(fn_name) if fn_name else None
    if callable(fn):
        return fn
    cls = ns.get("Solution")
    if fn_name and isinstance(cls, type) and callable(getattr(cls, fn_name, None)):
        return getattr(cls(), fn_name)
    if fallback:
        try:
            for node in ast.parse(source).body:
                if isinstance(node, ast.FunctionDef) and callable(ns.get(node.name)):
                    return ns[node.name]
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass
    raise NameError(f"name {fn_name!r} is not defined")


def namespace(as_main, prelude, prelude_names, debug_fd):
    def debug_print(*args, sep=" ", end="\n", **_):
        try:
            os.write(debug_fd, (sep.join(str(a) for a in args) + end).encode("utf-8", "replace"))
        except Exception:
            pass

    ns = {"__builtins__": builtins, "__name__": "__main__" if as_main else "solution", "debug_print": debug_print}
    for name in TYPING_NAMES:
        ns[name] = getattr(typing, name)
    if prelude:
        helpers = {"__builtins__": builtins, "__name__": "prelude"}
        exec(compile(prelude, "<prelude>", "exec", dont_inherit=True), helpers)
        for name in prelude_names:
            ns[name] = helpers[name]
    return ns


def read_fd(fd, cap):
    """Up to ``cap`` bytes of a memory file from its start, and whether it held more."""
    size = os.fstat(fd).st_size
    os.lseek(fd, 0, 0)
    chunks, left = [], min(size, cap)
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks), size > cap


def run_one(request, start, devnull):
    """Run one test; the program's fds 0/1/2 are memory files for its stdin, stdout and stderr."""
    kind = request.get("kind")
    code, filename = start["code"], start["filename"]
    out_cap = int(start["output_cap"])
    in_fd = os.memfd_create("stdin")
    out_fd = os.memfd_create("stdout")
    err_fd = os.memfd_create("stderr")
    data = request.get("stdin", "").encode("utf-8") if kind == "stdin" else b""
    view = memoryview(data)
    while view:
        view = view[os.write(in_fd, view) :]
    os.lseek(in_fd, 0, 0)
    saved_err = os.dup(2)
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    os.dup2(in_fd, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", write_through=True)
    rec = {"status": "ok"}
    result = None
    phase = "define"
    try:
        ns = namespace(kind == "stdin", start.get("prelude", ""), start.get("prelude_names", []), 2)
        flags = __future__.annotations.compiler_flag if kind == "call" else 0
        compiled = compile(code, filename, "exec", flags=flags, dont_inherit=True)
        if kind == "call":
            exec(compiled, ns)
            phase = "resolve"
            fn = resolve(ns, code, request.get("fn_name") or "", bool(request.get("fallback", True)))
            phase = "call"
            result = fn(*request.get("args", []), **request.get("kwargs", {}))
            value = json.dumps(plain(result), sort_keys=True, separators=(",", ":"))
            rec["value"] = value[:out_cap]
            rec["overflow"] = len(value) > out_cap
            try:
                rec["display"] = str(result)[:DISPLAY_CAP]
            except BaseException:
                rec["display"] = value[:DISPLAY_CAP]
        elif kind == "stdin":
            phase = "run"
            try:
                exec(compiled, ns)
            except SystemExit as e:
                if e.code not in (None, 0):
                    raise
        else:
            raise ValueError(f"unknown test kind {kind!r}")
    except BaseException as e:  # SystemExit and KeyboardInterrupt are the program's errors too
        rec = error_record(e, filename, phase)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(saved_err, 2)
        os.close(saved_err)
    if kind == "stdin":
        text, overflow = read_fd(out_fd, out_cap)
        rec["value"] = text.decode("utf-8", "replace")
        rec["overflow"] = overflow
    rec["debug"] = read_fd(err_fd, DEBUG_CAP)[0].decode("utf-8", "replace")
    for fd in (in_fd, out_fd, err_fd):
        os.close(fd)
    return rec


def main():
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)

    def reply(text):
        data = ("\n" + text + "\n").encode("utf-8", "replace")
        view = memoryview(data)
        while view:
            view = view[os.write(replies, view) :]

    buffered = bytearray()

    def next_request():
        nonlocal buffered
        while b"\n" not in buffered:
            chunk = requests.read(1 << 16)
            if not chunk:
                return None
            buffered += chunk
        line, _, rest = bytes(buffered).partition(b"\n")
        buffered = bytearray(rest)
        return json.loads(line.decode("utf-8"))

    start = next_request()
    if start is None:
        return
    linecache.cache[start["filename"]] = (len(start["code"]), None, start["code"].splitlines(True), start["filename"])
    reply("ready")
    while True:
        request = next_request()
        if request is None:
            return
        rec = run_one(request, start, devnull)
        try:
            text = json.dumps(rec, ensure_ascii=False)
        except BaseException as e:
            text = json.dumps({"status": "error", "error": describe(e), "frames": []})
        reply(request["id"] + " " + text)


if __name__ == "__main__":
    main()
