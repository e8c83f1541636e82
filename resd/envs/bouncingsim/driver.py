"""The program that runs one BouncingSim test inside the sandbox (a fresh process per test).

It is sent as source text, appended to ``distance.py``, and reads ``{"code": ..., "t": ...}``
as JSON on stdin. It executes the model's code, calls ``predict_position(t)`` and prints one
result line, ``RESULT_MARK`` + JSON, as the last line of stdout:

- ``{"kind": "definition_error", "error": "DefinitionError: <Type>: <msg>"}``
- ``{"kind": "exception", "error": "<Type>: <msg>\\n<traceback>"}``
- ``{"kind": "value", "json": <the return value as JSON text or null>, "type": <type name>,
  "seconds": <time spent in predict_position>}``

The expected positions never enter this process: the comparison happens in the parent, so the
model's code cannot read the answer. The program's own prints are discarded, and tracebacks show
only the frames of the model's code (file ``<solution>``), not this driver.
"""

import json
import linecache
import sys
import time
import traceback

RESULT_MARK = "@@RESD-BOUNCINGSIM-RESULT@@"
SOLUTION_FILE = "<solution>"
MAX_JSON_CHARS = 100_000
MAX_ERROR_CHARS = 4000


class _Discard:
    """Stands in for stdout/stderr while the model's code runs."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _solution_traceback(exc):
    """The traceback of ``exc`` restricted to frames of the model's code."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == SOLUTION_FILE])
    return "".join(te.format()).rstrip("\n")


def _describe_error(exc):
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable message>"
    return f"{type(exc).__name__}: {message}"


def _to_json(value):
    try:
        text = json.dumps(value)
    except Exception:  # not JSON-able, too deep, or a hostile __iter__
        return None
    return text if len(text) <= MAX_JSON_CHARS else None


def _run(request):
    code = request["code"]
    t = float(request["t"])
    linecache.cache[SOLUTION_FILE] = (len(code), None, code.splitlines(True), SOLUTION_FILE)
    namespace = {"__name__": "solution", "__builtins__": __builtins__, "check_distance": check_distance}  # noqa: F821
    try:
        exec(compile(code, SOLUTION_FILE, "exec"), namespace)
    except BaseException as e:  # SystemExit and KeyboardInterrupt included
        return {"kind": "definition_error", "error": f"DefinitionError: {_describe_error(e)}"}
    try:
        predict = namespace["predict_position"]
    except KeyError:
        return {"kind": "exception", "error": "NameError: name 'predict_position' is not defined"}
    start = time.perf_counter()
    try:
        value = predict(t)
    except BaseException as e:
        return {"kind": "exception", "error": f"{_describe_error(e)}\n{_solution_traceback(e)}"}
    seconds = time.perf_counter() - start
    return {"kind": "value", "json": _to_json(value), "type": type(value).__name__, "seconds": seconds}


def main():
    out = sys.stdout
    request = json.loads(sys.stdin.read())
    sys.stdout = sys.stderr = _Discard()
    try:
        payload = _run(request)
    except BaseException as e:  # e.g. a result whose __repr__ raises while we inspect it
        payload = {"kind": "exception", "error": _describe_error(e)}
    if "error" in payload:
        payload["error"] = payload["error"][:MAX_ERROR_CHARS]
    out.write("\n" + RESULT_MARK + json.dumps(payload) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
