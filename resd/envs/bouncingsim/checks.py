"""The tests of a scene: assert strings, ``check_distance`` and the stored ground-truth formats.

Each test is one line of Python::

    assert check_distance(predict_position(0.30), [[812.35, 640.12], ...]) <= 50.0

with the time printed with 2 decimals and the expected centres rounded to 2 decimals.
``ground_truth`` (the list of these lines) is stored either as a JSON list or, as some upstream
files do, as base64(zlib(pickle(list))). :func:`decode_ground_truth` reads both. Unpickling is
restricted: the unpickler refuses every global (class or function) reference, so only plain
lists, strings and numbers can come out, and decompression is capped, so a hostile file cannot
run code or exhaust memory. Still, only load dataset files you trust.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import io
import json
import math
import pickle
import re
import zlib
from collections.abc import Sequence
from typing import Any

from resd.envs.base import DataError
from resd.envs.bouncingsim.distance import check_distance

__all__ = [
    "THRESHOLD",
    "ParsedAssert",
    "ball_distances",
    "check_distance",
    "decode_ground_truth",
    "encode_ground_truth",
    "format_time",
    "make_assert",
    "parse_assert",
]

THRESHOLD = 50.0
#: refuse ground-truth blobs that decompress to more than this many bytes
MAX_DECODED_BYTES = 16 * 1024 * 1024

_ASSERT_RE = re.compile(
    r"\s*assert\s+check_distance\(\s*predict_position\((?P<t>.+?)\)\s*,\s*(?P<expected>\[.+\])\s*\)"
    r"\s*<=\s*(?P<threshold>[0-9.]+)\s*$",
    re.DOTALL,
)


def ball_distances(actual: Sequence[Sequence[float]], expected: Sequence[Sequence[float]]) -> list[float]:
    """Per-ball distances (the caller has already validated the points)."""
    return [math.hypot(p[0] - q[0], p[1] - q[1]) for p, q in zip(actual, expected)]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def format_time(t: float) -> str:
    """The time as printed in an assert: 2 decimals."""
    return f"{t:.2f}"


def make_assert(t: float, positions: Sequence[Sequence[float]], threshold: float = THRESHOLD) -> str:
    """One test line for the rounded ball centres at time ``t``."""
    points = ", ".join(f"[{_num(x)}, {_num(y)}]" for x, y in positions)
    return f"assert check_distance(predict_position({format_time(t)}), [{points}]) <= {threshold}"


def _num(v: float) -> str:
    return repr(round(float(v), 2) + 0.0)


@dataclasses.dataclass(frozen=True)
class ParsedAssert:
    """The parts of a standard test line."""

    time_text: str  # as printed, e.g. "0.30"
    time: float
    expected: list[list[float]]
    threshold: float


def parse_assert(line: str) -> ParsedAssert | None:
    """Split a standard test line; None if it does not have the standard form."""
    m = _ASSERT_RE.match(line)
    if not m:
        return None
    try:
        t = float(m.group("t"))
        expected = ast.literal_eval(m.group("expected"))
        threshold = float(m.group("threshold"))
        check_distance(expected, expected)  # validates the points
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not math.isfinite(t):
        return None
    return ParsedAssert(m.group("t").strip(), t, [[float(x), float(y)] for x, y, *_ in expected], threshold)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler that refuses every class or function: only builtin containers and scalars."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from ground truth")


def encode_ground_truth(tests: list[str]) -> str:
    """base64(zlib(pickle(tests))), the compact format of some upstream files."""
    return base64.b64encode(zlib.compress(pickle.dumps(list(tests)))).decode("ascii")


def decode_ground_truth(value: Any) -> list[str]:
    """Read a ground-truth field: a list, a JSON list (possibly JSON-encoded twice, as veRL
    preprocessing does), or base64(zlib(pickle)). Raises DataError if it is none of these."""
    for _ in range(3):  # a JSON string may wrap another JSON string or a base64 blob
        if isinstance(value, list):
            if not value or not all(isinstance(x, str) for x in value):
                raise DataError("ground_truth must be a non-empty list of assert strings")
            return list(value)
        if isinstance(value, tuple):
            value = list(value)
            continue
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
            continue
        except ValueError:
            value = _decode_blob(value)
    raise DataError(f"ground_truth is neither a list of asserts nor an encoded one: {_short(value)}")


def _decode_blob(text: str) -> Any:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        data = inflater.decompress(raw, MAX_DECODED_BYTES)
        if inflater.unconsumed_tail:
            raise DataError(f"ground_truth decompresses to more than {MAX_DECODED_BYTES} bytes")
        return _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except DataError:
        raise
    except Exception as e:  # any malformed blob: binascii, zlib, pickle and struct errors alike
        raise DataError(f"ground_truth is not JSON and not base64(zlib(pickle)): {e}") from None
