"""Uniform against mixed-dimension embeddings at exactly equal parameter budgets.

For each budget (by default the sizes of the uniform model at d = 2, 4, 8, 16, 32, 64)
and each alpha (0 is uniform), trains the model at a total parameter count
within 1% below the budget, tunes the same l2 grid on a validation split carved
from the training data, and reports each cell's best-validation run. Writes
``results.csv`` (one row per run; resumable), ``config.json`` and the figure
``budget_curves.png/.pdf`` to the output folder, and prints a table of uniform
against the best MD alpha per budget.

Examples::

    python experiments/budget_sweep.py                              # ml-100k, MF (about 3 minutes)
    python experiments/budget_sweep.py --model neumf --seeds 0 1 2
    python experiments/budget_sweep.py --dataset synthetic --dims 1 4 16
    python experiments/budget_sweep.py --methods uniform md hash qr lowrank tt md-qr --dims 2 8 32
    python experiments/budget_sweep.py --budget-unit bytes --methods uniform md uniform-int8 md-int8
    MDCF_FAST=1 python experiments/budget_sweep.py                  # a tiny smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402

from mdcf import data, plots, sweep  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    defaults = sweep.SweepConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=defaults.dataset, help="MovieLens name, ratings file or 'synthetic'")
    parser.add_argument("--model", default=defaults.model, choices=("mf", "gmf", "mlp", "neumf"))
    parser.add_argument("--dims", type=int, nargs="+", default=list(defaults.dims),
                        help="uniform dimensions whose model sizes are the budgets")
    parser.add_argument("--budgets", type=int, nargs="+", default=[], help="explicit total parameter budgets")
    parser.add_argument("--alphas", type=float, nargs="+", default=list(defaults.alphas))
    parser.add_argument("--methods", nargs="+", default=list(defaults.methods), choices=sweep.METHODS,
                        metavar="METHOD", help=f"ways to shrink the tables, of {' '.join(sweep.METHODS)} (default: md; alpha 0 in "
                        "--alphas or 'uniform' here adds the uniform baseline); each method is paired with uniform "
                        "and MD per seed")
    parser.add_argument("--factors", type=int, nargs="+", default=list(defaults.factors),
                        help="settings of hash, lowrank and tt (base dimension over the uniform one) and of qr "
                             "(collisions), tuned on validation")
    parser.add_argument("--budget-unit", choices=("params", "bytes"), default=defaults.budget_unit,
                        help="budgets count parameters or stored bytes (the int8 methods need bytes)")
    parser.add_argument("--blocks", type=int, default=defaults.blocks)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--l2", type=float, nargs="+", default=list(defaults.l2_grid), help="tuning grid")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(defaults.learning_rates))
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--out", default=None, help="output folder (default results/budget_sweep/<dataset>-<model>)")
    parser.add_argument("--fast", action="store_true", help="tiny settings for smoke tests (also $MDCF_FAST=1)")
    parser.add_argument("--no-progress", action="store_true")
    sweep.add_device_arguments(parser)
    return parser.parse_args(argv)


def config_from(args) -> sweep.SweepConfig:
    sweep.check_dataset(args.dataset)
    config = sweep.SweepConfig(
        dataset=args.dataset, model=args.model, budgets=tuple(args.budgets), dims=tuple(args.dims),
        alphas=tuple(args.alphas), blocks=args.blocks, seeds=tuple(args.seeds), l2_grid=tuple(args.l2),
        learning_rates=tuple(args.learning_rates), epochs=args.epochs, patience=args.patience,
        batch_size=args.batch_size, methods=tuple(args.methods), factors=tuple(args.factors),
        budget_unit=args.budget_unit,
    )
    if args.fast or sweep.fast_mode():
        config = sweep.SweepConfig(
            dataset=config.dataset, model=config.model, dims=(2, 8), alphas=(0.0, 0.4), blocks=4,
            seeds=(0,), l2_grid=(0.1,), epochs=2, patience=1, batch_size=config.batch_size,
            base_dims=(32, 16, 8, 4), methods=config.methods, factors=config.factors[:1],
            budget_unit=config.budget_unit,
        )
    return config


def main(argv=None) -> int:
    args = parse(argv)
    mesh = sweep.mesh_from_arguments(args)  # before anything else runs on a device
    try:
        config = config_from(args)
    except ValueError as err:  # an argument out of range: a usage error, not a traceback
        print(f"budget_sweep.py: error: {err}", file=sys.stderr)
        return 2
    fast = args.fast or sweep.fast_mode()
    others = [m for m in config.methods if m not in ("uniform", "md")]
    name = (f"{Path(config.dataset).stem}-{config.model}" + ("-methods" if others else "")
            + ("-bytes" if config.budget_unit == "bytes" else "") + ("-fast" if fast else ""))
    out = Path(args.out or Path("results") / "budget_sweep" / name)
    try:  # before any file is written: a data set that fails to load leaves no output folder behind
        ratings = sweep.load_dataset(config.dataset, config.synthetic)
    except (OSError, ValueError, data.DatasetUnavailableError) as err:
        print(f"budget_sweep.py: error: cannot load {config.dataset}: {err}", file=sys.stderr)
        return 2
    rows = sweep.run_sweep(config, out, ratings=ratings, progress=not args.no_progress, mesh=mesh)
    if jax.process_index() != 0:
        return 0  # process 0 reports and plots
    unit = "byte" if config.budget_unit == "bytes" else "parameter"
    if others:
        print(f"\n{config.dataset}, {config.model}: test MSE of each method at equal {unit} budgets (each "
              f"method's setting and l2 chosen on validation; seeds {list(config.seeds)})")
        print(sweep.methods_table(rows))
    if "md" in config.methods:
        print(f"\n{config.dataset}, {config.model}: uniform against MD at equal {unit} budgets "
              f"(each cell's best l2 on validation; seeds {list(config.seeds)})")
        print(sweep.summary_table(rows))
        print("\nthe paper's claim (MD matches uniform with up to 8x fewer parameters), on these runs:")
        print(sweep.claim_check(rows))
        print(sweep.fraction_check(rows))
    infeasible = [r for r in rows if str(r.get("status", "")).startswith("infeasible")]
    if infeasible:
        cells = sorted({(r["budget"], r["method"], r["alpha"], r["factor"]): r for r in infeasible}.items())
        (budget, method, alpha, factor), first = cells[0]
        setting = f" alpha {alpha:g}" if alpha else f" factor {factor}" if factor else ""
        print(f"no model fits {len(cells)} (budget, method, setting) cells, e.g. budget {budget:,} {method}"
              f"{setting}: {first['status']}")
    if not sweep.select(rows):
        print(f"\nresults: {out / 'results.csv'}\nno finished run to plot")
        return 0
    if others:
        figure = plots.method_curves(rows, title=f"{config.dataset} {config.model}: test MSE vs {unit}s, per method")
        paths = plots.save(figure, out / "method_curves")
    else:
        figure = plots.budget_curves(rows, title=f"{config.dataset} {config.model}: test MSE vs parameters")
        paths = plots.save(figure, out / "budget_curves")
    print(f"\nresults: {out / 'results.csv'}\nplot:    {paths[0]} (and .pdf)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
