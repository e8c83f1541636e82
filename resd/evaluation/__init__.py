"""Evaluation: metrics (mean@k, best@k, pass@k) and evaluating a model on an environment split."""

from resd.evaluation.evaluate import EvalResult, evaluate
from resd.evaluation.metrics import (
    PairedDifference,
    best_at_k,
    best_at_k_bootstrap,
    mean_at_k,
    mean_pass_at_k,
    paired_difference,
    pass_at_k,
)

__all__ = [
    "EvalResult",
    "PairedDifference",
    "best_at_k",
    "best_at_k_bootstrap",
    "evaluate",
    "mean_at_k",
    "mean_pass_at_k",
    "paired_difference",
    "pass_at_k",
]
