"""Print the tables of finished (or partial) sweeps from their ``results.csv``.

For a budget sweep: uniform against the best MD alpha per budget, and the paper's
claim checked with the per-seed paired difference. For an alpha ablation: train
and test MSE on the popular and rare thirds of items, mean +- std over seeds.

Example::

    python experiments/report.py results/budget_sweep/ml-100k-mf results/alpha_ablation/ml-100k-mf
    python experiments/report.py --markdown results/budget_sweep/ml-100k-mf   # tables for RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mdcf import sweep


def ablation_table(rows) -> str:
    chosen = sweep.select(rows)
    lines = [f"{'alpha':>6} {'params':>8} | {'train popular':>14} {'train rare':>14} | {'test popular':>14} "
             f"{'test rare':>14} | {'test all':>14}"]
    for alpha in sorted({r["alpha"] for r in chosen}):
        cell = [r for r in chosen if r["alpha"] == alpha]
        stat = lambda key: f"{np.mean([r[key] for r in cell]):.4f}+-{np.std([r[key] for r in cell]):.4f}"  # noqa: E731
        lines.append(f"{alpha:>6g} {int(np.mean([r['params'] for r in cell])):>8,} | {stat('train_mse_popular'):>14} "
                     f"{stat('train_mse_rare'):>14} | {stat('test_mse_popular'):>14} {stat('test_mse_rare'):>14} | "
                     f"{stat('test_mse'):>14}")
    return "\n".join(lines)


def _stat(cell, key) -> str:
    values = [r[key] for r in cell]
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def markdown_sweep(rows) -> str:
    """Every (budget, alpha) cell's test MSE (mean ± std over seeds, best l2 on
    validation), and the validation-chosen MD alpha against uniform, paired per seed."""
    chosen = sweep.select(rows)
    alphas = sorted({r["alpha"] for r in chosen})
    names = ["uniform" if a == 0 else f"MD α={a:g}" for a in alphas]
    lines = ["| budget | exact params | " + " | ".join(names) + " | MD (α on validation) − uniform, per seed |",
             "|---:|---|" + "---|" * len(alphas) + "---|"]
    for budget in sorted({r["budget"] for r in chosen}):
        cells = {a: [r for r in chosen if r["budget"] == budget and r["alpha"] == a] for a in alphas}
        cells = {a: c for a, c in cells.items() if c}
        params = sorted({r["params"] for c in cells.values() for r in c})
        span = f"{params[0]:,}" if len(params) == 1 else f"{params[0]:,} – {params[-1]:,}"
        row = [f"{budget:,}", span] + [_stat(cells[a], "test_mse") if a in cells else "–" for a in alphas]
        md = {a: c for a, c in cells.items() if a > 0}
        if md and 0.0 in cells:
            alpha = sweep.best_alpha(md)
            paired = sweep.paired_difference(md[alpha], cells[0.0])
            row.append(f"α={alpha:g}: {np.mean(paired):+.4f} ± {np.std(paired):.4f} (n={len(paired)})")
        else:
            row.append("–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown_ablation(rows) -> str:
    chosen = sweep.select(rows)
    keys = ("train_mse_popular", "train_mse_rare", "test_mse_popular", "test_mse_rare", "test_mse")
    lines = ["| α | params | train MSE popular | train MSE rare | test MSE popular | test MSE rare | test MSE all "
             "| test popular − α=0, per seed | test rare − α=0, per seed |",
             "|---:|---:|---|---|---|---|---|---|---|"]
    base = [r for r in chosen if r["alpha"] == 0]
    for alpha in sorted({r["alpha"] for r in chosen}):
        cell = [r for r in chosen if r["alpha"] == alpha]
        paired = []
        for key in ("test_mse_popular", "test_mse_rare"):
            diffs = sweep.paired_difference(cell, base, key)
            paired.append(f"{np.mean(diffs):+.4f} ± {np.std(diffs):.4f}" if diffs and alpha != 0 else "–")
        lines.append(f"| {alpha:g} | {int(np.mean([r['params'] for r in cell])):,} | "
                     + " | ".join([_stat(cell, k) for k in keys] + paired) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="sweep output folders (holding results.csv)")
    parser.add_argument("--markdown", action="store_true", help="markdown tables with mean ± std over seeds")
    args = parser.parse_args(argv)
    missing = [folder for folder in args.folders if not (Path(folder) / "results.csv").is_file()]
    if missing:
        parser.error(f"no results.csv in {', '.join(missing)} (give the --out folder of a sweep)")
    for folder in args.folders:
        rows = sweep.read_results(Path(folder) / "results.csv")
        ok = [r for r in rows if r["status"] == "ok"]
        seeds = sorted({r["seed"] for r in ok})
        print(f"== {folder}: {len(ok)} runs, seeds {seeds}")
        ablation = len({r["budget"] for r in ok}) == 1
        if args.markdown:
            print(markdown_ablation(rows) if ablation else markdown_sweep(rows))
        elif ablation:
            print(ablation_table(rows))
        else:
            print(sweep.summary_table(rows))
            print(sweep.claim_check(rows))
            print(sweep.fraction_check(rows))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
