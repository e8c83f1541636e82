"""Environments: tasks that score a response and return textual feedback.

``resd.envs.load(name, **kwargs)`` returns an :class:`Environment`. ``name`` is one of

- a built-in environment (imported lazily, so loading one does not import the dependencies of all);
- a name registered with :func:`register` in a module that has been imported;
- the name of an entry point in the ``resd.envs`` group of an installed package
  (``[project.entry-points."resd.envs"] my-task = "my_package.envs:MyTask"``);
- ``"module:Class"`` (or ``"module:registered-name"``): the module is imported, from the current
  working directory too (see :func:`import_target`).

The keyword argument ``columns`` (``data.env_kwargs.columns`` in a config) belongs to every
environment: a mapping ``{field the environment reads: column of your data file}`` applied to the
rows read from files (see :mod:`resd.data`). See ``docs/environments.md``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from resd.envs.base import DataError, Environment, Example, Feedback

__all__ = [
    "DataError",
    "Environment",
    "Example",
    "Feedback",
    "available",
    "check_env_config",
    "describe",
    "import_target",
    "load",
    "register",
    "resolve",
]

ENTRY_POINT_GROUP = "resd.envs"
#: env_kwargs that every environment accepts (handled by :func:`load`, not passed to the class)
COMMON_KWARGS = ("columns",)

# name -> "module:attribute"; imported on first use so that loading one environment does not
# import the dependencies of all of them.
_BUILTIN: dict[str, str] = {
    "arithmetic": "resd.envs.arithmetic:ArithmeticEnv",
    "manufactoria": "resd.envs.manufactoria:ManufactoriaEnv",
    "bouncingsim": "resd.envs.bouncingsim:BouncingSimEnv",
    "finer": "resd.envs.finer:FinerEnv",
    "code": "resd.envs.code:CodeEnv",
    "mcq": "resd.envs.mcq:MCQEnv",
    "functions": "resd.envs.functions:FunctionsEnv",
}
_REGISTRY: dict[str, Callable[..., Environment]] = {}
# names registered by @register (as opposed to cached built-ins / entry points / module:Class)
_REGISTERED: set[str] = set()


def register(name: str) -> Callable[[type[Environment]], type[Environment]]:
    """Class decorator that makes an environment loadable by ``resd.envs.load(name)``.

    The module must be imported for the name to exist: in a config, use ``data.env=module:Class``
    (or ``module:name``) or publish the class as a ``resd.envs`` entry point.
    """

    def wrap(cls: type[Environment]) -> type[Environment]:
        if not (isinstance(cls, type) and issubclass(cls, Environment)):
            raise TypeError(f"{cls!r} is not an Environment subclass")
        cls.name = name
        _REGISTRY[name] = cls
        _REGISTERED.add(name)
        return cls

    return wrap


def _entry_points() -> dict[str, Any]:
    """The ``resd.envs`` entry points of the installed packages, by name."""
    from importlib.metadata import entry_points

    try:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # a broken distribution's metadata must not break `resd envs`
        return {}


def available() -> list[str]:
    """Names of the built-in, registered and entry-point environments."""
    return sorted(set(_BUILTIN) | _REGISTERED | set(_entry_points()))


def import_target(target: str) -> Any:
    """Import ``"module"`` or ``"module:attribute"`` (``attribute`` may be dotted).

    A module that is not importable from ``sys.path`` is looked up in the current working
    directory too (``python -m`` puts it on ``sys.path``, the ``resd`` script does not): the
    directory is appended to the end of ``sys.path``, so installed packages still win, and it stays
    there so that worker processes can unpickle the environment.
    """
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise ImportError(f"{target!r}: expected 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        top = module_name.split(".")[0]
        if e.name not in (top, module_name) or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e2:
            sys.path.remove(cwd)
            if e2.name in (top, module_name):
                raise ModuleNotFoundError(f"no module named {module_name!r} (looked on sys.path and in the current "
                                          f"directory {cwd})", name=e2.name) from None
            raise
    if not attr:
        return module
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    return value


def _unknown(name: str) -> KeyError:
    return KeyError(
        f"unknown environment {name!r}; known: {', '.join(available())}. A custom environment is named "
        "'module:Class' (the module is imported from sys.path or the current directory) or installed as a "
        f"'{ENTRY_POINT_GROUP}' entry point; @register alone does not import your module"
    )


def resolve(name: str) -> Callable[..., Environment]:
    """The environment class (or factory) of ``name``, imported if needed; KeyError/ImportError/TypeError
    with a message that says what was tried."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        cls = import_target(_BUILTIN[name])
    elif name in (eps := _entry_points()):
        try:
            cls = eps[name].load()
        except Exception as e:
            raise ImportError(f"environment {name!r}: entry point {eps[name].value!r} "
                              f"(group {ENTRY_POINT_GROUP}) failed to load: {type(e).__name__}: {e}") from e
        if not (isinstance(cls, type) and issubclass(cls, Environment)):
            raise TypeError(f"environment {name!r}: entry point {eps[name].value!r} is not an Environment subclass")
        cls.name = cls.name or name
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = import_target(module_name)
        except ModuleNotFoundError as e:
            raise ImportError(f"environment {name!r}: {e}") from None
        if hasattr(module, attr.split(".")[0]):
            cls = import_target(name)
        elif attr in _REGISTRY:  # "module:registered-name": importing the module registered it
            cls = _REGISTRY[attr]
        else:
            raise ImportError(f"environment {name!r}: module {module_name!r} has no attribute {attr!r} and "
                              f"registers no environment of that name")
        if not (isinstance(cls, type) and issubclass(cls, Environment)):
            raise TypeError(f"environment {name!r} is not an Environment subclass (got {cls!r})")
        cls.name = cls.name or name
    else:
        raise _unknown(name)
    _REGISTRY[name] = cls
    return cls


