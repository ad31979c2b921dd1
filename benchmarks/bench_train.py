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

Each data set is measured in a fresh Python process, the 1x and the 10x tables in
turn, for several rounds (``--rounds``, default 3, at 1M ratings; ``--rounds-20m``,
default 1, at 20M, where one process takes minutes); the summary gives medians
over rounds with their range, and the 10x/1x ratio as the median of each round's
ratio. The ml-100k comparison runs each method once per round in turn, and its
speed-up is the median of each round's ratio. On a shared machine readings drift
by a third between processes (memory layout) and over minutes (neighbours):
one process would not tell a flat step from a slow one, and pairing neighbours
in time keeps the slow spells out of the ratios (not out of the absolute rates).

Targets on a 2-core CPU: >= 5M ratings/s for MF d=64 at 20M ratings, >= 3x
Surprise's throughput, epoch time linear in ratings and flat in table rows.

Batches of 4,096 ratings by default (``--batch-size``). A step's gathered rows
and their updates then take 1 MB per array (d=64); at 32,768 they take 8 MB per
array, and the step's passes over them no longer stay in the caches (2 MB of L2
and 32 MB of L3 on the machine measured, beside 42 MB of tables). Measured on a
2-core CPU at 20M ratings, 1x tables (M ratings/s, batch 4,096 / 32,768, one run
of each): uniform SGD 13.1 / 9.9, uniform lazy Adam 3.6 / 2.7, MD SGD 4.7 / 4.2;
MD lazy Adam, whose step does more work, goes the other way (3.0 / 3.1).

Usage::

    python benchmarks/bench_train.py                     # full run (about 15 minutes, ~6 GB of memory)
    python benchmarks/bench_train.py --quick             # 1M ratings, one round (about 2 minutes)
    python benchmarks/bench_train.py --rounds-20m 3      # medians at 20M too (about 30 minutes)
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

    state, losses = run(state, data, train.epoch_order(0, 0, n, batch_size))[:2]  # compile + warm up
    losses.block_until_ready()
    times = []
    for epoch in range(1, (epochs or timed_epochs(n)) + 1):
        order = train.epoch_order(0, epoch, n, batch_size)
        start = time.perf_counter()
        state, losses = run(state, data, order)[:2]
        losses.block_until_ready()
        times.append(time.perf_counter() - start)
    assert np.isfinite(np.asarray(losses)).all()
    return min(times), n / min(times)


def epoch_throughput(ratings, kind_alpha, opt_name, sparse, batch_size, epochs=None):
    import jax
    import jax.numpy as jnp

    from mdcf import models, train

    model = models.build_model(ratings, "mf", dim=64, alpha=kind_alpha, blocks=8)
    opt = train.optimizer(opt_name, 1e-3, sparse=sparse)
    n = len(ratings)
    epoch = train.make_epoch_fn(lambda l2: train.make_train_step(model, opt, l2=l2), n, batch_size)
    l2 = jnp.asarray(0.05, jnp.float32)
    run = lambda state, data, order: epoch(state, data, order, l2)  # noqa: E731
    data = train.pack(train.by_user(model.encode(ratings)))
    state = train.init_state(jax.random.key(0), model, opt)
    return best_epoch(run, state, data, n, batch_size, epochs)


def bare_throughput(ratings, batch_size, epochs=None):
    """The memory traffic of an SGD step alone, with no mdcf code but the batch's read: per batch, gather
    the user and item rows of two plain tables, take a dot-product error, and
    scatter-add both updates back (SGD on the mean squared error). Its 10x / 1x ratio is what the memory
    hierarchy alone costs when tables outgrow the caches."""
    import jax
    import jax.numpy as jnp

    from mdcf import train

    # The same data layout as mdcf's epochs: one int32 [n, 3] array (user, item, rating bits), train.Packed.
    data = train.pack(train.by_user({"users": ratings.users, "items": ratings.items, "ratings": ratings.ratings}))

    @partial(jax.jit, donate_argnums=0)
    def run(tables, data, order):
        def body(tables, index):
            user_table, item_table = tables
            batch = train.unpack(data, index)
            u, i, r = batch["users"], batch["items"], batch["ratings"]
            eu, ei = user_table[u], item_table[i]
            err = (jnp.sum(eu * ei, axis=-1) - r)[:, None]
            lr = 1e-3 / index.shape[0]  # SGD on the batch's mean squared error, as mdcf's steps
            return (user_table.at[u].add(-lr * err * ei), item_table.at[i].add(-lr * err * eu)), jnp.mean(err)

        return jax.lax.scan(body, tables, order)

    key_u, key_i = jax.random.split(jax.random.key(0))
    tables = (0.1 * jax.random.normal(key_u, (ratings.n_users, 64)), 0.1 * jax.random.normal(key_i, (ratings.n_items, 64)))
    return best_epoch(run, tables, data, len(ratings), batch_size, epochs)


