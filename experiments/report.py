"""Print the tables of finished (or partial) sweeps from their ``results.csv``.

For a budget sweep: uniform against the best MD alpha per budget, and the paper's
claim checked with the per-seed paired difference. For an alpha ablation: train
and test MSE on the popular and rare thirds of items, mean +- std over seeds.

Example::

    python experiments/report.py results/budget_sweep/ml-100k-mf results/alpha_ablation/ml-100k-mf
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="sweep output folders (holding results.csv)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        rows = sweep.read_results(Path(folder) / "results.csv")
        ok = [r for r in rows if r["status"] == "ok"]
        seeds = sorted({r["seed"] for r in ok})
        print(f"== {folder}: {len(ok)} runs, seeds {seeds}")
        if len({r["budget"] for r in ok}) == 1:
            print(ablation_table(rows))
        else:
            print(sweep.summary_table(rows))
            print(sweep.claim_check(rows))
            print(sweep.fraction_check(rows))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
