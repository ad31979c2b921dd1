"""Alpha ablation at a fixed budget: popular against rare items (the paper's Fig. 3c/3f).

The paper used 2**21 parameters on MovieLens; the budget here keeps its
parameters per embedding row (2**21 / (283,228 users + 53,889 movies), about
6.2), rounded to the nearest uniform model: the total size of the uniform
model at d = 6, so that alpha 0 meets the budget exactly and every MD model
lands within 1% below it. For each alpha (0 is uniform) the same l2 grid is
tuned on validation; the script reports train and test MSE on the most popular
and the rarest third of items and writes ``alpha_ablation.png/.pdf``.

Examples::

    python experiments/alpha_ablation.py                   # ml-100k, MF
    python experiments/alpha_ablation.py --seeds 0 1 2 --alphas 0 0.1 0.2 0.3 0.4 0.5 0.6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402

from mdcf import data, plots, sweep  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="mf", choices=("mf", "gmf", "mlp", "neumf"))
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--budget", type=int, default=None, help="total parameters (default: the scaled paper budget)")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--l2", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", default=None)
    parser.add_argument("--fast", action="store_true", help="tiny settings for smoke tests (also $MDCF_FAST=1)")
    parser.add_argument("--no-progress", action="store_true")
    sweep.add_device_arguments(parser)
    args = parser.parse_args(argv)
    mesh = sweep.mesh_from_arguments(args)  # before anything else runs on a device
    fast = args.fast or sweep.fast_mode()

    try:
        sweep.check_dataset(args.dataset)
    except ValueError as err:
        print(f"alpha_ablation.py: error: {err}", file=sys.stderr)
        return 2
    try:  # before any file is written: a data set that fails to load leaves no output folder behind
        ratings = sweep.load_dataset(args.dataset)
    except (OSError, ValueError, data.DatasetUnavailableError) as err:
        print(f"alpha_ablation.py: error: cannot load {args.dataset}: {err}", file=sys.stderr)
        return 2
    budget = args.budget
    if budget is None:
        budget = sweep.ablation_model_budget(ratings, args.model)
    try:
        config = sweep.SweepConfig(
            dataset=args.dataset, model=args.model, budgets=(budget,), alphas=tuple(args.alphas), blocks=args.blocks,
            seeds=tuple(args.seeds), l2_grid=tuple(args.l2), epochs=args.epochs,
        )
    except ValueError as err:  # an argument out of range: a usage error, not a traceback
        print(f"alpha_ablation.py: error: {err}", file=sys.stderr)
        return 2
    if fast:
        config = sweep.SweepConfig(dataset=args.dataset, model=args.model, budgets=(budget,), alphas=(0.0, 0.4),
                                   blocks=4, seeds=(0,), l2_grid=(0.1,), epochs=2, patience=1,
                                   base_dims=(32, 16, 8, 4))
    name = f"{Path(args.dataset).stem}-{args.model}" + ("-fast" if fast else "")
    out = Path(args.out or Path("results") / "alpha_ablation" / name)
    results = sweep.run_sweep(config, out, ratings=ratings, progress=not args.no_progress, mesh=mesh)
    if jax.process_index() != 0:
        return 0  # process 0 reports and plots
    print(f"\n{args.dataset}, {args.model}, budget {budget:,} parameters: MSE by item popularity "
          "(each cell's best l2 on validation)")
    print(sweep.ablation_runs_table(results))
    if not sweep.select(results):
        print(f"\nresults: {out / 'results.csv'}\nno finished run to plot")
        return 0
    figure = plots.alpha_ablation(results, title=f"{args.dataset} {args.model}, {budget:,} parameters")
    paths = plots.save(figure, out / "alpha_ablation")
    print(f"\nresults: {out / 'results.csv'}\nplot:    {paths[0]} (and .pdf)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