def load(name: str, **kwargs: Any) -> Environment:
    """Instantiate an environment by name (see the module docstring); ``columns`` maps the fields the
    environment reads to the columns of the data files."""
    columns = kwargs.pop("columns", None)
    check_columns(columns)
    env = resolve(name)(**kwargs)
    if columns:
        env.columns = dict(columns)
    return env


def check_columns(columns: Any) -> None:
    """``columns`` must be a mapping of field names to column names (a column may be dotted: ``a.b``)."""
    if columns is None:
        return
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                for k, v in columns.items()):
        raise DataError(f"data.env_kwargs.columns must map field names to column names, e.g. "
                        f"{{question: problem}}; got {columns!r}")


def check_env_config(name: str, kwargs: dict[str, Any]) -> None:
    """Check a config's ``data.env`` and ``data.env_kwargs`` without building the environment.

    Raises ValueError naming the key: an unknown environment (with the known ones), an argument the
    environment does not take, a required one missing, or what the class's own ``check_kwargs``
    (a classmethod, optional) rejects.
    """
    try:
        cls = resolve(name)
    except KeyError as e:
        raise ValueError(f"data.env: {e.args[0]}") from None
    except (ImportError, TypeError, AttributeError) as e:
        raise ValueError(f"data.env={name!r}: {e}") from None
    try:
        check_columns(kwargs.get("columns"))
    except DataError as e:
        raise ValueError(str(e)) from None
    own = {k: v for k, v in kwargs.items() if k not in COMMON_KWARGS}
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(own) - set(accepted))
        if unknown:
            raise ValueError(
                f"data.env_kwargs.{unknown[0]}: environment {name!r} takes no argument {unknown[0]!r} (its "
                f"arguments: {', '.join(accepted) or 'none'}; every environment also takes 'columns'). "
                "env_kwargs written for another environment are dropped when a later layer changes data.env, "
                "unless that layer sets data.env_kwargs too"
            )
    missing = [n for n, p in params.items() if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                   p.KEYWORD_ONLY) and n not in own]
    if missing:
        raise ValueError(f"data.env_kwargs.{missing[0]}: required by environment {name!r}")
    check = getattr(cls, "check_kwargs", None)
    if callable(check):
        check(**own)


def describe(name: str) -> tuple[str, str]:
    """(where it comes from, the first line of its docstring) of an available environment."""
    if name in _BUILTIN:
        source = "built-in"
    elif name in _REGISTERED:
        cls = _REGISTRY[name]
        source = f"registered ({cls.__module__}:{cls.__qualname__})"
    else:
        ep = _entry_points().get(name)
        dist = getattr(getattr(ep, "dist", None), "name", None)
        source = f"entry point ({ep.value}{', ' + dist if dist else ''})" if ep is not None else "imported"
    try:
        cls = resolve(name)
    except Exception as e:  # an optional dependency missing: still list the name
        return source, f"(cannot import: {type(e).__name__}: {e})"
    return source, first_doc_line(cls)


def first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    if obj is not Environment and doc == (inspect.getdoc(Environment) or ""):
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
