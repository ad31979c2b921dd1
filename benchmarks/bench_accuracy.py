"""Test RMSE on ml-100k with default settings, over seeded random 90/10 splits.

For each split seed: mdcf MF and NeuMF with ``fit``'s defaults (validation
carved from the training part, never from test, choosing the number of epochs;
then the refit on all of the training part), and Surprise's SVD with its
defaults and tuned (100 factors, 40 epochs, reg 0.05) when scikit-surprise is
installed (``pip install ".[bench]"``). Prints mean and standard deviation over
the seeds, and each seed's value.

Usage::

    python benchmarks/bench_accuracy.py             # seeds 0, 1, 2
    python benchmarks/bench_accuracy.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    from mdcf import data, models, train

    ratings = data.load_movielens("ml-100k", data_dir=args.data_dir, verbose=False)
    try:
        import surprise
    except ImportError:
        surprise = None
    results: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}

    def record(name, rmse, elapsed):
        results.setdefault(name, []).append(rmse)
        seconds.setdefault(name, []).append(elapsed)

    for seed in args.seeds:
        train_part, test = data.split(ratings, "random", 0.1, seed=seed)
        for label, kind, extra in (
            ("mdcf MF (defaults: d=64, Adam 3e-3, l2 0.1, refit)", "mf", {}),
            ("mdcf MF, MD embeddings (alpha 0.3, 8 blocks, d0=64)", "mf", {"alpha": 0.3}),
            ("mdcf NeuMF (defaults: d=64, MLP 128-128-32)", "neumf", {}),
        ):
            start = time.perf_counter()
            model = models.build_model(train_part, kind, **extra)
            result = train.fit(model, train_part, progress=False, seed=seed)
            rmse = train.evaluate(model, result.params, test)["rmse"]
            record(label, rmse, time.perf_counter() - start)
        if surprise is not None:
            frame = train_part.to_dataframe()[["user", "item", "rating"]]
            trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(1, 5))).build_full_trainset()
            test_frame = test.to_dataframe()
            for label, kwargs in (
                ("Surprise SVD (defaults: 100 factors, 20 epochs)", {}),
                ("Surprise SVD (tuned: 100 factors, 40 epochs, reg 0.05)", {"n_epochs": 40, "reg_all": 0.05}),
            ):
                start = time.perf_counter()
                algo = surprise.SVD(random_state=seed, **kwargs)
                algo.fit(trainset)
                pred = np.array([algo.predict(u, i).est for u, i in zip(test_frame["user"], test_frame["item"])])
                rmse = float(np.sqrt(np.mean((pred - test_frame["rating"].to_numpy()) ** 2)))
                record(label, rmse, time.perf_counter() - start)
    print(f"ml-100k test RMSE over split seeds {args.seeds} (random 90/10; validation from train only)")
    print(f"{'method':<58} {'mean':>7} {'std':>7}  {'per seed':<26} {'s/run':>6}")
    for name, values in results.items():
        per_seed = " ".join(f"{v:.4f}" for v in values)
        print(f"{name:<58} {np.mean(values):>7.4f} {np.std(values):>7.4f}  {per_seed:<26} {np.mean(seconds[name]):>6.1f}")
    if surprise is None:
        print("(Surprise rows skipped: scikit-surprise is not installed)")


if __name__ == "__main__":
    main()
