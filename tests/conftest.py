"""Shared fixtures: the default model's real tokenizer and tiny random models built around it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*argv)``: ``resd *argv`` in this process; asserts exit status 0 and returns what it printed."""
    import contextlib
    import io

    from resd.cli import main

    def run(*argv: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(list(argv)) == 0
        return out.getvalue()

    return run


@pytest.fixture(scope="session")
def tokenizer():
    from resd.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture()
def tiny_config(tmp_path):
    """Build a Config for a tiny fp32 model: ``tiny_config(**section_overrides)``."""
    from resd.config import load_config

    def make(*overrides: str):
        return load_config("smoke", overrides=[f"logging.run_dir={tmp_path / 'run'}", "logging.progress=false", *overrides])

    return make
