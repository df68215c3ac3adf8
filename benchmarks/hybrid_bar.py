"""Issue 16's bar, tested: is the hybrid's warm R@20 within noise of the id-only model, and its cold
R@20 clearly above the content-only two-tower's?

Takes finished runs (one per seed) of three arms, re-scores each run's best weights on test user by
user (the evaluator `modalrec compare` uses for its paired tests), and reports per slice:

- mean ± sample std over seeds, and Welch's t-test over the seeds (the unit is the trained model);
- the paired test over test users (`pipeline.compare.stats.paired_test`, each user's value averaged
  over the seeds first): the mean difference, its 95% interval and the t-test and Wilcoxon p-values
  (the unit is the test user: the noise of which users happen to be in the test split).

"Within noise" reads as: no test finds the hybrid below at the 5% level. "Clearly above" reads as:
the hybrid is above and every test (over seeds, when there are two or more of each; paired t;
Wilcoxon) agrees at the 5% level. Runs are given as comma lists, or as a prefix
ending in `-s` followed by the seeds (`cache/runs/hybrid-bench-demo-joint-b16-s{1..10}`):

    r=cache/runs/hybrid-bench-demo
    python benchmarks/hybrid_bar.py --hybrid $r-joint-b16-s --ids $r-lightgcn-b16-s --content $r-content-b16-s \
        --seeds 1,2,3,4,5,6,7,8,9,10
"""

import argparse
import warnings

import numpy as np
from scipy import stats

from pipeline.compare.per_user import per_user_metrics
from pipeline.compare.stats import mean_std, paired_test

ALPHA = 0.05


def run_dirs(spec: str, seeds: list[int]) -> list[str]:
    if "," in spec or not spec.endswith("-s"):
        return spec.split(",")
    return [f"{spec}{s}" for s in seeds]


def arm_values(dirs: list[str], metrics: list[str]) -> dict[str, tuple[list[float], np.ndarray]]:
    """Per metric: each run's test mean and each test user's value averaged over the runs (every
    run re-scored once for all the metrics)."""
    users_ref, per_run = None, []
    for d in dirs:
        users, values = per_user_metrics(d)
        if users_ref is None:
            users_ref = users
        elif not np.array_equal(users, users_ref):
            raise SystemExit(f"{d}: its test users differ from {dirs[0]}'s")
        per_run.append(values)
    with warnings.catch_warnings():  # a user outside the slice is NaN in every run, and stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {m: ([float(np.nanmean(v[m])) for v in per_run], np.nanmean(np.stack([v[m] for v in per_run]), axis=0))
                for m in metrics}


def compare(name: str, metric: str, a: tuple, b: tuple) -> dict:
    (seeds_a, users_a), (seeds_b, users_b) = a, b
    welch = stats.ttest_ind(seeds_a, seeds_b, equal_var=False) if len(seeds_a) > 1 and len(seeds_b) > 1 else None
    return {"against": name, "metric": metric, "hybrid": mean_std(seeds_a), "other": mean_std(seeds_b),
            "p_seeds": float(welch.pvalue) if welch is not None else None,
            "users": paired_test(users_a, users_b)}


def verdict(row: dict, want: str) -> str:
    u = row["users"]
    diff = u["diff"] or 0.0
    ps = [p for p in (row["p_seeds"], u["p_ttest"], u["p_wilcoxon"]) if p is not None]
    if want == "within":
        below = diff < 0 and any(p < ALPHA for p in ps)
        return "not met: below" if below else "met"
    return "met" if diff > 0 and ps and all(p < ALPHA for p in ps) else "not met"


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def fmt(row: dict) -> str:
    u = row["users"]
    h, o = row["hybrid"], row["other"]
    diff = "–" if u["diff"] is None else f"{u['diff']:+.4f}"
    if u["ci95"] is not None:
        diff += f" [{u['ci95'][0]:+.4f}, {u['ci95'][1]:+.4f}]"
    return (f"| {row['metric']} vs {row['against']} | {h['mean']:.4f} ± {h['std']:.4f} | {o['mean']:.4f} ± {o['std']:.4f} "
            f"| {_p(row['p_seeds'])} | {u['n']} | {diff} | {_p(u['p_ttest'])} | {_p(u['p_wilcoxon'])} | {row['verdict']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hybrid", required=True, help="the hybrid's runs")
    ap.add_argument("--ids", required=True, help="the best id-only model's runs")
    ap.add_argument("--content", required=True, help="the content-only two-tower's runs")
    ap.add_argument("--seeds", default="1,2,3", help="seeds, for run prefixes ending in -s")
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    warm, cold = f"warm/recall@{args.k}", f"cold/recall@{args.k}"
    hybrid = arm_values(run_dirs(args.hybrid, seeds), [warm, cold])
    rows = [compare("ids", warm, hybrid[warm], arm_values(run_dirs(args.ids, seeds), [warm])[warm]),
            compare("content", cold, hybrid[cold], arm_values(run_dirs(args.content, seeds), [cold])[cold])]
    rows[0]["verdict"] = verdict(rows[0], "within")
    rows[1]["verdict"] = verdict(rows[1], "above")
    print(f"hybrid {args.hybrid}; ids {args.ids}; content {args.content}; seeds {args.seeds}\n")
    print("| slice | hybrid | other | p (seeds, Welch) | users | paired diff [95% CI] | p (t) | p (Wilcoxon) | bar |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(fmt(row))


if __name__ == "__main__":
    main()