def surprise_vs_mdcf(data_dir, rounds: int):
    """Rows ``(label, fit seconds per round, test RMSE)``, Surprise's SVD first (seconds
    NaN when it is not installed), then mdcf's MF, all timed once per round in turn;
    and the number of training ratings."""
    from mdcf import data, models, train

    ratings = data.load_movielens("ml-100k", data_dir=data_dir, verbose=False)
    train_part, test = data.split(ratings, "random", 0.1, seed=0)
    test_frame = test.to_dataframe()
    try:
        import surprise

        frame = train_part.to_dataframe()[["user", "item", "rating"]]
        trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(1, 5))).build_full_trainset()
    except ImportError:
        surprise = None

    def surprise_svd():
        algo = surprise.SVD(n_factors=64, n_epochs=20, random_state=0)
        start = time.perf_counter()
        algo.fit(trainset)
        seconds = time.perf_counter() - start
        pred = np.array([algo.predict(u, i).est for u, i in zip(test_frame["user"], test_frame["item"])])
        return seconds, float(np.sqrt(np.mean((pred - test_frame["rating"].to_numpy()) ** 2)))

    def mdcf_mf(kwargs):
        def run():
            model = models.build_model(train_part, "mf", dim=64)
            result = train.fit(model, train_part, validation=None, epochs=20, progress=False, patience=None, **kwargs)
            seconds = sum(h["seconds"] for h in result.history[1:]) * 20 / 19  # excludes the compile epoch
            return seconds, train.evaluate(model, result.params, test)["rmse"]
        return run

    if surprise is None:
        label = "Surprise SVD: scikit-surprise not installed (pip install '.[bench]')"
        methods = [(label, lambda: (float("nan"), float("nan")))]
    else:
        methods = [("Surprise SVD (Cython SGD, d=64, 20 epochs, defaults)", surprise_svd)]
    methods += [
        ("mdcf MF (d=64, 20 epochs, fit defaults: Adam, batch 2048)", mdcf_mf({})),
        ("mdcf MF (d=64, 20 epochs, row-sparse SGD lr 0.05, batch 2048)",
         mdcf_mf({"optimizer_name": "sgd", "learning_rate": 0.05, "sparse": True})),
    ]
    seconds = {label: [] for label, _ in methods}
    rmse = {}
    for _ in range(rounds):
        for label, method in methods:
            took, rmse[label] = method()
            seconds[label].append(took)
    return [(label, seconds[label], rmse[label]) for label, _ in methods], len(train_part)


VARIANTS = [  # (label, alpha, optimiser, sparse); optimiser None: the bare loop
    ("uniform, SGD", 0.0, "sgd", True),
    ("uniform, row-wise Adagrad", 0.0, "rowwise_adagrad", True),
    ("uniform, lazy Adam", 0.0, "adam", True),
    ("MD alpha 0.3, SGD", 0.3, "sgd", True),
    ("MD alpha 0.3, lazy Adam", 0.3, "adam", True),
    (BARE, 0.0, None, True),
]
DENSE = ("uniform, dense Adam", 0.0, "adam", False)


def measure(scale: int, n: int, batch_size: int, with_dense: bool, tag: str) -> dict[str, float]:
    """Every variant's best-epoch throughput (ratings/s) on one synthetic data set, in
    this process; a line per variant on stderr as it finishes."""
    import sys

    from mdcf import data

    ratings, _ = data.synthetic(USERS * scale, ITEMS * scale, n, rank=16, user_zipf=0.8, item_zipf=1.0,
                                noise=0.7, seed=0)
    rates = {}
    for label, alpha, opt_name, sparse in VARIANTS + ([DENSE] if with_dense else []):
        if opt_name is None:
            seconds, rate = bare_throughput(ratings, batch_size)
        else:
            seconds, rate = epoch_throughput(ratings, alpha, opt_name, sparse, batch_size)
        rates[label] = rate
        print(f"{tag:<8} {n:>11,} {USERS * scale:>9,} x {ITEMS * scale:>7,} | {label:<28} | {seconds:>8.2f} "
              f"{rate / 1e6:>11.2f}", file=sys.stderr, flush=True)
    return rates


