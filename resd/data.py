"""Reading datasets with errors that name the file, the row and the column.

:func:`read_rows` reads

- a ``.jsonl`` file (one JSON object a line), a ``.json`` file (a list of objects, or JSON Lines as
  ``datasets.Dataset.to_json`` writes them) or a ``.parquet`` file;
- a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` whose
  split is the one being loaded: ``data.train_split`` / ``data.val_split``);
- a Hugging Face Hub dataset, ``hf:NAME`` or ``hf:NAME:CONFIG`` (a bare ``org/name`` that is not a
  local path works too), unless ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set.

The last two need the optional ``datasets`` package (``pip install 'resd[datasets]'``), imported
only then.

:func:`checked_load` runs around every ``Environment.load_split`` (see
:class:`resd.envs.base.Environment`): it applies the environment's column mapping
(``data.env_kwargs.columns``) to the rows read from files, derives a stable id for rows without one,
builds every row's prompt and id once (so a row the environment cannot read fails at load time,
naming the file and row, not after the first rollout) and refuses an empty split. A row without an
id column gets one derived from its row number and prompt (:func:`derive_id`), carried outside its
columns (:class:`resd.envs.base.Row`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resd.envs.base import DataError, Row
from resd.hub import offline

log = logging.getLogger(__name__)

_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclasses.dataclass
class _Load:
    """What one ``load_split`` call is doing: its split, the column mapping, and where each row came from."""

    split: str
    columns: dict[str, str]
    # id(row) -> (source, row number, the row: held so that its id is not reused during the call)
    origins: dict[int, tuple[str, int, dict[str, Any]]] = dataclasses.field(default_factory=dict)


_ACTIVE: contextvars.ContextVar[_Load | None] = contextvars.ContextVar("resd_data_load", default=None)


# ---------------------------------------------------------------------------------------------- reading
def read_rows(path: str | Path, *, split: str | None = None,
              columns: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The rows of a data file, ``datasets`` directory or hub dataset (see the module docstring).

    ``split`` selects the split of a ``DatasetDict`` or hub dataset and ``columns`` maps fields to
    columns; inside ``Environment.load_split`` both default to that call's split and mapping.
    """
    load = _ACTIVE.get()
    if split is None:
        split = load.split if load is not None else "train"
    if columns is None:
        columns = load.columns if load is not None else {}
    text = str(path)
    local = Path(text)
    if text.startswith("hf:"):
        source, rows = text, _read_hub(text[3:], split, shown=text)
    elif local.is_dir():
        source, rows = text, _read_saved_dataset(local, split)
    elif local.exists():
        source, rows = text, _read_file(local)
    elif _HUB_NAME.fullmatch(text) and not local.suffix:
        source, rows = text, _read_hub(text, split, shown=text, bare=True)
    else:
        raise DataError(f"{text}: no such file or directory")
    out = []
    for n, row in rows:
        row = _map_columns(row, columns, source, n)
        if load is not None:
            load.origins[id(row)] = (source, n, row)
        out.append(row)
    return out


def _map_columns(row: dict[str, Any], columns: dict[str, str], source: str, n: int) -> dict[str, Any]:
    if not columns:
        return row
    out = dict(row)
    for field, column in columns.items():
        value: Any = row
        for part in column.split("."):
            if not isinstance(value, dict) or part not in value:
                raise DataError(f"{source}: row {n}: no column {column!r} to read field {field!r} from "
                                f"(data.env_kwargs.columns); the row's columns: {sorted(row)}")
            value = value[part]
        out[field] = value
    return out


def _decode(data: bytes, path: Path, base_offset: int = 0, lineno: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f" (row {lineno})" if lineno is not None else ""
        raise DataError(f"{path}: not UTF-8 text: byte offset {base_offset + e.start}{where} is "
                        f"0x{data[e.start]:02x}; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _read_file(path: Path) -> list[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        data = path.read_bytes()
        text = _decode(data, path)
        try:
            value = json.loads(text.removeprefix("\ufeff"))
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":  # JSON Lines in a .json file (datasets' to_json writes these)
                return _read_jsonl(path)
            raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        if not isinstance(value, list):
            raise DataError(f"{path}: expected a JSON list of objects (or JSON Lines), got a {type(value).__name__}")
        for n, row in enumerate(value, 1):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {n}: expected a JSON object, got {type(row).__name__}")
        return list(enumerate(value, 1))
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - depends on the user's install
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise DataError(f"{path}: cannot read parquet: {type(e).__name__}: {e}") from None
        return list(enumerate(table.to_pylist(), 1))
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .parquet, a directory written "
                    "by datasets' save_to_disk, or hf:NAME for a Hugging Face Hub dataset)")


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, offset, lineno)
            offset += len(raw)
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def _import_datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{what} needs the 'datasets' package: pip install 'resd[datasets]' (or pip install "
                        "datasets), or export the data to .jsonl / .parquet") from None
    return datasets


def _read_saved_dataset(path: Path, split: str) -> list[tuple[int, dict[str, Any]]]:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).is_file() for m in markers):
        files = sorted(p.name for p in path.iterdir())[:8]
        raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk (no "
                        f"{', '.join(markers)}; it holds {files}); give a data file instead")
    datasets = _import_datasets(f"{path} (a datasets directory)")
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: datasets.load_from_disk failed: {type(e).__name__}: {e}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{path}: this DatasetDict has no split {split!r} (splits: {', '.join(data)}); set "
                            "data.train_split / data.val_split")
        data = data[split]
    return list(enumerate(data.to_list(), 1))


