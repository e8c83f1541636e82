"""Crash-safe checkpoints: written to a temporary directory, checksummed, then atomically renamed.

Layout of ``<run_dir>/checkpoints/step-000042/``: one ``<name>.safetensors`` per tensor group
(student, teacher), one ``<name>.pt`` per optimizer-like object, ``state.json`` (step, data position,
playbook, ...), and ``manifest.json`` listing every file with its size and sha256. A checkpoint
without a valid manifest is ignored at load, with a warning, and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from resd.fileio import fsync_dir

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a checkpoint that does not match its manifest."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Finished checkpoint directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    objects: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 2,
    protect: frozenset[int] = frozenset(),
) -> Path:
    """Write ``step-<step>`` atomically and prune older checkpoints beyond ``keep_last``.

    Steps in ``protect`` (the best checkpoint by validation) are never pruned.
    """
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files: dict[str, dict[str, Any]] = {}
    try:
        for name, group in tensors.items():
            path = tmp / f"{name}.safetensors"
            save_file({k: v.detach().contiguous().cpu() for k, v in group.items()}, str(path))
            files[path.name] = {}
        for name, obj in objects.items():
            path = tmp / f"{name}.pt"
            torch.save(obj, path)
            files[path.name] = {}
        path = tmp / "state.json"
        path.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        files[path.name] = {}
        for file_name in files:
            path = tmp / file_name
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            files[file_name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {"step": step, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old_step, old in step_dirs(root)[:-keep_last]:
        if old_step not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> dict[str, Any]:
    """Return the manifest of a checkpoint directory, raising CheckpointError if anything differs."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: missing or unreadable manifest ({e})") from None
    for name, info in files.items():
        file_path = path / name
        if not file_path.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if file_path.stat().st_size != info.get("bytes") or _sha256(file_path) != info.get("sha256"):
            raise CheckpointError(f"{path}: {name} does not match its checksum (corrupt or partial)")
    return manifest


def latest_valid(root: Path) -> Path | None:
    """The newest checkpoint that passes :func:`verify`; corrupt ones are skipped with a warning."""
    for step, path in reversed(step_dirs(root)):
        try:
            verify(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint step %d: %s", step, e)
            continue
        return path
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """(tensor groups, objects, state) of a verified checkpoint directory."""
    manifest = verify(path)
    tensors, objects = {}, {}
    for name in manifest["files"]:
        if name.endswith(".safetensors"):
            tensors[name[: -len(".safetensors")]] = load_file(str(path / name))
        elif name.endswith(".pt"):
            objects[name[: -len(".pt")]] = torch.load(path / name, weights_only=True)
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    return tensors, objects, state
