"""The environment interface: a task that scores a response and explains what went wrong.

An environment turns a dataset row (``example``) into the student's chat prompt and scores a
response text against it. ``score`` is the reward used for training, ``acc`` the fraction of
checks passed, ``feedback`` the text a self-teacher (and a reflector) may read.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

Example = dict[str, Any]
Message = dict[str, str]


@dataclasses.dataclass
class Feedback:
    """The verdict of an environment on one response.

    Attributes:
        score: the reward (sparse 0/1 or dense in [0, 1]).
        acc: the fraction of checks passed, in [0, 1].
        feedback: text explaining the failure; "" when there is nothing to say.
        details: anything else worth logging (per-test results, the parsed answer, ...).
    """

    score: float
    acc: float
    feedback: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DataError(ValueError):
    """A dataset row is missing a field or has a malformed one."""


class Row(dict):
    """A dataset row (a plain dict to everything else) that carries the id derived for it when it was
    loaded without one (:func:`resd.data.derive_id`), outside its columns."""

    __slots__ = ("resd_id",)

    def __init__(self, *args: Any, resd_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resd_id = resd_id


def _checked(method: Callable[..., list[Example]]) -> Callable[..., list[Example]]:
    """Wrap a ``load_split`` so that the rows are checked when loaded (:func:`resd.data.checked_load`)."""

    @functools.wraps(method)
    def load_split(self: Environment, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        from resd.data import checked_load

        return checked_load(self, method, split, path, limit)

    load_split.__resd_checked__ = True  # type: ignore[attr-defined]
    return load_split


class Environment(abc.ABC):
    """Base class of every environment.

    Subclasses implement :meth:`prompt_messages`, :meth:`score` and :meth:`example_id`, and may
    override :meth:`load_split` to ship or generate data.
    """

    #: registry name, set by :func:`resd.envs.register`
    name: str = ""
    #: noun used by task-specific teacher templates ("answering questions", ...)
    task_description: str = "solving the task"
    #: {field the environment reads: column of the data files}, applied to rows read from files
    #: (``data.env_kwargs.columns``; set by :func:`resd.envs.load`)
    columns: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # every load_split, the subclass's own included, checks its rows: a readable prompt and a
        # stable id for each, not empty; errors name the file and row (resd.data.checked_load)
        method = cls.__dict__.get("load_split")
        if method is not None and not getattr(method, "__resd_checked__", False):
            cls.load_split = _checked(method)  # type: ignore[method-assign]

    @abc.abstractmethod
    def prompt_messages(self, example: Example) -> list[Message]:
        """The student's chat messages (system messages first, the user message last)."""

    @abc.abstractmethod
    def score(self, response: str, example: Example, *, truncated: bool = False) -> Feedback:
        """Score one response. ``truncated`` is True when the response hit the length limit.

        Must never raise on hostile model output: a malformed response is a failure with feedback.
        """

    def task_and_test_case(self, score: float, acc: float) -> tuple[float, float]:
        """The two accuracies reported per sample (RESD arXiv 2605.12741, section 5): per task (1 when the
        whole task is solved, else 0) and per test case (the fraction of test cases passed).

        By default ``acc`` is the fraction of checks passed, so the task is solved when ``acc`` is 1 (this
        holds for sparse and dense rewards alike). An environment whose ``acc`` and ``score`` mean something
        else (FiNER) overrides this.
        """
        return (1.0 if acc >= 1.0 else 0.0), float(acc)

    def example_id(self, example: Example) -> str:
        """A stable id of the example (the key of RESD's solution buffer): ``extra_info.index``, ``id``,
        ``idx`` or ``index``, else the id derived when the row was loaded (:class:`Row`)."""
        for path in (("extra_info", "index"), ("id",), ("idx",), ("index",)):
            value: Any = example
            for key in path:
                if not isinstance(value, dict) or key not in value:
                    value = None
                    break
                value = value[key]
            if value is not None:
                return str(value)
        derived = getattr(example, "resd_id", None)  # a Row given an id when loaded
        if derived is not None:
            return derived
        raise DataError(f"example has no stable id (extra_info.index, id, idx or index): keys {sorted(example)}")

    @_checked
    def load_split(self, split: str, path: str | None = None, limit: int | None = None) -> list[Example]:
        """Load (or generate) the rows of a split. ``path`` points at a user's own data (see
        :func:`resd.data.read_rows`: a file, a ``datasets`` directory or a hub dataset).

        Every override is checked too (``__init_subclass__``): a row whose prompt or id cannot be
        built fails here, naming the file and row, and so does an empty split.
        """
        if path is None:
            raise DataError(f"environment {self.name!r} ships no data for split {split!r}; pass a path "
                            "(data.train_path / data.val_path)")
        from resd.data import read_rows

        rows = read_rows(path)
        return rows[:limit] if limit is not None else rows

    def score_batch(
        self,
        responses: Sequence[str],
        examples: Sequence[Example],
        truncated: Sequence[bool] | None = None,
        *,
        workers: int | None = None,
        timeout_s: float | None = None,
    ) -> list[Feedback]:
        """Score many responses.

        By default they are scored one after another in this process. With ``workers`` > 0 (or the
        attribute ``score_workers`` set on the environment) they are scored in that many worker
        processes with a wall-clock limit of ``timeout_s`` (or ``score_timeout_s``, default 60 s)
        per response: a check that hangs, crashes or floods its output is killed and scored 0 with
        feedback that says so (see :mod:`resd.envs.parallel`).
        """
        truncated = truncated if truncated is not None else [False] * len(responses)
        workers = workers if workers is not None else getattr(self, "score_workers", 0)
        if workers and workers > 0:
            from resd.envs.parallel import DEFAULT_TIMEOUT_S, score_in_workers

            if timeout_s is None:
                timeout_s = getattr(self, "score_timeout_s", None) or DEFAULT_TIMEOUT_S
            return score_in_workers(self, responses, examples, truncated, workers=workers, timeout_s=timeout_s)
        return [self.score(r, e, truncated=t) for r, e, t in zip(responses, examples, truncated, strict=True)]
