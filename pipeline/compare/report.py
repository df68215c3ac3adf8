"""The comparison report: ``report.json`` (every number, ``report_data.py``), ``report.md`` (and
optionally ``report.html``, ``report_text.py``) for people, and PNG plots (``report_plots.py``),
written atomically into one directory.

Sections: verdict, test metrics with paired significance, learning curves, cost, the item slices
(warm, cold-start and long-tail items, catalog coverage), the per-modality ablation, failed arms,
and the ``modalrec train`` command that reproduces each run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_directory
from ..config import Config
from ..data import PreparedData
from .arms import Arm
from .report_data import build_report
from .report_plots import PLOTS
from .report_text import SECTIONS, blocks, to_html, to_markdown


def write_report(cfg: Config, data: PreparedData, arms: list[Arm], outcomes: dict[str, dict], context: dict,
                 target: Path) -> dict[str, Any]:
    """Build the report and write it into ``target`` in one atomic step; returns report.json's object."""
    report = build_report(cfg, data, arms, outcomes, context)
    report["report_dir"] = str(target)
    items = blocks(report)
    files = ["report.json", "report.md", *PLOTS]
    if cfg.compare.html:
        files.append("report.html")
    report["files"] = files
    with atomic_directory(target, "report.json") as tmp:
        for name, plot in PLOTS.items():
            plot(report, tmp / name)
        (tmp / "report.md").write_text(to_markdown(items), encoding="utf-8")
        if cfg.compare.html:
            (tmp / "report.html").write_text(to_html(items, report["title"]), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return report


__all__ = ["SECTIONS", "build_report", "write_report"]
