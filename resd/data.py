"""Reading dataset files (JSONL, JSON, parquet) with errors that name the file, row and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resd.envs.base import DataError


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file into a list of dicts."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: row {lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects")
        return data
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - depends on the user's install
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
        return pq.read_table(path).to_pylist()
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def require(row: dict[str, Any], field: str, kind: type | tuple[type, ...], *, where: str = "") -> Any:
    """Return ``row[field]``, raising a DataError naming ``where`` and the field if missing or mistyped."""
    prefix = f"{where}: " if where else ""
    if field not in row:
        raise DataError(f"{prefix}missing field {field!r}")
    value = row[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{prefix}field {field!r} should be {names}, got {type(value).__name__}")
    return value
