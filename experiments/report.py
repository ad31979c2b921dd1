"""Print the tables of finished (or partial) sweeps from their ``results.csv``.

For a budget sweep: uniform against the best MD alpha per budget, and the paper's
claim checked with the per-seed paired difference; with other methods, every method
at its validation-chosen setting, paired with uniform and MD per seed. For an alpha ablation: train
and test MSE on the popular and rare thirds of items, mean +- std over seeds.

Example::

    python experiments/report.py results/budget_sweep/ml-100k-mf results/alpha_ablation/ml-100k-mf
    python experiments/report.py --markdown results/budget_sweep/ml-100k-mf   # tables for RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdcf import sweep


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
        if {sweep.method_of(r) for r in ok} - {"uniform", "md"}:
            print(sweep.markdown_methods(rows) if args.markdown else sweep.methods_table(rows))
            print()
        if args.markdown:
            print(sweep.markdown_ablation(rows) if ablation else sweep.markdown_sweep(rows))
        elif ablation:
            print(sweep.ablation_table(rows))
        else:
            print(sweep.summary_table(rows))
            print(sweep.claim_check(rows))
            print(sweep.fraction_check(rows))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
