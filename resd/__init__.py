"""resd: reinforcement learning of language models from rich environment feedback by on-policy
self-distillation (SDPO, RESD) and the GRPO baseline."""

__version__ = "0.1.0"