def _read_hub(spec: str, split: str, *, shown: str, bare: bool = False) -> list[tuple[int, dict[str, Any]]]:
    name, _, config = spec.partition(":")
    head = f"{shown}: {'no such local file or directory, and ' if bare else ''}"
    if offline("datasets"):
        raise DataError(f"{head}HF_HUB_OFFLINE / HF_DATASETS_OFFLINE forbid loading it from the Hugging Face Hub; "
                        "save the dataset with datasets' save_to_disk (or as .jsonl) and pass that path")
    datasets = _import_datasets(f"{shown} (a Hugging Face Hub dataset)")
    try:
        data = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:
        raise DataError(f"{head}loading it from the Hugging Face Hub failed: datasets.load_dataset({name!r}, "
                        f"{config or None!r}, split={split!r}) raised {type(e).__name__}: {e}") from None
    return list(enumerate(data.to_list(), 1))


# ---------------------------------------------------------------------------------------------- checking
def row_origin(row: dict[str, Any]) -> tuple[str, int] | None:
    """(source, row number) of a row read during the current ``load_split`` call, else None."""
    load = _ACTIVE.get()
    origin = load.origins.get(id(row)) if load is not None else None
    return origin[:2] if origin is not None else None


def derive_id(messages: Any, number: int) -> str:
    """The id of a row without one: its row number and a hash of its prompt, the same in every run and
    process (``row12-3f2a...``)."""
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"row{number}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def checked_load(env: Any, method: Callable[..., list[dict[str, Any]]], split: str, path: str | None,
                 limit: int | None) -> list[dict[str, Any]]:
    """``method(env, split, path, limit)`` with the rows checked (the outermost call only; an override's
    ``super().load_split`` runs unchecked inside it)."""
    if _ACTIVE.get() is not None:
        return method(env, split, path, limit)
    load = _Load(split, dict(getattr(env, "columns", None) or {}))
    token = _ACTIVE.set(load)
    try:
        rows = method(env, split, path, limit)
        where = str(path) if path is not None else f"environment {env.name or type(env).__name__!r}"
        if not rows:
            cut = f" after data.*_limit={limit}" if limit is not None else ""
            raise DataError(f"{where}: the {split!r} split is empty{cut}; nothing to train or evaluate on")
        return _check_rows(env, rows, where)
    finally:
        _ACTIVE.reset(token)


def _check_rows(env: Any, rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """``rows`` once every row has a well-formed prompt and an id (a row without an id column becomes a
    :class:`Row` with a derived one)."""
    name = env.name or type(env).__name__
    rows = list(rows)
    seen: dict[str, int] = {}
    duplicates = 0
    for index, row in enumerate(rows, 1):
        source, number = row_origin(row) or (where, index)
        prefix = f"{source}: row {number}"
        if not isinstance(row, dict):
            raise DataError(f"{prefix}: expected a mapping of columns, got {type(row).__name__}")
        try:
            messages = env.prompt_messages(row)
        except Exception as e:
            raise DataError(f"{prefix}: {_reason(e, source, 'prompt_messages')}{_columns_hint(row, e)}") from None
        _check_messages(messages, prefix, name)
        try:
            ident = str(env.example_id(row))
        except DataError:  # no id column: derive one (kept outside the columns, see Row)
            row = rows[index - 1] = Row(row, resd_id=derive_id(messages, number))
            try:
                ident = str(env.example_id(row))
            except Exception as e:
                raise DataError(f"{prefix}: {name}.example_id failed: {_reason(e, source, 'example_id')}") from None
        except Exception as e:
            raise DataError(f"{prefix}: {name}.example_id failed: {_reason(e, source, 'example_id')}") from None
        if ident in seen:
            duplicates += 1
        seen.setdefault(ident, number)
    if duplicates:
        log.warning("%s: %d rows share an id with an earlier row (ids key RESD's solution buffer and the logs)",
                    where, duplicates)
    return rows


def _reason(error: BaseException, source: str, method: str) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, DataError):
        # an environment that already named the file and row: keep only its reason
        text = re.sub(rf"^{re.escape(source)}: (row \d+: )?", "", text)
        return text
    if isinstance(error, KeyError):
        return f"missing field {text!r} ({type(error).__name__} in {method})"
    return f"{type(error).__name__}: {text}"


def _columns_hint(row: Any, error: BaseException) -> str:
    if not isinstance(row, dict) or not isinstance(error, (DataError, KeyError, TypeError)):
        return ""
    hint = f" (the row's columns: {sorted(row)}; map a field to a column with data.env_kwargs.columns={{field: column}}"
    if "prompt" in row:
        hint += ", or train on a TRL-style 'prompt' dataset with data.env=functions"
    return hint + ")"


def _check_messages(messages: Any, prefix: str, name: str) -> None:
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
    if not ok:
        raise DataError(f"{prefix}: {name}.prompt_messages should return a non-empty list of "
                        f"{{'role': str, 'content': str}} messages, got {str(messages)[:200]}")


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
