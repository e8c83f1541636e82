"""Algorithms: each turns scored samples into the learner's targets and owns its own state.

| name | module | what |
|---|---|---|
| ``grpo`` | :mod:`resd.algorithms.grpo` | PPO-clip with group-relative advantages |
| ``sdpo`` | :mod:`resd.algorithms.sdpo` | self-distillation from a successful sibling and/or the feedback |
| ``sdpo+ss`` | :mod:`resd.algorithms.sdpo` | SDPO where a success may be its own demonstration |
| ``resd`` | :mod:`resd.algorithms.resd` | SDPO's teacher plus reflections, a playbook and a solution buffer |

A new algorithm subclasses :class:`Algorithm` and registers itself::

    @register_algorithm("my-algo")
    class MyAlgo(Algorithm):
        def prepare(self, samples, step):
            ...  # set s.advantage, or s.teacher_messages and s.sd_mask, for each sample
            return {}

and is then selected with ``algorithm=my-algo`` (import its module first, e.g. from a plugin).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from resd.algorithms.base import Algorithm, Services, assign_group_advantages
from resd.algorithms.grpo import GRPO
from resd.algorithms.resd import RESD
from resd.algorithms.sdpo import SDPO, SDPOSelfSuccess

if TYPE_CHECKING:
    from resd.config import Config

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: make ``algorithm=name`` select this :class:`Algorithm` subclass."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise TypeError(f"register_algorithm({name!r}) needs an Algorithm subclass, got {cls!r}")
        existing = ALGORITHMS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"algorithm {name!r} is already registered ({existing.__module__}.{existing.__qualname__})")
        cls.name = name
        ALGORITHMS[name] = cls
        return cls

    return decorate


for _name, _cls in (("grpo", GRPO), ("sdpo", SDPO), ("sdpo+ss", SDPOSelfSuccess), ("resd", RESD)):
    register_algorithm(_name)(_cls)


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered class for ``name``; a ``ValueError`` lists the known names."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}") from None


def build_algorithm(config: Config, services: Services) -> Algorithm:
    """The run's algorithm object."""
    return algorithm_class(config.algorithm)(config, services)


__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "GRPO",
    "RESD",
    "SDPO",
    "SDPOSelfSuccess",
    "Services",
    "algorithm_class",
    "assign_group_advantages",
    "build_algorithm",
    "register_algorithm",
]
