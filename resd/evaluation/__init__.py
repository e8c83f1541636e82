"""Evaluation: metrics (mean@k, best@k, pass@k) and evaluating a model on an environment split."""

from resd.evaluation.evaluate import EvalResult, evaluate
from resd.evaluation.metrics import best_at_k, best_at_k_bootstrap, mean_at_k, mean_pass_at_k, pass_at_k

__all__ = ["EvalResult", "best_at_k", "best_at_k_bootstrap", "evaluate", "mean_at_k", "mean_pass_at_k", "pass_at_k"]
