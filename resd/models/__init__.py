"""Model and tokenizer loading: the embedded default model, tiny random models, any HF id or path."""

from resd.models.loading import (
    DTYPES,
    build_tiny_model,
    chat_prompt_ids,
    load_model,
    load_tokenizer,
    resolve_model_path,
)

__all__ = ["DTYPES", "build_tiny_model", "chat_prompt_ids", "load_model", "load_tokenizer", "resolve_model_path"]
