"""Self-contained HTML reports of training runs (``resd report``).

``add_report_parser`` is imported eagerly (the ``resd`` command line stays fast); the rest loads
matplotlib, so it is imported on first use.
"""

from __future__ import annotations

from typing import Any

from resd.report.cli import add_report_parser

_LAZY = {"write_report": "build", "choose_metrics": "build", "load_run": "loading", "RunData": "loading"}

__all__ = ["RunData", "add_report_parser", "choose_metrics", "load_run", "write_report"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'resd.report' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"resd.report.{_LAZY[name]}"), name)
