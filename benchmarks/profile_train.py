"""Where a train step's time goes: XLA's operations of one epoch, by kind, per step.

Runs one epoch of MF d=64 under ``jax.profiler.trace`` for each configuration and
reads the trace's executed operations back, grouped by kind:

* ``gather`` and ``scatter``: row reads and writes (tables, optimiser state, the batch);
* ``matmul``: the dot products XLA hands to its matrix kernels (an MD layer's
  projections and their gradients);
* ``sort``: sorts (a row-sparse step's combining of repeated rows);
* ``elementwise``: the other fused loops (losses, optimiser arithmetic, selects).

Each row gives the microseconds per step of each kind under the profiler, the number of
operations per step, and the step's wall time without the profiler (the profiler adds
its own cost to every operation, so the kinds' shares are what to read, not their sum).

Configurations (``--configs``, all by default): on the MovieLens-20M-shaped synthetic
set (138,493 x 26,744, 1M ratings, batch 4,096) row-sparse ``uniform-sgd``,
``uniform-adam`` (lazy Adam), ``md-sgd`` and ``md-adam`` (MD alpha 0.3, 8 blocks, 1/8
of uniform's parameters); on the ml-1m-shaped one (6,040 x 3,706, 900k ratings, batch
2,048) ``dense-adam``, the step ``fit``'s defaults take there.

Usage::

    python benchmarks/profile_train.py                    # about 2 minutes
    python benchmarks/profile_train.py --configs md-sgd uniform-sgd
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile
import time

CONFIGS = {  # name -> (users, items, ratings, batch, MD, optimiser, sparse)
    "uniform-sgd": (138_493, 26_744, 1_000_000, 4096, False, "sgd", True),
    "uniform-adam": (138_493, 26_744, 1_000_000, 4096, False, "adam", True),
    "md-sgd": (138_493, 26_744, 1_000_000, 4096, True, "sgd", True),
    "md-adam": (138_493, 26_744, 1_000_000, 4096, True, "adam", True),
    "dense-adam": (6_040, 3_706, 900_000, 2048, False, "adam", False),
}
KINDS = ("gather", "scatter", "matmul", "sort", "elementwise")
# Trace events that are not one of XLA's operations (the executor, Python, waits).
NOT_OPS = ("ThunkExecutor", "$", "PjitFunction", "SlinkyThreadPool", "CommonPjRt", "ParseArguments", "end: ")


def kind_of(name: str) -> str:
    """The kind of an executed operation, from its name in the trace."""
    lowered = name.lower()
    for kind, marks in (("sort", ("sort",)), ("scatter", ("scatter",)), ("gather", ("gather",)),
                        ("matmul", ("ynn", "dot", "gemm", "matmul"))):
        if any(mark in lowered for mark in marks):
            return kind
    return "elementwise"


def profile(name: str) -> dict:
    """One configuration's operations by kind (microseconds per step under the profiler,
    operations per step) and its wall time per step without the profiler."""
    import jax
    import jax.numpy as jnp

    from mdcf import data, models, train

    users, items, n, batch, md, opt_name, sparse = CONFIGS[name]
    ratings, _ = data.synthetic(users, items, n, rank=16, user_zipf=0.8, item_zipf=1.0, noise=0.7, seed=0)
    sizing = dict(alpha=0.3, blocks=8, budget=(users + items) * 64 // 8) if md else {}
    model = models.build_model(ratings, "mf", dim=64, **sizing)
    opt = train.optimizer(opt_name, 1e-3, sparse=sparse)
    epoch = train.make_epoch_fn(lambda l2: train.make_train_step(model, opt, l2=l2), n, batch)
    l2 = jnp.asarray(0.05, jnp.float32)
    packed = train.pack(train.by_user(model.encode(ratings)))
    state = train.init_state(jax.random.key(0), model, opt)
    steps = -(-n // batch)
    walls = []
    for number in range(3):  # the first compiles
        order = train.epoch_order(0, number, n, batch)
        start = time.perf_counter()
        state, losses = epoch(state, packed, order, l2)[:2]
        losses.block_until_ready()
        walls.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            state, losses = epoch(state, packed, train.epoch_order(0, 3, n, batch), l2)[:2]
            losses.block_until_ready()
        found = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)
        if not found:
            raise SystemExit(f"profile_train: the profiler wrote no trace for {name}")
        with gzip.open(found[0]) as handle:
            events = json.load(handle)["traceEvents"]
    micros, counts = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") != "X" or event["name"].startswith(NOT_OPS):
            continue
        kind = kind_of(event["name"])
        micros[kind] += event["dur"]
        counts[kind] += 1
    return {"us": {k: micros[k] / steps for k in KINDS}, "ops": {k: counts[k] / steps for k in KINDS},
            "wall_us": 1e6 * min(walls[1:]) / steps, "batch": batch, "n": n, "users": users, "items": items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    from importlib.metadata import version

    print(f"profile_train: MF d=64, one epoch under jax.profiler per configuration, {os.cpu_count()} CPUs, "
          f"jax {version('jax')}")
    print("per step: microseconds of each kind of operation under the profiler (share of their sum), "
          "operations per step, and the wall time of a step without the profiler")
    header = " ".join(f"{kind:>18}" for kind in KINDS)
    print(f"{'config':<13} {'data':>24} | {header} | {'ops':>5} {'wall us':>8}")
    for name in args.configs:
        found = profile(name)
        total = sum(found["us"].values())
        cells = " ".join(f"{found['us'][k]:>9.0f} ({100 * found['us'][k] / total:>3.0f}%)" + " " * 2
                         for k in KINDS)
        data_label = f"{found['users']:,}x{found['items']:,} b{found['batch']}"
        print(f"{name:<13} {data_label:>24} | {cells} | {sum(found['ops'].values()):>5.0f} "
              f"{found['wall_us']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
