"""How the report writes numbers: fixed digits, signed differences, mean ± std, p-values;
``n/a`` for a value that is missing or not finite."""

from __future__ import annotations

import math


def p_value(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def number(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def signed(x) -> str:
    """A difference, with its sign."""
    return "n/a" if x is None else f"{x:+.4f}"


def mean_pm(d: dict | None) -> str:
    return "n/a" if not d else f"{d['mean']:.4f} ± {d['std']:.4f}"


def integer(x) -> str:
    return "n/a" if x is None else f"{int(round(x)):,}"
