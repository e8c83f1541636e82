"""Linear-time scans of model output for tag pairs and fenced blocks.

Model output is hostile input. A lazy pattern such as ``<think>.*?</think>`` is tried at every
``<think>``; with many of them and no ``</think>`` after, each try scans to the end of the text, which
is quadratic (140 KB took seconds). Every match of such a pattern ends with its closing tag, so the
helpers here bound where a search may look (:func:`search_end`) or find the last pair with a constant
number of ``str.find``/``str.rfind`` calls (:func:`last_pair`).
"""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s*")


def search_end(text: str, close: str, *, then_spaces: bool = False) -> int:
    """Where a search for matches ending in ``close`` (then ``\\s*`` with ``then_spaces``) can stop.

    That is just after the last ``close`` (and the whitespace after it), or 0 when there is none.
    Searching ``text[:end]`` gives the same matches as searching ``text``, and in linear time for a
    pattern ``OPEN.*?CLOSE`` whose ``OPEN`` cannot overlap ``CLOSE``: before ``end`` every opening
    that is tried finds a closing, and the match then consumes the text it scanned.
    """
    last = text.rfind(close)
    if last < 0:
        return 0
    end = last + len(close)
    return _SPACES.match(text, end).end() if then_spaces else end


def last_pair(text: str, open_tag: str, close_tag: str) -> tuple[int, int] | None:
    """Content span ``(start, end)`` of the last pair as ``re.findall(OPEN(.*?)CLOSE, DOTALL)`` pairs
    them (an ``open_tag`` with the first ``close_tag`` after it, then on from there), or None.

    Needs tags that overlap neither themselves nor each other, like ``<answer>`` and ``</answer>``.
    The last pair closes at the first ``close_tag`` after the last ``open_tag`` that has a
    ``close_tag`` after it, and opens at the first ``open_tag`` after the ``close_tag`` before that.
    """
    last_close = text.rfind(close_tag)
    opening = text.rfind(open_tag, 0, last_close) if last_close >= 0 else -1
    if opening < 0:
        return None
    close = text.find(close_tag, opening + len(open_tag))
    previous_close = text.rfind(close_tag, 0, close)
    start = text.find(open_tag, previous_close + len(close_tag) if previous_close >= 0 else 0, close)
    return start + len(open_tag), close
