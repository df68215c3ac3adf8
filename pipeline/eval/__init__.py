"""Full-ranking evaluation and top-K metrics."""

from .evaluator import Evaluator, UserItems, long_tail_items
from .metrics import METRICS, topk_metrics

__all__ = ["METRICS", "Evaluator", "UserItems", "long_tail_items", "topk_metrics"]
