"""Training throughput: epochs of MF d=64 on MovieLens-20M-shaped data, and Surprise beside mdcf.

Prints, in one run:

* epoch throughput (ratings/s, the best epoch after a compile epoch, with at
  least 5M ratings timed in all) of MF d=64 on the synthetic generator shaped
  like MovieLens-20M (138,493 users, 26,744 items) at 1M and 20M ratings, for
  uniform and MD (alpha 0.3, 8 blocks) embeddings and several optimisers,
  row-sparse unless marked dense;
* the same with 10x more users and items (throughput should stay flat:
  row-sparse steps do not depend on table sizes), beside a bare SGD
  gather/scatter loop on plain tables with no mdcf code, whose drop is what the
  memory hierarchy alone costs once the tables outgrow the caches;
* Surprise's SVD and mdcf's MF at the same dimension (64) and epochs (20) on
  ml-100k (a seeded 90/10 split): fit throughput and test RMSE side by side
  (skipped with a note if scikit-surprise is not installed: ``pip install ".[bench]"``).

Targets on a 2-core CPU: >= 5M ratings/s for MF d=64 at 20M ratings, >= 3x
Surprise's throughput, epoch time linear in ratings and flat in table rows.

Usage::

    python benchmarks/bench_train.py            # full run (several minutes, ~6 GB of memory)
    python benchmarks/bench_train.py --quick    # 1M ratings only
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import numpy as np

USERS, ITEMS = 138_493, 26_744
BARE = "bare gather/scatter, no mdcf"


def timed_epochs(n: int) -> int:
    """Epochs timed after the compile epoch (the best one counts): at least 5M
    ratings in all, so that short epochs are not read from one or two samples."""
    return max(2, -(-5_000_000 // n))


def best_epoch(run, state, data, n, batch_size, epochs=None):
    """Seconds of the fastest epoch of ``run(state, data, order) -> (state, losses, ...)``
    after a compile epoch, and the ratings per second it gives."""
    from mdcf import train

    state, losses = run(state, data, train._epoch_order(0, 0, n, batch_size))[:2]  # compile + warm up
    losses.block_until_ready()
    times = []
    for epoch in range(1, (epochs or timed_epochs(n)) + 1):
        order = train._epoch_order(0, epoch, n, batch_size)
        start = time.perf_counter()
        state, losses = run(state, data, order)[:2]
        losses.block_until_ready()
        times.append(time.perf_counter() - start)
    assert np.isfinite(np.asarray(losses)).all()
    return min(times), n / min(times)


def epoch_throughput(ratings, kind_alpha, opt_name, sparse, batch_size, epochs=None):
    import jax

    from mdcf import models, train

    model = models.build_model(ratings, "mf", dim=64, alpha=kind_alpha, blocks=8)
    opt = train.optimizer(opt_name, 1e-3, sparse=sparse)
    step = train.make_train_step(model, opt, l2=0.05)
    n = len(ratings)
    run = train._epoch_fn(step, n, batch_size, train._unroll(opt))
    data = {key: jax.numpy.asarray(value) for key, value in train._by_user(model.encode(ratings)).items()}
    state = train.init_state(jax.random.key(0), model, opt)
    return best_epoch(run, state, data, n, batch_size, epochs)


def bare_throughput(ratings, batch_size, epochs=None):
    """The memory traffic of an SGD step alone, with no mdcf code: per batch, gather
    the user and item rows of two plain tables, take a dot-product error, and
    scatter-add both updates back (SGD on the mean squared error). Its 10x / 1x ratio is what the memory
    hierarchy alone costs when tables outgrow the caches."""
    import jax
    import jax.numpy as jnp

    from mdcf import train

    codes = train._by_user({"users": ratings.users.astype(np.int32), "items": ratings.items.astype(np.int32),
                            "ratings": ratings.ratings.astype(np.float32)})
    data = {key: jnp.asarray(value) for key, value in codes.items()}

    @partial(jax.jit, donate_argnums=0)
    def run(tables, data, order):
        def body(tables, index):
            user_table, item_table = tables
            u, i, r = data["users"][index], data["items"][index], data["ratings"][index]
            eu, ei = user_table[u], item_table[i]
            err = (jnp.sum(eu * ei, axis=-1) - r)[:, None]
            lr = 1e-3 / index.shape[0]  # SGD on the batch's mean squared error, as mdcf's steps
            return (user_table.at[u].add(-lr * err * ei), item_table.at[i].add(-lr * err * eu)), jnp.mean(err)

        return jax.lax.scan(body, tables, order)

    key_u, key_i = jax.random.split(jax.random.key(0))
    tables = (0.1 * jax.random.normal(key_u, (ratings.n_users, 64)), 0.1 * jax.random.normal(key_i, (ratings.n_items, 64)))
    return best_epoch(run, tables, data, len(ratings), batch_size, epochs)


def surprise_vs_mdcf(data_dir):
    from mdcf import data, models, train

    ratings = data.load_movielens("ml-100k", data_dir=data_dir, verbose=False)
    train_part, test = data.split(ratings, "random", 0.1, seed=0)
    rows = []
    try:
        import pandas as pd
        import surprise

        frame = train_part.to_dataframe()[["user", "item", "rating"]]
        trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(1, 5))).build_full_trainset()
        algo = surprise.SVD(n_factors=64, n_epochs=20, random_state=0)
        start = time.perf_counter()
        algo.fit(trainset)
        seconds = time.perf_counter() - start
        test_frame = test.to_dataframe()
        pred = np.array([algo.predict(u, i).est for u, i in zip(test_frame["user"], test_frame["item"])])
        rmse = float(np.sqrt(np.mean((pred - test_frame["rating"].to_numpy()) ** 2)))
        rows.append(("Surprise SVD (Cython SGD, d=64, 20 epochs, defaults)", seconds, 20 * len(train_part) / seconds, rmse))
        del pd
    except ImportError:
        rows.append(("Surprise SVD: scikit-surprise not installed (pip install '.[bench]')", float("nan"), float("nan"), float("nan")))
    for label, kwargs in (
        ("mdcf MF (d=64, 20 epochs, fit defaults: Adam, batch 2048)", {}),
        ("mdcf MF (d=64, 20 epochs, row-sparse SGD lr 0.05, batch 2048)", {"optimizer_name": "sgd", "learning_rate": 0.05, "sparse": True}),
    ):
        model = models.build_model(train_part, "mf", dim=64)
        result = train.fit(model, train_part, validation=None, epochs=20, progress=False, patience=None, **kwargs)
        seconds = sum(h["seconds"] for h in result.history[1:]) * 20 / 19  # excludes the compile epoch
        rmse = train.evaluate(model, result.params, test)["rmse"]
        rows.append((label, seconds, 20 * len(train_part) / seconds, rmse))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M ratings only, fewer variants")
    parser.add_argument("--batch-size", type=int, default=32768)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    import jax

    from mdcf import data

    sizes = [1_000_000] if args.quick else [1_000_000, 20_000_000]
    variants = [  # (label, alpha, optimiser, sparse)
        ("uniform, SGD", 0.0, "sgd", True),
        ("uniform, row-wise Adagrad", 0.0, "rowwise_adagrad", True),
        ("uniform, lazy Adam", 0.0, "adam", True),
        ("MD alpha 0.3, SGD", 0.3, "sgd", True),
        ("MD alpha 0.3, lazy Adam", 0.3, "adam", True),
        (BARE, 0.0, None, True),
    ]
    print(f"bench_train: MF d=64, batch {args.batch_size}, {os.cpu_count()} CPUs, jax {jax.__version__} "
          f"on {jax.devices()[0].platform}")
    print(f"{'ratings':>11} {'users x items':>19} | {'embedding, optimiser':<28} | {'epoch s':>8} {'M ratings/s':>11}")
    rates = {}
    for scale in (1, 10):
        for n in sizes:
            ratings, _ = data.synthetic(USERS * scale, ITEMS * scale, n, rank=16, user_zipf=0.8, item_zipf=1.0,
                                        noise=0.7, seed=0)
            chosen = variants + ([("uniform, dense Adam", 0.0, "adam", False)] if n == sizes[0] and scale == 1 else [])
            for label, alpha, opt_name, sparse in chosen:
                if opt_name is None:
                    seconds, rate = bare_throughput(ratings, args.batch_size)
                else:
                    seconds, rate = epoch_throughput(ratings, alpha, opt_name, sparse, args.batch_size)
                rates[scale, n, label] = rate
                print(f"{n:>11,} {USERS * scale:>9,} x {ITEMS * scale:>7,} | {label:<28} | {seconds:>8.2f} {rate / 1e6:>11.2f}",
                      flush=True)
            del ratings
    print("\nthroughput with 10x users and items / throughput at MovieLens-20M's size (1.00 = flat;"
          f" '{BARE}': the caches' share of the drop)")
    for n in sizes:
        print(f"{n:>11,} | " + ", ".join(f"{label}: {rates[10, n, label] / rates[1, n, label]:.2f}"
                                          for label, *_ in variants))
    print("\nml-100k, seeded 90/10 split: fit throughput at the same dimension and epochs")
    print(f"{'method':<66} | {'fit s':>6} {'ratings/s':>10} {'x Surprise':>10} {'test RMSE':>9}")
    rows = surprise_vs_mdcf(args.data_dir)
    for label, seconds, rate, rmse in rows:
        print(f"{label:<66} | {seconds:>6.2f} {rate:>10,.0f} {rate / rows[0][2]:>10.2f} {rmse:>9.4f}")


if __name__ == "__main__":
    main()