def in_fresh_process(scale: int, n: int, batch_size: int, with_dense: bool, tag: str) -> dict:
    """:func:`measure` in a new Python process (fresh allocations, so that one process's
    memory layout does not decide a comparison): ``{"platform": ..., "rates": {label: ratings/s}}``."""
    import json
    import subprocess
    import sys

    command = [sys.executable, os.path.abspath(__file__), "--worker", f"{scale},{n},{int(with_dense)},{tag}",
               "--batch-size", str(batch_size)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_train: the measurement at {n:,} ratings, {scale}x tables "
                         f"failed (exit status {done.returncode}); its error is printed above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(values) -> str:
    values = sorted(values)
    median = float(np.median(values))
    spread = f" ({values[0]:.2f}-{values[-1]:.2f})" if len(values) > 1 else ""
    return f"{median:.2f}{spread}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M ratings only, one round")
    parser.add_argument("--batch-size", type=int, default=4096, help="ratings per step (default 4096)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="fresh-process rounds at 1M ratings and for ml-100k (default 3, 1 with --quick)")
    parser.add_argument("--rounds-20m", type=int, default=1,
                        help="fresh-process rounds at 20M ratings (default 1: each process takes minutes)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # scale,n,with_dense,tag: one measurement, its rates as JSON on stdout
        import json

        scale, n, with_dense, tag = args.worker.split(",", 3)
        import jax

        rates = measure(int(scale), int(n), args.batch_size, bool(int(with_dense)), tag)
        print(json.dumps({"platform": jax.devices()[0].platform, "rates": rates}))
        return
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if rounds < 1 or args.rounds_20m < 1:
        parser.error(f"--rounds and --rounds-20m must be at least 1, got {rounds} and {args.rounds_20m}")

    from importlib.metadata import version

    # This process only starts the measuring ones (without JAX of its own) and runs the ml-100k part last.
    sizes = [1_000_000] if args.quick else [1_000_000, 20_000_000]
    print(f"bench_train: MF d=64, batch {args.batch_size}, {os.cpu_count()} CPUs, jax {version('jax')}; "
          "the best epoch of each fresh process", flush=True)
    print(f"{'round':<8} {'ratings':>11} {'users x items':>19} | {'embedding, optimiser':<28} | "
          f"{'epoch s':>8} {'M ratings/s':>11}", flush=True)
    rates: dict[tuple, list[float]] = {}  # (n, scale, label) -> M ratings/s per round
    platforms = set()
    for n in sizes:
        for round_ in range(args.rounds_20m if n == 20_000_000 else rounds):
            for scale in (1, 10):  # 1x then 10x in turn: each round's ratio compares neighbours in time
                found = in_fresh_process(scale, n, args.batch_size, n == sizes[0] and scale == 1, f"{round_ + 1}")
                platforms.add(found["platform"])
                for label, rate in found["rates"].items():
                    rates.setdefault((n, scale, label), []).append(rate / 1e6)

    print(f"\nM ratings/s on {', '.join(sorted(platforms))}, median over rounds (min-max); 10x/1x: median of each "
          f"round's ratio, 1.00 = flat in table rows ('{BARE}': what the memory hierarchy alone costs)")
    print(f"{'ratings':>11} {'rounds':>6} | {'embedding, optimiser':<28} | {'1x tables':>17} {'10x tables':>17} "
          f"{'10x/1x':>17}")
    for n in sizes:
        for label, *_ in VARIANTS + [DENSE]:
            one = rates.get((n, 1, label))
            if not one:
                continue
            ten = rates.get((n, 10, label), [])
            ratio = summarise([b / a for a, b in zip(one, ten)]) if ten else "-"
            print(f"{n:>11,} {len(one):>6} | {label:<28} | {summarise(one):>17} "
                  f"{summarise(ten) if ten else '-':>17} {ratio:>17}")
    if 20_000_000 in sizes:
        rate = float(np.median(rates[20_000_000, 1, "uniform, SGD"]))
        print(f"target: >= 5M ratings/s for uniform MF d=64 at 20M ratings: {rate:.2f} "
              f"({'met' if rate >= 5 else 'missed'})")
    print(f"\nml-100k, seeded 90/10 split: fit throughput at the same dimension and epochs; {rounds} round(s), "
          "each method once per round in turn: median fit seconds, and x Surprise as the median of each round's ratio")
    print(f"{'method':<66} | {'fit s':>6} {'ratings/s':>10} {'x Surprise':>17} {'test RMSE':>9}")
    rows, n_train = surprise_vs_mdcf(args.data_dir, rounds)
    reference = rows[0][1]
    for label, seconds, rmse in rows:
        median = float(np.median(seconds))
        speedup = summarise([base / took for base, took in zip(reference, seconds)])
        print(f"{label:<66} | {median:>6.2f} {20 * n_train / median:>10,.0f} {speedup:>17} {rmse:>9.4f}")
    if np.isfinite(reference).all():  # Surprise installed
        fit_defaults = summarise([base / took for base, took in zip(reference, rows[1][1])])
        print(f"target: mdcf fit defaults >= 3x Surprise SVD's throughput: {fit_defaults}")

if __name__ == "__main__":
    main()
