"""Whether the Hugging Face Hub may be asked for something: one reading of its offline switches.

``HF_HUB_OFFLINE`` forbids everything; ``HF_DATASETS_OFFLINE`` only datasets and
``TRANSFORMERS_OFFLINE`` only models, as in ``datasets`` and ``transformers`` themselves.
"""

from __future__ import annotations

import os
from typing import Literal

_TRUE = {"1", "on", "yes", "true"}
_SWITCHES = {"datasets": ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"), "models": ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}


def offline(kind: Literal["datasets", "models"]) -> bool:
    """True when the environment (or ``huggingface_hub.constants.HF_HUB_OFFLINE``, which a program may
    set) forbids loading ``kind`` from the Hub."""
    if any(os.environ.get(name, "").strip().lower() in _TRUE for name in _SWITCHES[kind]):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)
