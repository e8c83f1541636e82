"""``check_distance``: the metric of every BouncingSim test.

This module imports only the standard library so that its source can also be shipped into the
sandboxed test process.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_distance(actual: Any, expected: Any) -> float:
    """Mean Euclidean distance between corresponding points, rounded to 3 decimals.

    Raises TypeError if either argument is not a non-empty list of points, ValueError if the
    lengths differ or a point is not a pair of numbers.
    """
    for name, value in (("predicted", actual), ("expected", expected)):
        if not isinstance(value, (list, tuple)) or not value:
            kind = f"an empty {type(value).__name__}" if isinstance(value, (list, tuple)) else type(value).__name__
            raise TypeError(f"check_distance needs a non-empty list of [x, y] points as {name}, got {kind}")
    if len(actual) != len(expected):
        raise ValueError(f"Lists must have same length: {len(actual)} vs {len(expected)}")
    total = 0.0
    for i, (p, q) in enumerate(zip(actual, expected)):
        if not (is_point(p) and is_point(q)):
            raise ValueError(f"Invalid coordinates at index {i}: {_short(p)}, {_short(q)}")
        total += math.hypot(p[0] - q[0], p[1] - q[1])
    return round(total / len(actual), 3)


def is_point(p: Any) -> bool:
    """True for a list or tuple whose first two items are real numbers (not booleans)."""
    return (
        isinstance(p, (list, tuple))
        and len(p) >= 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in p[:2])
    )


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
