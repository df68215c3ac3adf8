"""``modalrec compare``: frozen vs fine-tuned item towers on one data set and one split, over
several seeds, with a report (``report.md`` / ``.json`` / PNGs). The frozen arms train one
recommender (``compare.model``), the fine-tuned arms another that takes live encoders
(``compare.finetune_model``), each with its budget; ``arms.py`` says which arm trains which.

- ``arms.py``        the grid: which overrides make each arm
- ``run.py``         the plan (arms, shared config), then training every (arm, seed) resumably
- ``per_user.py``    each test user's own metric values of a finished run, for the paired tests
- ``stats.py``       paired t-test / Wilcoxon over users, Holm adjustment
- ``costs.py``       extraction time per feature set
- ``report.py``      the report files, written at once: ``report_data.py`` (the numbers),
  ``report_plots.py`` (the PNGs), ``report_text.py`` (Markdown / HTML), ``formats.py`` (how
  numbers are written)
"""

from .arms import Arm, baseline_arm, build_arms
from .run import ComparePlan, compare_dir, plan_compare, run_compare
from .stats import paired_test

__all__ = ["Arm", "ComparePlan", "baseline_arm", "build_arms", "compare_dir", "paired_test", "plan_compare",
           "run_compare"]
