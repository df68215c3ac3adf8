"""Full-ranking evaluation and top-K metrics."""

from .evaluator import Evaluator
from .metrics import METRICS, topk_metrics

__all__ = ["METRICS", "Evaluator", "topk_metrics"]
