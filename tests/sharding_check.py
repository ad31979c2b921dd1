"""Run by test_sharding.py in a subprocess with 4 simulated CPU devices.

Trains MF and NeuMF (MD embeddings, row-sparse updates) for a few epochs on one
device and on meshes (MF: data-only, rows-only and combined sharding; NeuMF:
combined), and a custom pipeline's sharded step for both, and prints
one JSON line with the largest relative difference of each run's parameters.
With ``dlrm``: DLRM on synthetic clicks (MD, one block per field), the same
``fit`` on one device and on the combined mesh.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mdcf import data, models, sharding, train  # noqa: E402


def max_relative_difference(a, b):
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("inf")
        scale = max(np.abs(y).max(), 1e-12)
        worst = max(worst, float(np.abs(x - y).max() / scale))
    return worst


def dlrm_report() -> dict:
    clicks, _ = data.synthetic_ctr(6_000, cardinalities=(301, 57, 13, 7), seed=0)  # odd sizes: rows need padding
    parts = data.split_ctr(clicks, "random", seed=0)
    config = models.dlrm.dlrm_config(parts.field_rows, dim=8, alpha=0.3, bottom=(8,), top=(8,), n_dense=clicks.n_dense)
    kwargs = dict(epochs=2, batch_size=256, progress=False, seed=1, sparse=True, learning_rate=1e-2)
    single = train.fit(config, parts.train, parts.validation, **kwargs)
    seen = {}

    def record_layout(epoch, logs, state):
        table = state.params["tables"]["fields"][0]
        seen.update(rows=table.shape[0], devices=len({s.device for s in table.addressable_shards}),
                    shard_rows=sorted({s.data.shape[0] for s in table.addressable_shards}))

    sharded = train.fit(config, parts.train, parts.validation, mesh=sharding.make_mesh(2, 2),
                        callbacks=[record_layout], **kwargs)
    return {"dlrm/both": {
        "params": max_relative_difference(sharded.params, single.params),
        "state": max_relative_difference(sharded.state, single.state),
        "val_logloss": abs(sharded.history[-1]["val_logloss"] - single.history[-1]["val_logloss"]),
        "layout": seen}}


def main():
    assert len(jax.devices()) == 4, jax.devices()
    if sys.argv[1:] == ["dlrm"]:
        print(json.dumps(dlrm_report()))
        return
    ratings, _ = data.synthetic(301, 203, 6_000, rank=4, noise=0.3, seed=0)  # odd sizes: rows need padding
    report = {}
    for kind in sys.argv[1:] or ["mf", "neumf"]:
        model = models.build_model(ratings, kind, dim=8, alpha=0.5, blocks=3, layers=(8, 4))
        kwargs = dict(epochs=3, batch_size=256, progress=False, patience=None, validation=0.1, seed=1,
                      optimizer_name="adam", learning_rate=3e-3, sparse=True, refit=False)
        single = train.fit(model, ratings, **kwargs)
        layouts = {"data": (4, 1), "rows": (1, 4), "both": (2, 2)}
        if kind != "mf":  # NeuMF's MLP adds only replicated parameters: the combined mesh covers it
            layouts = {"both": layouts["both"]}
        for label, (d, m) in layouts.items():
            seen = {}

            def record_layout(epoch, logs, state):
                table = state.params["tables"][model.config.embeddings[0][0]][-1]
                seen["shard_rows"] = sorted({s.data.shape[0] for s in table.addressable_shards})
                seen["rows"] = table.shape[0]
                seen["devices"] = len({s.device for s in table.addressable_shards})

            sharded = train.fit(model, ratings, mesh=sharding.make_mesh(d, m), callbacks=[record_layout], **kwargs)
            report[f"{kind}/{label}"] = {
                "layout": seen,
                "params": max_relative_difference(sharded.params, single.params),
                "state": max_relative_difference(sharded.state, single.state),
                "val_mse": abs(sharded.history[-1]["val_mse"] - single.history[-1]["val_mse"]),
            }
        # A custom pipeline: make_train_step(mesh=...) on a state placed with shard_state.
        opt = train.optimizer("adam", 3e-3, sparse=True)
        batches = [jax.tree.map(lambda x: x[j * 512:(j + 1) * 512], model.encode(ratings)) for j in range(4)]
        plain = train.init_state(jax.random.key(0), model, opt)
        step = jax.jit(train.make_train_step(model, opt, l2=0.05))
        for batch in batches:
            plain, _ = step(plain, batch)
        mesh = sharding.make_mesh(2, 2)
        placed = sharding.shard_state(train.init_state(jax.random.key(0), model, opt), mesh)
        sharded_step = jax.jit(train.make_train_step(model, opt, l2=0.05, mesh=mesh))
        for batch in batches:
            placed, _ = sharded_step(placed, batch)
        layout = placed.params["tables"][model.config.embeddings[0][0]][-1]
        report[f"{kind}/step"] = {
            "params": max_relative_difference(sharding.trim_state(placed, model.config).params, plain.params),
            "state": max_relative_difference(sharding.trim_state(placed, model.config), plain),
            "val_mse": 0.0,
            "layout": {"shard_rows": sorted({s.data.shape[0] for s in layout.addressable_shards}),
                       "rows": layout.shape[0], "devices": len({s.device for s in layout.addressable_shards})},
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
