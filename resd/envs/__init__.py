"""Environments: tasks that score a response and return textual feedback.

``resd.envs.load(name)`` returns an :class:`Environment`. Built-in environments are imported
lazily. Register your own with :func:`register` (a decorator) or by a dotted path
``"my_package.my_module:MyEnv"`` passed to :func:`load`; see ``docs/environments.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from resd.envs.base import DataError, Environment, Example, Feedback

__all__ = ["DataError", "Environment", "Example", "Feedback", "available", "load", "register"]

# name -> "module:attribute"; imported on first use so that loading one environment does not
# import the dependencies of all of them.
_BUILTIN: dict[str, str] = {
    "arithmetic": "resd.envs.arithmetic:ArithmeticEnv",
    "manufactoria": "resd.envs.manufactoria:ManufactoriaEnv",
    "bouncingsim": "resd.envs.bouncingsim:BouncingSimEnv",
    "finer": "resd.envs.finer:FinerEnv",
    "code": "resd.envs.code:CodeEnv",
    "mcq": "resd.envs.mcq:MCQEnv",
}
_REGISTRY: dict[str, Callable[..., Environment]] = {}


def register(name: str) -> Callable[[type[Environment]], type[Environment]]:
    """Class decorator that makes an environment loadable by ``resd.envs.load(name)``."""

    def wrap(cls: type[Environment]) -> type[Environment]:
        if not (isinstance(cls, type) and issubclass(cls, Environment)):
            raise TypeError(f"{cls!r} is not an Environment subclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of the built-in and registered environments."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def load(name: str, **kwargs: Any) -> Environment:
    """Instantiate an environment by registered name or ``"package.module:Class"`` path."""
    if name not in _REGISTRY:
        if name in _BUILTIN:
            cls = _import(_BUILTIN[name])
            _REGISTRY.setdefault(name, cls)
        elif ":" in name:
            cls = _import(name)
            if not (isinstance(cls, type) and issubclass(cls, Environment)):
                raise TypeError(f"{name} is not an Environment subclass")
            cls.name = cls.name or name
            _REGISTRY[name] = cls
        else:
            raise KeyError(f"unknown environment {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](**kwargs)
