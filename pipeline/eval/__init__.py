"""Full-ranking evaluation and top-K metrics."""

from .evaluator import Evaluator, UserItems, long_tail_items
from .metrics import METRIC_FUNCTIONS, METRICS, Ranking, register_metric, topk_metrics

__all__ = ["METRICS", "METRIC_FUNCTIONS", "Evaluator", "Ranking", "UserItems", "long_tail_items", "register_metric",
           "topk_metrics"]
