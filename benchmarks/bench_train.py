"""Training throughput: epochs of MF d=64 at the MovieLens-20M shape, and whole fits beside Surprise.

Prints, in one run:

* **epochs** (``--sections epochs``): epoch throughput (ratings/s, the best epoch
  after a compile epoch, with at least 5M ratings timed in all) of MF d=64 on the
  synthetic generator shaped like MovieLens-20M (138,493 users, 26,744 items) at 1M
  and 20M ratings, uniform and MD (alpha 0.3, 8 blocks, 1/8 of uniform's
  parameters) with several optimisers, row-sparse unless marked dense; the same
  with 10x more users and items (throughput should stay flat: row-sparse steps do
  not depend on table sizes), beside a bare SGD gather/scatter loop on plain
  tables with no mdcf code, whose drop is what the memory hierarchy alone costs
  once the tables outgrow the caches; and the seconds of a step of 16 ratings, the
  cost a step pays whatever its batch, as a share of a full step.
* **fit** (``--sections fit``): ``train.fit`` with its defaults (``validation=None,
  patience=None``, 20 epochs) against Surprise's SVD at the same dimension (64) and
  epochs, the wall clock of the whole call after a warm-up fit (compiling excluded),
  each method once per round in turn, and both models' test RMSE (a seeded 90/10
  split), on three shapes: ml-100k, an ml-1m-shaped synthetic set (6,040 x 3,706, 1M
  ratings) and an ml-20m-shaped one (138,493 x 26,744, 20M ratings); beside them,
  ``fit`` with Surprise's own update (per-rating SGD, step 0.005, reg 0.02) batched as
  row-sparse SGD; and the host's seeded shuffle of one epoch. Surprise's row is empty when scikit-surprise is not
  installed (``pip install ".[bench]"``).

Verdict lines follow each table: (1) fit's defaults at least 1.5x Surprise's
throughput at equal or better test RMSE; (2) MD at 1/8 of the parameters at least
as many ratings/s as uniform, row-sparse, with SGD and with lazy Adam; (3)
row-sparse lazy Adam's step within 1.5x of SGD's; (4) the per-step fixed cost.

Each data set is measured in a fresh Python process, the 1x and the 10x tables in
turn, for several rounds (``--rounds``, default 3, at 1M ratings and for the fits
on ml-100k and ml-1m; ``--rounds-20m``, default 1, at 20M and for the ml-20m fits,
where one process takes minutes); the summary gives medians over rounds with
their range, and ratios as the median of each round's ratio. On a shared machine
readings drift by a third between processes (memory layout) and over minutes
(neighbours): one process would not tell a flat step from a slow one, and pairing
neighbours in time keeps the slow spells out of the ratios (not out of the
absolute rates).

Batches of 4,096 ratings in the epochs section by default (``--batch-size``; the
fits use fit's default, 2,048). A step's gathered rows and their updates then
take 1 MB per array (d=64); at 32,768 they take 8 MB per array, and the step's
passes over them no longer stay in the caches (2 MB of L2 and 32 MB of L3 on the
machine measured, beside 42 MB of tables).

Usage::

    python benchmarks/bench_train.py                     # full run (about 30 minutes, ~8 GB of memory)
    python benchmarks/bench_train.py --quick             # epochs at 1M ratings, fits on ml-100k and ml-1m, one round
    python benchmarks/bench_train.py --sections fit --shapes ml-1m --rounds 5
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


def md_budget(ratings) -> int:
    """MD's embedding budget: one eighth of the uniform d=64 tables' parameters."""
    return (ratings.n_users + ratings.n_items) * 64 // 8


def epoch_throughput(ratings, md: bool, opt_name, sparse, batch_size, epochs=None, train_on=None):
    """Best-epoch ``(seconds, ratings/s)`` of MF d=64, uniform or MD (alpha 0.3, 8 blocks,
    1/8 of uniform's parameters), sized on ``ratings`` and trained on ``train_on`` (default
    ``ratings``)."""
    import jax
    import jax.numpy as jnp

    from mdcf import models, train

    sizing = dict(alpha=0.3, blocks=8, budget=md_budget(ratings)) if md else {}
    model = models.build_model(ratings, "mf", dim=64, **sizing)
    train_on = ratings if train_on is None else train_on
    opt = train.optimizer(opt_name, 1e-3, sparse=sparse)
    n = len(train_on)
    epoch = train.make_epoch_fn(lambda l2: train.make_train_step(model, opt, l2=l2), n, batch_size)
    l2 = jnp.asarray(0.05, jnp.float32)
    run = lambda state, data, order: epoch(state, data, order, l2)  # noqa: E731
    data = train.pack(train.by_user(model.encode(train_on)))
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


SHAPES = {  # name -> (users, items, ratings) of the synthetic sets; ml-100k is the real data set
    "ml-100k": None,
    "ml-1m": (6_040, 3_706, 1_000_000),
    "ml-20m": (USERS, ITEMS, 20_000_000),
}
FIT_EPOCHS = 20


def shape_ratings(shape: str, scale: float, data_dir):
    """The ratings of a shape: ml-100k from :func:`mdcf.data.load_movielens`, the others
    from the seeded synthetic generator (users, items and ratings times ``scale``)."""
    from mdcf import data

    if SHAPES[shape] is None:
        return data.load_movielens(shape, data_dir=data_dir, verbose=False)
    users, items, n = (max(2, int(round(v * scale))) for v in SHAPES[shape])
    return data.synthetic(users, items, min(n, int(0.3 * users * items)), rank=16, user_zipf=0.8, item_zipf=1.0,
                          noise=0.7, seed=0)[0]


def surprise_predictions(algo, trainset, users, items, scale: tuple[float, float]) -> np.ndarray:
    """Surprise SVD's predictions for raw ``users`` and ``items``, vectorised: its
    ``estimate`` (global mean, the known biases and, when both are known, the factors'
    dot product) clipped to the rating scale, as ``algo.predict`` gives them."""
    u = np.array([trainset._raw2inner_id_users.get(x, -1) for x in users.tolist()])
    i = np.array([trainset._raw2inner_id_items.get(x, -1) for x in items.tolist()])
    est = np.full(len(u), trainset.global_mean)
    known_u, known_i = u >= 0, i >= 0
    est[known_u] += algo.bu[u[known_u]]
    est[known_i] += algo.bi[i[known_i]]
    both = known_u & known_i
    est[both] += np.einsum("nd,nd->n", algo.pu[u[both]], algo.qi[i[both]])
    return np.clip(est, *scale)


def fit_vs_surprise(shape: str, rounds: int, scale: float, epochs: int, data_dir) -> dict:
    """Surprise's SVD against mdcf's ``train.fit`` with its defaults, MF d=64 on one shape
    (seeded 90/10 split), each timed once per round in turn after a warm-up fit of mdcf
    (compiling excluded): ``{"n_train", "sparse", "shuffle_s", "rows": [(label, seconds per
    round, test RMSE)]}``; Surprise's row has NaN seconds when it is not installed. A third
    row, for comparison, trains with Surprise's own update (per-rating SGD, step 0.005, reg
    0.02) batched as row-sparse SGD."""
    import optax

    from mdcf import data, models, train

    ratings = shape_ratings(shape, scale, data_dir)
    train_part, test = data.split(ratings, "random", 0.1, seed=0)
    test_frame = test.to_dataframe()
    truth = test_frame["rating"].to_numpy()
    frame = train_part.to_dataframe()[["user", "item", "rating"]]
    rating_scale = (float(frame["rating"].min()), float(frame["rating"].max()))
    try:
        import surprise
    except ImportError:
        surprise = None
    if surprise is not None:
        trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=rating_scale)).build_full_trainset()

    def surprise_svd():
        algo = surprise.SVD(n_factors=64, n_epochs=epochs, random_state=0)
        start = time.perf_counter()
        algo.fit(trainset)
        seconds = time.perf_counter() - start
        pred = surprise_predictions(algo, trainset, test_frame["user"], test_frame["item"], rating_scale)
        sample = np.arange(min(len(pred), 200))  # the vectorised predictions are Surprise's own
        own = [algo.predict(u, i).est for u, i in zip(test_frame["user"].iloc[sample], test_frame["item"].iloc[sample])]
        if not np.allclose(own, pred[sample], atol=1e-6):
            raise SystemExit("bench_train: the vectorised Surprise predictions differ from algo.predict")
        return seconds, float(np.sqrt(np.mean((pred - truth) ** 2)))

    model = models.build_model(train_part, "mf", dim=64)

    def mdcf_fit(epochs_=epochs):
        start = time.perf_counter()
        result = train.fit(model, train_part, validation=None, epochs=epochs_, patience=None, progress=False)
        seconds = time.perf_counter() - start
        return seconds, train.evaluate(model, result.params, test)["rmse"]

    # Surprise's own update (per-rating step 0.005, reg 0.02), batched: row-sparse SGD on the
    # batch mean, whose per-rating step is 2 * learning_rate / batch; the shared global bias
    # (Surprise keeps the mean fixed) moves slowly.
    per_rating = dict(opt=train.Optimizer(optax.sgd(1e-4), train.row_sgd(0.005 * 2048 / 2)), l2=0.02)

    def mdcf_sgd(epochs_=epochs):
        start = time.perf_counter()
        result = train.fit(model, train_part, validation=None, epochs=epochs_, patience=None, progress=False,
                           **per_rating)
        seconds = time.perf_counter() - start
        return seconds, train.evaluate(model, result.params, test)["rmse"]

    mdcf_fit(1)  # compiles the epoch (the cached one of the timed fits) and the evaluation
    mdcf_sgd(1)
    sparse = train.auto_sparse(model, 2048)
    shuffle = []
    for epoch in range(3):  # the host's share of an epoch: the seeded shuffle of fit's batches
        start = time.perf_counter()
        train.epoch_order(0, epoch, len(train_part), 2048)
        shuffle.append(time.perf_counter() - start)
    label = "Surprise SVD (defaults)" if surprise else "Surprise SVD: not installed (pip install '.[bench]')"
    methods = [(label, surprise_svd if surprise else lambda: (float("nan"), float("nan"))),
               (f"mdcf fit defaults ({'row-sparse' if sparse else 'dense'} Adam, batch 2048)", mdcf_fit),
               ("mdcf fit, Surprise's update: row-sparse SGD", mdcf_sgd)]
    seconds = {name: [] for name, _ in methods}
    rmse = {}
    for _ in range(rounds):
        for name, method in methods:
            took, rmse[name] = method()
            seconds[name].append(took)
    return {"n_train": len(train_part), "sparse": bool(sparse), "shuffle_s": min(shuffle),
            "rows": [(name, seconds[name], rmse[name]) for name, _ in methods]}


def fit_in_fresh_process(shape: str, rounds: int, scale: float, epochs: int, data_dir) -> dict:
    """:func:`fit_vs_surprise` in a new Python process (its memory, Surprise's included, is freed after)."""
    import json
    import subprocess
    import sys

    command = [sys.executable, os.path.abspath(__file__), "--worker-fit", shape, "--rounds", str(rounds),
               "--scale", repr(scale), "--epochs", str(epochs)] + (["--data-dir", data_dir] if data_dir else [])
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_train: the fit comparison on {shape} failed (exit status {done.returncode}); "
                         "its error is printed above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_fit_table(found: dict, epochs: int) -> None:
    """The fit comparison, one line per shape and method, and target 1's verdict per shape."""
    print(f"\nfit throughput, MF d=64, {epochs} epochs, seeded 90/10 split: the whole fit call after a warm-up, "
          "each method once per round in turn; seconds: median (min-max); x Surprise: median of each round's ratio")
    print(f"{'shape':<8} {'train':>11} | {'method':<46} | {'fit s':>17} {'M ratings/s':>11} {'x Surprise':>17} "
          f"{'test RMSE':>9}")
    verdicts = []
    for shape, result in found.items():
        rows = result["rows"]
        reference = rows[0][1]
        for label, seconds, rmse in rows:
            median = float(np.median(seconds))
            ratio = summarise([base / took for base, took in zip(reference, seconds)])
            print(f"{shape:<8} {result['n_train']:>11,} | {label:<46} | {summarise(seconds):>17} "
                  f"{epochs * result['n_train'] / median / 1e6:>11.2f} {ratio:>17} {rmse:>9.4f}")
        mdcf_seconds, mdcf_rmse = rows[1][1], rows[1][2]
        share = result["shuffle_s"] * epochs / float(np.median(mdcf_seconds))
        print(f"{'':<8} {'':>11} | host shuffle of an epoch: {1e3 * result['shuffle_s']:.0f} ms, "
              f"{100 * share:.0f}% of mdcf's fit time if not overlapped")
        if np.isfinite(reference).all():
            speedup = float(np.median([base / took for base, took in zip(reference, mdcf_seconds)]))
            met = speedup >= 1.5 and mdcf_rmse <= rows[0][2]
            verdicts.append(f"{shape}: {speedup:.2f}x, RMSE {mdcf_rmse:.4f} vs {rows[0][2]:.4f} "
                            f"({'met' if met else 'missed'})")
    if verdicts:
        print("target 1: fit defaults >= 1.5x Surprise SVD's throughput at equal or better test RMSE: "
              + "; ".join(verdicts))


VARIANTS = [  # (label, MD, optimiser, sparse); optimiser None: the bare loop
    ("uniform, SGD", False, "sgd", True),
    ("uniform, row-wise Adagrad", False, "rowwise_adagrad", True),
    ("uniform, lazy Adam", False, "adam", True),
    ("MD 1/8 params, SGD", True, "sgd", True),
    ("MD 1/8 params, lazy Adam", True, "adam", True),
    (BARE, False, None, True),
]
DENSE = ("uniform, dense Adam", False, "adam", False)
# Per-step fixed cost: steps of this many ratings, on this many ratings, beside the full batches.
TINY_BATCH, TINY_STEPS = 16, 2000


def measure(scale: int, n: int, batch_size: int, with_dense: bool, tag: str) -> dict:
    """Every variant's best-epoch throughput (ratings/s) on one synthetic data set, in
    this process, and with ``with_dense`` the dense variant and the seconds of a step of
    :data:`TINY_BATCH` ratings (the cost a step pays whatever its batch) of the row-sparse
    variants; a line per variant on stderr as it finishes."""
    import sys

    from mdcf import data

    ratings, _ = data.synthetic(USERS * scale, ITEMS * scale, n, rank=16, user_zipf=0.8, item_zipf=1.0,
                                noise=0.7, seed=0)
    rates, tiny = {}, {}
    for label, md, opt_name, sparse in VARIANTS + ([DENSE] if with_dense else []):
        if opt_name is None:
            seconds, rate = bare_throughput(ratings, batch_size)
        else:
            seconds, rate = epoch_throughput(ratings, md, opt_name, sparse, batch_size)
        rates[label] = rate
        print(f"{tag:<8} {n:>11,} {USERS * scale:>9,} x {ITEMS * scale:>7,} | {label:<28} | {seconds:>8.2f} "
              f"{rate / 1e6:>11.2f}", file=sys.stderr, flush=True)
        if with_dense and opt_name is not None and sparse:
            few = ratings.subset(np.random.default_rng(1).choice(len(ratings), TINY_BATCH * TINY_STEPS, replace=False))
            seconds, _ = epoch_throughput(ratings, md, opt_name, sparse, TINY_BATCH, epochs=3, train_on=few)
            tiny[label] = seconds / TINY_STEPS
    return {"rates": rates, "tiny_step_s": tiny}


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


def print_epoch_table(rates: dict, tiny: dict, sizes, batch_size: int, platforms) -> None:
    """The epoch throughput table and the verdicts of targets 2-4 (MD against uniform,
    lazy Adam against SGD, the per-step fixed cost)."""
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
    n = sizes[-1]
    if 20_000_000 in sizes:
        rate = float(np.median(rates[n, 1, "uniform, SGD"]))
        print(f"target: >= 5M ratings/s for uniform MF d=64 at 20M ratings: {rate:.2f} "
              f"({'met' if rate >= 5 else 'missed'})")

    def ratio(top: str, bottom: str) -> float:  # median over rounds of top/bottom, 1x tables
        return float(np.median([a / b for a, b in zip(rates[n, 1, top], rates[n, 1, bottom])]))

    pairs = [(ratio(f"MD 1/8 params, {opt}", f"uniform, {opt}"), opt) for opt in ("SGD", "lazy Adam")]
    print(f"target 2: MD at 1/8 of the parameters >= uniform's ratings/s at {n:,} ratings, 1x tables: "
          + "; ".join(f"{opt} {value:.2f}x ({'met' if value >= 1 else 'missed'})" for value, opt in pairs))
    slower = ratio("uniform, SGD", "uniform, lazy Adam")
    print(f"target 3: row-sparse lazy Adam's step within 1.5x of SGD's: {slower:.2f}x "
          f"({'met' if slower <= 1.5 else 'missed'})")
    if tiny:
        parts = []
        for label, seconds in tiny.items():
            full_step = batch_size / (float(np.median(rates[sizes[0], 1, label])) * 1e6)
            parts.append(f"{label} {1e6 * seconds:.0f} us ({100 * seconds / full_step:.0f}%)")
        print(f"target 4: a step of {TINY_BATCH} ratings (the fixed cost of a step), and its share of a step of "
              f"{batch_size:,} at {sizes[0]:,} ratings: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="epochs at 1M ratings only, one round; fit on ml-100k and ml-1m only")
    parser.add_argument("--sections", nargs="+", choices=("epochs", "fit"), default=["epochs", "fit"],
                        help="what to measure (default both)")
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=None,
                        help="the fit comparison's data (default all three; ml-100k and ml-1m with --quick)")
    parser.add_argument("--batch-size", type=int, default=4096, help="ratings per step of the epochs (default 4096)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="fresh-process rounds at 1M ratings, and fit rounds on ml-100k and ml-1m "
                             "(default 3, 1 with --quick)")
    parser.add_argument("--rounds-20m", type=int, default=1,
                        help="fresh-process rounds at 20M ratings and fit rounds on ml-20m (default 1: each takes "
                             "minutes)")
    parser.add_argument("--epochs", type=int, default=FIT_EPOCHS, help=f"fit epochs (default {FIT_EPOCHS})")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="scale the synthetic fit shapes' users, items and ratings (a quick check of the script)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-fit", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if args.batch_size < 1 or args.epochs < 1 or not args.scale > 0:
        parser.error(f"--batch-size and --epochs must be at least 1 and --scale above 0, got {args.batch_size}, "
                     f"{args.epochs} and {args.scale}")
    if rounds < 1 or args.rounds_20m < 1:
        parser.error(f"--rounds and --rounds-20m must be at least 1, got {rounds} and {args.rounds_20m}")
    if args.worker or args.worker_fit:
        import json

        import jax

        if args.worker:  # scale,n,with_dense,tag: one measurement as JSON on stdout
            scale, n, with_dense, tag = args.worker.split(",", 3)
            found = measure(int(scale), int(n), args.batch_size, bool(int(with_dense)), tag)
        else:
            found = fit_vs_surprise(args.worker_fit, rounds, args.scale, args.epochs, args.data_dir)
        print(json.dumps({"platform": jax.devices()[0].platform, **found}))
        return

    from importlib.metadata import version

    # This process only starts the measuring ones (without JAX of its own).
    print(f"bench_train: MF d=64, {os.cpu_count()} CPUs, jax {version('jax')}", flush=True)
    if "epochs" in args.sections:
        sizes = [1_000_000] if args.quick else [1_000_000, 20_000_000]
        print(f"epochs: batch {args.batch_size}, the best epoch of each fresh process", flush=True)
        print(f"{'round':<8} {'ratings':>11} {'users x items':>19} | {'embedding, optimiser':<28} | "
              f"{'epoch s':>8} {'M ratings/s':>11}", flush=True)
        rates: dict[tuple, list[float]] = {}  # (n, scale, label) -> M ratings/s per round
        tiny: dict[str, list[float]] = {}
        platforms = set()
        for n in sizes:
            for round_ in range(args.rounds_20m if n == 20_000_000 else rounds):
                for scale in (1, 10):  # 1x then 10x in turn: each round's ratio compares neighbours in time
                    first = n == sizes[0] and scale == 1
                    found = in_fresh_process(scale, n, args.batch_size, first, f"{round_ + 1}")
                    platforms.add(found["platform"])
                    for label, rate in found["rates"].items():
                        rates.setdefault((n, scale, label), []).append(rate / 1e6)
                    for label, seconds in found["tiny_step_s"].items():
                        tiny.setdefault(label, []).append(seconds)
        print_epoch_table(rates, {k: float(np.median(v)) for k, v in tiny.items()}, sizes, args.batch_size, platforms)
    if "fit" in args.sections:
        shapes = args.shapes or (["ml-100k", "ml-1m"] if args.quick else list(SHAPES))
        found = {shape: fit_in_fresh_process(shape, args.rounds_20m if shape == "ml-20m" else rounds, args.scale,
                                             args.epochs, args.data_dir) for shape in shapes}
        print_fit_table(found, args.epochs)


if __name__ == "__main__":
    main()
