"""DLRM on click data: uniform tables against MD tables (one block per field) at equal budgets.

The budgets are the embedding sizes of uniform tables at d = 2, 4, 8, 16, 32; at each,
MD tables with base dimension 32 and temperatures 0.1-0.4 get the same number of
embedding parameters (projections counted, within 1% below). Every run trains with
Amsgrad for one epoch (batch 1,024 and learning rate 3e-3 by default, sized for the
synthetic set; the paper's 4,096 and 1e-3 suit a Criteo file), keeps its best
validation epoch and is scored on the test part. Writes
``results.csv`` (one row per run; resumable), ``config.json`` and the figures
``ctr_curves.png/.pdf`` (test metrics against embedding parameters) and
``ctr_learning_curves.png/.pdf`` (training logloss along training at the smallest
budget) to the output folder, and prints a table with each MD cell's accuracy
difference to uniform at the same budget, paired by seed. The paper's control,
blocks cut by frequency across all fields (``md-frequency``), runs beside each MD
cell (``--no-control`` to skip it). ``--methods`` adds the other ways to shrink the
tables at the same budgets, per field (``hash``, ``qr``, ``lowrank``, ``tt`` at each of
``--factors``; see :mod:`mdcf.sweep.ctr`): a table of every method at its setting chosen
on validation, and ``ctr_method_curves.png/.pdf``. ``--budget-unit bytes`` counts the
budgets in embedding bytes and admits ``uniform-int8`` and ``md-int8`` (trained in
float32, rows quantised to int8 with a float32 scale and offset each after training).

Examples::

    python experiments/ctr_sweep.py                                  # synthetic Criteo-shaped clicks
    python experiments/ctr_sweep.py --data ~/criteo/train.txt        # the Kaggle file (not downloaded)
    python experiments/ctr_sweep.py --dims 2 32 --alphas 0.3 --seeds 0
    python experiments/ctr_sweep.py --methods uniform md hash qr lowrank tt --factors 2 4
    python experiments/ctr_sweep.py --budget-unit bytes --methods uniform md uniform-int8 md-int8 --dims 4 8
    MDCF_FAST=1 python experiments/ctr_sweep.py                      # a tiny smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from mdcf import plots, sweep  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    defaults = sweep.CTRSweepConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="a Criteo-format file (default: the synthetic set)")
    parser.add_argument("--threshold", type=int, default=defaults.threshold, help="frequency threshold of a file")
    parser.add_argument("--examples", type=int, default=defaults.examples, help="synthetic examples")
    parser.add_argument("--cap", type=int, default=defaults.cap, help="synthetic cardinality cap per field")
    parser.add_argument("--fields", type=int, default=defaults.fields, help="synthetic fields (Kaggle's first)")
    parser.add_argument("--dims", type=int, nargs="+", default=list(defaults.dims),
                        help="uniform dimensions whose table sizes are the budgets")
    parser.add_argument("--alphas", type=float, nargs="+", default=list(defaults.alphas))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--base-dim", type=int, default=defaults.base_dim, help="MD output dimension d0")
    parser.add_argument("--no-control", action="store_true", help="skip the frequency-blocked control")
    parser.add_argument("--methods", nargs="+", default=list(defaults.methods), choices=sweep.CTR_METHODS,
                        help="what runs at each budget (default: uniform md)")
    parser.add_argument("--factors", type=int, nargs="+", default=list(defaults.factors),
                        help="settings of hash, lowrank, tt (base dimension over d) and qr (collisions)")
    parser.add_argument("--budget-unit", choices=("params", "bytes"), default=defaults.budget_unit,
                        help="budgets in embedding parameters or bytes (the int8 methods need bytes)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--out", default=None, help="output folder (default results/ctr_sweep/<data>)")
    parser.add_argument("--fast", action="store_true", help="tiny settings for smoke tests (also $MDCF_FAST=1)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        config = sweep.CTRSweepConfig(
            dataset=args.data or "synthetic", examples=args.examples, cap=args.cap, fields=args.fields,
            threshold=args.threshold,
            dims=tuple(args.dims), alphas=tuple(args.alphas), seeds=tuple(args.seeds), base_dim=args.base_dim,
            control=not args.no_control, methods=tuple(args.methods), factors=tuple(args.factors),
            budget_unit=args.budget_unit, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate)
    except ValueError as err:
        print(f"ctr_sweep.py: error: {err}", file=sys.stderr)
        return 2
    fast = args.fast or sweep.fast_mode()
    if fast:
        config = sweep.ctr_fast_mode(config)
    name = ("synthetic" if config.dataset == "synthetic" else Path(config.dataset).stem) + ("-fast" if fast else "")
    out = Path(args.out or Path("results") / "ctr_sweep" / name)
    try:  # before any file is written: data that fails to load leaves no output folder behind
        parts = sweep.load_clicks(config)
    except (OSError, ValueError) as err:
        print(f"ctr_sweep.py: error: cannot load {config.dataset}: {err}", file=sys.stderr)
        return 2
    rows = sweep.run_ctr_sweep(config, out, parts=parts, progress=not args.no_progress)
    print(f"\n{name}: DLRM test metrics at equal embedding budgets (seeds {list(config.seeds)}; "
          f"{len(parts.train):,} training examples, {sum(parts.field_rows):,} rows in {len(parts.field_rows)} fields)")
    print(sweep.ctr_table(rows))
    others = any(r["method"] in sweep.CTR_FACTOR_METHODS + sweep.CTR_BYTES_ONLY for r in rows if r["status"] == "ok")
    if others:
        print("\nEvery method at its setting chosen on validation logloss:")
        print(sweep.ctr_methods_table(rows, unit=config.budget_unit))
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        print(f"{len(bad)} run(s) did not finish, e.g. {bad[0]['method']} d={bad[0]['budget_dim']} "
              f"alpha={bad[0]['alpha']:g}: {bad[0]['status']}")
    if not sweep.ctr_cells(rows):
        print(f"\nresults: {out / 'results.csv'}\nno finished run to plot")
        return 0
    paths = plots.save(plots.ctr_curves(rows, title=f"DLRM on {name}: uniform against MD tables"), out / "ctr_curves")
    smallest = min(key[0] for key in sweep.ctr_cells(rows))
    curves = plots.save(plots.ctr_learning_curves(rows, smallest, title=f"{name}: training at the budget of d = "
                                                  f"{smallest}"), out / "ctr_learning_curves")
    if others:
        curves_methods = plots.save(plots.ctr_method_curves(rows, title=f"DLRM on {name}: the ways to shrink tables",
                                                                    unit=config.budget_unit),
                                    out / "ctr_method_curves")
        paths.append(curves_methods[0])
    print(f"\nresults: {out / 'results.csv'}\nplot:    {paths[0]} and {curves[0]} (and .pdf)"
          + (f"; {paths[-1]}" if others else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
